"""Whisper decoding over the variants' own caches: greedy without timestamps, with Whisper's fallback.

Each step feeds one token per utterance: decoder self-attention caches grow by one, the cross-attention caches
are built from the encoder output on the first step and reused. A batch decodes together (finished rows keep
receiving <|endoftext|>). Where greedy text loops (gzip compression ratio > 2.4) or is improbable (mean
log-probability < -1), those utterances are decoded again by sampling at the next temperature (0.2, 0.4, ...),
seeded, as Whisper's own `transcribe` does; the last attempt is kept if none passes. The explicit `DecoderCache`
(per layer, per batch row; `select` picks rows) is what batched beam search or a CUDA-graph step would reuse.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .backbones.whisper import DecoderCache, Whisper

log = logging.getLogger(__name__)


@dataclass
class DecodingOptions:
    max_tokens: int | None = None  # text tokens per utterance; None: the model's limit (`model_token_limit`)
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
    truncated: bool = False  # the token limit came before <|endoftext|>: the text was cut


def model_token_limit(backbone: Whisper) -> int:
    """The most text tokens the decoder can take: its target positions (448 in every Whisper) less the prompt."""
    return backbone.model.config.max_target_positions - len(backbone.tokens.prompt)


def token_limit(backbone: Whisper, max_tokens: int | None) -> int:
    """model.decoding.max_tokens, checked against the model's limit; None: that limit."""
    limit = model_token_limit(backbone)
    if max_tokens is None:
        return limit
    if not 1 <= max_tokens <= limit:
        raise ValueError(f"model.decoding.max_tokens={max_tokens}: must be 1..{limit} (this model's "
                         f"{backbone.model.config.max_target_positions} target positions less the prompt), or null "
                         "for that limit")
    return max_tokens


def with_token_limit(backbone: Whisper, options: DecodingOptions) -> DecodingOptions:
    """The options with max_tokens resolved (`token_limit`); a limit below the model's is a warning, as it cuts
    longer transcripts (each cut utterance is then recorded: `Hypothesis.truncated`)."""
    max_tokens = token_limit(backbone, options.max_tokens)
    if max_tokens < model_token_limit(backbone):
        log.warning("model.decoding.max_tokens=%d is below this model's limit (%d): longer transcripts are cut "
                    "(results.json lists each cut utterance); null uses the model's limit", max_tokens,
                    model_token_limit(backbone))
    return replace(options, max_tokens=max_tokens)


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
        out.append(Hypothesis(text_ids, lp / (len(text_ids) + 1), compression_ratio(text), temperature,
                              truncated=t.eot not in row))
    return out


def needs_fallback(h: Hypothesis, options: DecodingOptions) -> bool:
    return h.compression_ratio > options.compression_ratio_threshold or h.avg_logprob < options.logprob_threshold


@torch.no_grad()
def transcribe(backbone: Whisper, memory: Tensor, options: DecodingOptions = DecodingOptions()) -> list[Hypothesis]:
    """Greedy first; rows that fail the loop / probability checks again at each higher temperature."""
    options = replace(options, max_tokens=token_limit(backbone, options.max_tokens))
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
