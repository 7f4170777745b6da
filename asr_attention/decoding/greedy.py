"""Greedy decoding of a fixed number of tokens with the backbone's own per-layer caches (Whisper.decode), batched.

Tokens in `suppress` are never emitted (the benchmark suppresses <|endoftext|> so every row decodes exactly
`steps` tokens, as transformers' generate does with min_new_tokens)."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def greedy(backbone, memory: Tensor, prompt: Tensor, steps: int, suppress: tuple[int, ...] = ()):
    """memory (B, frames, d): encoder output; prompt (B, P) -> tokens (B, steps), and the DecoderCache after the
    last step (prompt + steps - 1 tokens cached: the last token is emitted, never fed)."""
    cache = backbone.new_cache()
    logits = backbone.decode(prompt, memory, cache)[:, -1]
    banned = torch.tensor(suppress, dtype=torch.long, device=memory.device)
    out = []
    for step in range(steps):
        token = logits.index_fill(-1, banned, float("-inf")).argmax(-1)
        out.append(token)
        if step + 1 < steps:
            logits = backbone.decode(token[:, None], None, cache)[:, -1]
    return torch.stack(out, dim=1), cache
