"""Which keys each query may see: key padding, causality and an additive score bias, as SDPA's attn_mask."""

from __future__ import annotations

import torch
from torch import Tensor


def causal_keep(queries: int, keys: int, device: torch.device) -> Tensor:
    """(queries, keys) bool keep-mask for queries that are the last `queries` of `keys` frames: query i (frame
    keys - queries + i) sees keys up to its own frame. With queries == keys, the lower triangle."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


def attention_mask(
    key_padding_mask: Tensor | None, bias: Tensor | None, queries: int, keys: int, causal: bool, device: torch.device
) -> tuple[Tensor | None, bool]:
    """-> (attn_mask, is_causal) for SDPA: a bool keep-mask, an additive float mask (when there is a bias), or
    None. is_causal only where causality is all there is to mask over square scores: SDPA's fused kernels then
    take the call with no mask tensor. One query (a decode step) is the last frame: it sees every key.

    key_padding_mask: (B, keys), True = padding; bias: (B, H, queries, keys). A query that sees no key at all
    (a padded frame before any valid one, under causality) gets NaN: pad on the right."""
    causal = causal and queries > 1
    if causal and key_padding_mask is None and bias is None and queries == keys:
        return None, True
    hidden = None if key_padding_mask is None else key_padding_mask.reshape(key_padding_mask.shape[0], 1, 1, keys)
    if causal:
        future = causal_keep(queries, keys, device).logical_not()
        hidden = future if hidden is None else hidden | future
    if hidden is None:
        return bias, False
    if bias is None:
        return hidden.logical_not(), False
    return bias.masked_fill(hidden, float("-inf")), False
