"""The decoding loop's end-of-decode check (generation/stop_check.py): read late, it changes no hypothesis; it is
used only where that holds (greedy at temperature 0, on CUDA), and costs at most as many extra steps as it lags."""

from types import SimpleNamespace

import pytest
import torch

from asr_attention.generation import loop
from asr_attention.generation.beam import BeamSearchDecoder
from asr_attention.generation.greedy import GreedyDecoder
from asr_attention.generation.stop_check import BlockingStop, LaggedStop, stop_check

EOT, VOCAB = 0, 16
TOKENS = SimpleNamespace(prompt=[3, 4], eot=EOT)


class ScriptedCache:
    """Next-token logits from a seeded generator, with row r's <|endoftext|> the most likely from its step ends[r]
    on; counts the calls (the prompt is one)."""

    def __init__(self, ends: list[int]):
        self.ends, self.beams, self.fed = ends, 1, 0
        self.generator = torch.Generator().manual_seed(0)
        self.rows, self.device = len(ends), torch.device("cpu")

    def logits(self, tokens, memory=None):
        step = self.fed
        self.fed += 1
        out = torch.randn(self.rows, VOCAB, generator=self.generator)
        out[:, EOT] = -10.0
        for r, end in enumerate(self.ends):
            if step >= end:
                out[r, EOT] = 10.0
        return out


class DelayedStop(LaggedStop):
    """LaggedStop with each flag landing `lag` steps after it was sent (a CPU stand-in for the CUDA event)."""

    def __init__(self, decoder, steps, lag):
        self.lag, self.now = lag, 0
        super().__init__(decoder, steps)

    def buffer(self, steps):
        return torch.zeros(steps, dtype=torch.bool)

    def send(self, flag, step):
        self.now = step
        self.host[step] = flag
        return step

    def landed(self, sent):
        return self.now - sent >= self.lag


def decode_with(check, ends, max_tokens=12):
    cache = ScriptedCache(ends)
    original = loop.stop_check
    loop.stop_check = check
    try:
        out = loop.decode(cache, torch.zeros(len(ends), 1, 1), GreedyDecoder(EOT), TOKENS, max_tokens, filters=[])
    finally:
        loop.stop_check = original
    return out, cache.fed


@pytest.mark.parametrize("lag", [0, 1, 3])
def test_a_late_read_changes_no_hypothesis_and_costs_at_most_lag_steps(lag):
    ends = [2, 5, 4]
    blocking, fed = decode_with(lambda d, device, steps: BlockingStop(d), ends)
    lagged, fed_lagged = decode_with(lambda d, device, steps: DelayedStop(d, steps, lag), ends)
    assert [c.tokens for c in lagged] == [c.tokens for c in blocking]
    assert [c.sum_logprob for c in lagged] == pytest.approx([c.sum_logprob for c in blocking])
    assert [c.finished for c in lagged] == [True, True, True]
    assert [len(c.tokens) for c in blocking] == ends  # the script ends each row where it says
    assert fed_lagged - fed == lag


def test_the_token_limit_still_ends_a_decode_that_never_ends():
    lagged, fed = decode_with(lambda d, device, steps: DelayedStop(d, steps, 3), [99, 99], max_tokens=6)
    assert [len(c.tokens) for c in lagged] == [6, 6] and not any(c.finished for c in lagged)
    assert fed == 1 + 6 - 1  # the prompt in one call, then one per token but the last (emitted, never fed)


def test_only_greedy_at_temperature_0_on_cuda_reads_late():
    greedy, sampler = GreedyDecoder(EOT), GreedyDecoder(EOT, temperature=0.5)
    for d in (greedy, sampler):
        d.reset(2, 2, "cpu")
    assert greedy.done_flag() is not None and sampler.done_flag() is None
    assert BeamSearchDecoder(2, EOT).done_flag() is None  # its ends are host-side lists
    assert isinstance(stop_check(greedy, torch.device("cpu"), 8), BlockingStop)
    assert isinstance(stop_check(sampler, torch.device("cuda"), 8), BlockingStop)  # no flag: never touches CUDA
