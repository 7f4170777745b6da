"""Grouped-query attention: K/V heads mean-pooled per group of query heads (Ainslie et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Cache, SoftmaxAttention, append, stacked_kv, linear_from
from .positions import key_padding_to_sdpa
from .canonical import CanonicalMHA


def pool_heads(weight: Tensor, bias: Tensor | None, num_heads: int, groups: int):
    """Mean of each group's head rows: (d, d) -> (groups*hd, d). Exact when groups == num_heads."""
    d_in = weight.shape[1]
    hd = weight.shape[0] // num_heads
    w = weight.view(groups, num_heads // groups, hd, d_in).mean(1).reshape(groups * hd, d_in)
    b = None if bias is None else bias.view(groups, num_heads // groups, hd).mean(1).reshape(groups * hd)
    return w, b


class GroupedQueryAttention(SoftmaxAttention):
    name = "gqa"

    def __init__(self, mha: CanonicalMHA, num_kv_heads: int):
        if num_kv_heads < 1 or mha.num_heads % num_kv_heads:
            raise ValueError(
                f"attention.num_kv_heads={num_kv_heads} must be >= 1 and divide num_heads={mha.num_heads}"
            )
        super().__init__(mha)
        self.kv_heads = num_kv_heads
        self.k_proj: nn.Linear = linear_from(*pool_heads(mha.k_weight, mha.k_bias, mha.num_heads, num_kv_heads))
        self.v_proj: nn.Linear = linear_from(*pool_heads(mha.v_weight, mha.v_bias, mha.num_heads, num_kv_heads))

    def keys_values(self, x: Tensor, qk_in: Tensor, cache: Cache | None, use_cache: bool):
        # Only kv_heads heads are produced and cached; SDPA's flash kernel shares them without copies
        # (SoftmaxAttention.forward copies them per head only where flash cannot take the call).
        k = self.split_heads(self.k_proj(qk_in), self.kv_heads)
        v = self.split_heads(self.v_proj(x), self.kv_heads)
        if cache is None and not use_cache:
            return k, v, None
        new = append(cache, k=k, v=v)
        return new["k"], new["v"], new

    def cross_attention(self, x: Tensor, memory: Tensor | Cache, key_padding_mask: Tensor | None, use_cache: bool):
        if not isinstance(memory, dict):  # the cache: kv_heads K/V heads over the memory frames
            memory = {"k": self.split_heads(self.k_proj(memory), self.kv_heads),
                      "v": self.split_heads(self.v_proj(memory), self.kv_heads)}
        q = self.split_heads(self.q_proj(x))
        out = self.attend(q, memory["k"], memory["v"], key_padding_to_sdpa(key_padding_mask, None))
        return self.o_proj(self.merge_heads(out)), memory if use_cache else None

    def kv_input_projection(self, tokens: int | None):
        return (*stacked_kv(self.k_proj, self.v_proj), self._split_kv)

    def _split_kv(self, projected: Tensor):
        k, v = projected.chunk(2, dim=-1)
        return self.split_heads(k, self.kv_heads), self.split_heads(v, self.kv_heads)

    def cache_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        return 2 * batch * frames * self.kv_heads * self.head_dim * dtype.itemsize
