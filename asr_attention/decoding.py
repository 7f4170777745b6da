"""Whisper decoding over the variants' own caches: greedy without timestamps, with Whisper's fallback.

Each step feeds one token per utterance: decoder self-attention caches grow by one, the cross-attention caches
are built from the encoder output on the first step and reused. A batch decodes together (finished rows keep
receiving <|endoftext|>). Where greedy text loops (gzip compression ratio > 2.4) or is improbable (mean
log-probability < -1), those utterances are decoded again by sampling at the next temperature (0.2, 0.4, ...),
seeded, as Whisper's own `transcribe` does; the last attempt is kept if none passes. The explicit `DecoderCache`
(per layer, per batch row; `select` picks rows) is what batched beam search or a CUDA-graph step would reuse.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from .backbones.whisper import DecoderCache, Whisper


@dataclass
class DecodingOptions:
    max_tokens: int = 48  # text tokens per utterance (AN4's longest transcript is 16)
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    seed: int = 0


@dataclass
class Hypothesis:
    tokens: list[int]
    avg_logprob: float
    compression_ratio: float
    temperature: float


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(len(zlib.compress(data)), 1)


def suppress_mask(backbone: Whisper, vocab: int, device) -> tuple[Tensor, Tensor]:
    """Tokens never emitted (the checkpoint's list, and every special token but <|endoftext|>: text only, no
    timestamps), and those also barred as the first token."""
    t = backbone.tokens
    never = torch.zeros(vocab, dtype=torch.bool, device=device)
    never[[i for i in t.suppress if i < vocab]] = True
    never[t.eot + 1:] = True
    first = never.clone()
    first[[i for i in t.suppress_begin if i < vocab]] = True
    return never, first


@torch.no_grad()
def sample(backbone: Whisper, memory: Tensor | None, cache: DecoderCache | None, max_tokens: int,
           temperature: float = 0.0, generator: torch.Generator | None = None) -> list[Hypothesis]:
    """Decode every row of `memory` (B, frames, d) from the prompt. cache: an empty `backbone.new_cache()` (or one
    whose cross caches are already built, memory then None); None decodes without a cache, re-reading the whole
    prefix each step (the reference the cached path is tested against)."""
    t = backbone.tokens
    rows = memory.shape[0] if memory is not None else cache.batch_size
    device = backbone.model.device
    seq = torch.tensor(t.prompt, device=device).repeat(rows, 1)
    logits = backbone.decode(seq, memory, cache)[:, -1]
    never, first = suppress_mask(backbone, logits.shape[-1], device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    sum_logprob = torch.zeros(rows, device=device)
    for step in range(max_tokens):
        logits = logits.float().masked_fill(first if step == 0 else never, float("-inf"))
        if temperature > 0:
            probs = (logits / temperature).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = nxt.masked_fill(done, t.eot)
        logprob = logits.log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
        sum_logprob += logprob.masked_fill(done, 0.0)
        seq = torch.cat((seq, nxt[:, None]), dim=1)
        done |= nxt == t.eot
        if bool(done.all()) or step + 1 == max_tokens:  # the last token is emitted, never fed
            break
        logits = backbone.decode(seq[:, -1:] if cache is not None else seq, memory, cache)[:, -1]
    out = []
    for row, lp in zip(seq[:, len(t.prompt):].tolist(), sum_logprob.tolist()):
        text_ids = row[: row.index(t.eot)] if t.eot in row else row
        text = t.decode(text_ids) if t.tokenizer is not None else " ".join(map(str, text_ids))
        out.append(Hypothesis(text_ids, lp / (len(text_ids) + 1), compression_ratio(text), temperature))
    return out


def needs_fallback(h: Hypothesis, options: DecodingOptions) -> bool:
    return h.compression_ratio > options.compression_ratio_threshold or h.avg_logprob < options.logprob_threshold


@torch.no_grad()
def transcribe(backbone: Whisper, memory: Tensor, options: DecodingOptions = DecodingOptions()) -> list[Hypothesis]:
    """Greedy first; rows that fail the loop / probability checks again at each higher temperature."""
    cache = backbone.new_cache()
    best = sample(backbone, memory, cache, options.max_tokens)
    generator = torch.Generator(device=memory.device).manual_seed(options.seed)
    for temperature in options.temperatures[1:]:
        retry = [i for i, h in enumerate(best) if needs_fallback(h, options)]
        if not retry:
            break
        again = cache.restart(torch.tensor(retry, device=memory.device))  # cross caches reused, self emptied
        for i, h in zip(retry, sample(backbone, None, again, options.max_tokens, temperature, generator)):
            best[i] = h
    return best
