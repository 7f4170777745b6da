"""The one decoding loop: a cache object turns tokens into next-token logits (caches.py, static_decode.py), logit
filters bar tokens (logit_filters.py), a token decoder picks the next tokens (greedy.py, beam.py), until every
utterance is done (stop_check.py: on a GPU read a step or two late, never waited for) or the token limit is reached;
rows that ended leave the batch once the others fit a quarter of it (compaction.py). The last token is emitted,
never fed."""

from __future__ import annotations

import torch
from torch import Tensor

from asr_attention.backbones.whisper.tokens import WhisperTokens

from .compaction import Compaction
from .logit_filters import LogitFilter, whisper_filters
from .stop_check import stop_check
from .token_decoder import Candidate, TokenDecoder


@torch.no_grad()
def decode(cache, memory: Tensor | None, decoder: TokenDecoder, tokens: WhisperTokens, max_tokens: int,
           filters: list[LogitFilter] | None = None) -> list[Candidate]:
    """Decode from the prompt: memory (utterances, frames, d), each utterance's `cache.beams` rows sharing it
    (beam search), or None to continue from a restarted cache's cross caches. filters: Whisper's suppress lists
    unless given. -> one Candidate per utterance."""
    rows = memory.shape[0] * cache.beams if memory is not None else cache.rows
    prompt = torch.tensor(tokens.prompt, device=memory.device if memory is not None else cache.device)
    prompt = prompt.repeat(rows, 1)
    logits = cache.logits(prompt, memory)
    if filters is None:
        filters = whisper_filters(tokens, logits.shape[-1], logits.device)
    can_end = not any(f.always_bars(tokens.eot) for f in filters)  # else no row ends early: no host reads
    decoder.reset(rows, len(tokens.prompt), logits.device)
    ended = stop_check(decoder, logits.device, max_tokens)
    compact = Compaction(cache, decoder, rows) if can_end else None
    seq = prompt
    for step in range(max_tokens):
        for f in filters:
            logits = f.apply(logits, step)
        seq, source_rows = decoder.update(seq, logits)
        if step + 1 == max_tokens or (can_end and ended(step)):
            break
        if source_rows is not None:
            cache.reorder(source_rows)
        if compact is not None:
            cache, seq = compact(step, cache, decoder, seq)
        logits = cache.logits(seq[:, -1:])
    return decoder.finalize(seq) if compact is None else compact.candidates(decoder.finalize(seq))
