"""Whisper decoding over the variants' own caches, without timestamps: `transcribe` (what training and the
zero-shot table score) and `sample` (one pass, greedy or at a temperature).

transcribe decodes a batch together with greedy decoding, or beam search where `beam_size` is set, then applies
Whisper's temperature fallback (fallback.py): the utterances whose text loops or is improbable are decoded again
by sampling at the next temperature, seeded, their cross caches reused (`restart`). All of it runs through the one
loop (loop.py) over a cache object: the one the caller passes, else as `fast` says (fast_path.py): on a GPU by
default a preallocated one (static_decode.py) whose step replays a CUDA graph, kept between batches; growing caches
on a CPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asr_attention.backbones.whisper.adapter import Whisper

from .beam import BeamSearchDecoder
from .caches import NoCache
from .fallback import TemperatureFallback, compression_ratio
from .fast_path import fast_setting, loop_cache
from .greedy import GreedyDecoder
from .loop import decode
from .token_decoder import Candidate
from .token_limit import token_limit


@dataclass
class DecodingOptions:
    max_tokens: int | None = None  # text tokens per utterance; None: the model's limit (token_limit.py)
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    beam_size: int | None = None  # None: greedy at temperature 0; else beam search with these beams
    patience: float | None = None  # beam search: stop at round(beam_size x patience) finished (None: 1)
    seed: int = 0
    fast: str | bool = "auto"  # auto: preallocated caches + CUDA graph on a GPU; true: preallocated; false: growing
    compile: bool = False  # the fast path's step through torch.compile (tens of seconds per batch shape)

    def __post_init__(self):
        self.fast = fast_setting(self.fast)
        if self.beam_size is not None and (self.beam_size < 1 or round(self.beam_size * (self.patience or 1)) < 1):
            raise ValueError(f"model.decoding.beam_size={self.beam_size}, patience={self.patience}: need beam_size "
                             ">= 1 (or null: greedy) and round(beam_size x patience) >= 1")

    @property
    def fallback(self) -> TemperatureFallback:
        return TemperatureFallback(self.temperatures, self.compression_ratio_threshold, self.logprob_threshold)


@dataclass
class Hypothesis:
    tokens: list[int]
    avg_logprob: float
    compression_ratio: float
    temperature: float
    truncated: bool = False  # the token limit came before <|endoftext|>: the text was cut


def hypothesis(backbone: Whisper, candidate: Candidate, temperature: float) -> Hypothesis:
    t = backbone.tokens
    text = t.decode(candidate.tokens) if t.tokenizer is not None else " ".join(map(str, candidate.tokens))
    return Hypothesis(candidate.tokens, candidate.avg_logprob, compression_ratio(text), temperature,
                      truncated=not candidate.finished)


@torch.no_grad()
def sample(backbone: Whisper, memory: Tensor | None, cache, max_tokens: int, temperature: float = 0.0,
           generator: torch.Generator | None = None) -> list[Hypothesis]:
    """Decode every row of `memory` (B, frames, d) from the prompt, greedy or sampling at `temperature`. cache: the
    loop's cache object (`GrowingCache(backbone)`, a `PreallocatedCache`, or a restarted one, memory then None),
    or None: no cache, the whole prefix read each step (the reference the caches are tested against)."""
    loop_cache = NoCache(backbone) if cache is None else cache
    decoder = GreedyDecoder(backbone.tokens.eot, temperature, generator)
    return [hypothesis(backbone, c, temperature)
            for c in decode(loop_cache, memory, decoder, backbone.tokens, max_tokens)]


@torch.no_grad()
def transcribe(backbone: Whisper, memory: Tensor, options: DecodingOptions = DecodingOptions(),
               cache=None) -> list[Hypothesis]:
    """Greedy (or beam search) first; the utterances the fallback policy rejects again at each higher temperature.
    cache: the loop's cache object (with beam_size, its beams must be beam_size); None: as options.fast says
    (fast_path.loop_cache: on a GPU a pooled preallocated cache replaying a CUDA graph, else a growing one)."""
    max_tokens = token_limit(backbone, options.max_tokens)
    t = backbone.tokens
    if options.beam_size is None:
        first = GreedyDecoder(t.eot)
    else:
        first = BeamSearchDecoder(options.beam_size, t.eot, options.patience or 1.0)
    if cache is None:
        cache = loop_cache(backbone, memory, first.rows_per_utterance, max_tokens, options.fast, options.compile)
    if cache.beams != first.rows_per_utterance:
        raise ValueError(f"the cache holds {cache.beams} rows per utterance, the decoder feeds "
                         f"{first.rows_per_utterance} (model.decoding.beam_size={options.beam_size})")
    best = [hypothesis(backbone, c, 0.0) for c in decode(cache, memory, first, t, max_tokens)]
    policy = options.fallback
    generator = torch.Generator(device=memory.device).manual_seed(options.seed)
    for temperature in policy.retries:
        retry = [i for i, h in enumerate(best) if policy.needs_fallback(h.compression_ratio, h.avg_logprob)]
        if not retry:
            break
        again = cache.restart(torch.tensor(retry, device=memory.device))  # cross caches reused, self emptied
        sampler = GreedyDecoder(t.eot, temperature, generator)
        for i, c in zip(retry, decode(again, None, sampler, t, max_tokens)):
            best[i] = hypothesis(backbone, c, temperature)
    return best
