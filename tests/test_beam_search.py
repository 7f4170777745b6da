"""Beam search against a scripted decoder whose next-token probabilities are a table over the text so far, so the
hypotheses that finish, their lengths and scores are known: a finished hypothesis leaves the beam for its own list
(a running one takes its place), the winner is the best log-probability per token, not the best sum, and patience
waits for more finished hypotheses."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from asr_attention.attention.base import Cache
from asr_attention.backbones.whisper.adapter import DecoderCache, LayerCache
from asr_attention.backbones.whisper.tokens import WhisperTokens
from asr_attention.generation.beam import beam_search

EOT, SOT, NO_TIMESTAMPS = 5, 6, 7  # text tokens 0..4
VOCAB = 8


class ScriptedWhisper:
    """What beam search asks of a Whisper backbone. Its only "cache" is each row's token history, kept as a
    decoder self cache, so beam search reorders it as it reorders any self cache when beams move."""

    def __init__(self, script: dict[tuple[int, ...], dict[int, float]]):
        self.script = script
        self.tokens = WhisperTokens(eot=EOT, sot=SOT, no_timestamps=NO_TIMESTAMPS)
        self.decoder = SimpleNamespace(layers=[])  # no cross-attention sites to share

    def new_cache(self, beams: int = 1) -> DecoderCache:
        return DecoderCache([LayerCache()], beams=beams)

    def decode(self, tokens, memory, cache):
        layer = cache.layers[0]
        history = tokens if layer.self_attn is None else torch.cat((layer.self_attn["history"], tokens), 1)
        layer.self_attn = Cache({"history": history})
        cache.tokens += tokens.shape[1]
        prompt = len(self.tokens.prompt)
        return torch.stack([self.logprobs(tuple(row[prompt:])) for row in history.tolist()])[:, None]

    def logprobs(self, text: tuple[int, ...]) -> torch.Tensor:
        """The script's probabilities after `text`; what they leave, spread evenly over the other text tokens and
        <|endoftext|> (no script: all of them evenly)."""
        given = self.script.get(text, {})
        rest = [i for i in range(EOT + 1) if i not in given]
        p = torch.zeros(VOCAB, dtype=torch.float64)
        for i, q in given.items():
            p[i] = q
        p[rest] = (1 - sum(given.values())) / len(rest)
        return p.log().float()


def run(script, beams=2, max_tokens=6, **options):
    """One utterance (the scripted decoder reads no memory)."""
    return beam_search(ScriptedWhisper(script), torch.zeros(1, 3, 4), beams, max_tokens, **options)


def logp(*probabilities: float) -> float:
    return sum(math.log(p) for p in probabilities)


# After "1": <|endoftext|> (A = [1]) ranks first, then "1 2", then "1 3". "1 2" goes nowhere; "1 3" ends next
# (B = [1, 3]): a lower sum than A's (-1.31 < -0.94), a higher one per token (-0.44 > -0.47).
FINISH_EARLY_OR_LATE = {(): {1: 0.98, 4: 0.015}, (1,): {EOT: 0.4, 2: 0.3, 3: 0.29}, (1, 3): {EOT: 0.95},
                        (1, 2): {EOT: 0.02}}
A, B = logp(0.98, 0.4), logp(0.98, 0.29, 0.95)


def test_the_scripted_hypotheses_rank_one_way_by_sum_and_the_other_per_token():
    assert A > B and A / 2 < B / 3


def test_a_finished_hypothesis_leaves_the_beam_and_the_best_per_token_wins():
    """Beam 2: A finishes at step 2, so "1 2" and "1 3" both keep running (kept in the beam, A would push "1 3"
    out); B finishes at step 3 and wins per token. Losing A (not keeping finished hypotheses) ends the search at
    the token limit on unfinished ones; choosing by the sum picks A."""
    result = run(FINISH_EARLY_OR_LATE)
    assert result.tokens == [[1, 3]]
    assert result.scores.tolist() == pytest.approx([B], abs=1e-5)


def test_patience_waits_for_more_finished_hypotheses():
    """As above, but "1 2" goes on to "1 2 0" and ends (C = [1, 2, 0], the best per token of all): at patience 1
    the search stops with A and B finished; at patience 2 it waits for C."""
    script = {**FINISH_EARLY_OR_LATE, (1, 2): {0: 0.9, EOT: 0.02}, (1, 2, 0): {EOT: 0.999}}
    c = logp(0.98, 0.3, 0.9, 0.999)
    assert c / 4 > B / 3 > A / 2
    assert run(script).tokens == [[1, 3]]
    patient = run(script, patience=2.0)
    assert patient.tokens == [[1, 2, 0]] and patient.scores.tolist() == pytest.approx([c], abs=1e-5)


def test_at_the_token_limit_unfinished_hypotheses_compete_per_token():
    """Nothing finishes within 2 tokens: the best running hypothesis ("1 3", by sum and per token) is chosen."""
    result = run({(): {1: 0.9}, (1,): {3: 0.9, EOT: 0.001}}, max_tokens=2)
    assert result.tokens == [[1, 3]] and result.scores.tolist() == pytest.approx([logp(0.9, 0.9)], abs=1e-5)


def test_an_unfinished_hypothesis_is_ranked_by_the_tokens_it_scored():
    """At the 2-token limit A = [1] has finished (2 tokens scored, <|endoftext|> among them, -1.0) and B = [2, 3]
    has not (2 tokens, -1.2): A wins per token (-0.5 against -0.6); counting an <|endoftext|> B never emitted
    (-1.2 / 3) would pick B."""
    script = {(): {1: 0.5, 2: 0.4}, (1,): {EOT: math.exp(-1.0) / 0.5}, (2,): {3: math.exp(-1.2) / 0.4}}
    result = run(script, max_tokens=2)
    assert result.tokens == [[1]] and result.scores.tolist() == pytest.approx([-1.0], abs=1e-5)


def test_a_bad_beam_size_or_patience_is_refused():
    with pytest.raises(ValueError, match="patience"):
        run(FINISH_EARLY_OR_LATE, patience=0.1)
