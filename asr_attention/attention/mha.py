"""Multi-head attention: the original layer, same weights; the reference every other variant is measured against."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Cache, SoftmaxAttention, append, fused_kv, linear_from
from .canonical import CanonicalMHA


class MultiHeadAttention(SoftmaxAttention):
    name = "mha"

    def __init__(self, mha: CanonicalMHA):
        super().__init__(mha)
        self.kv_heads = self.num_heads
        self.k_proj = linear_from(mha.k_weight, mha.k_bias)
        self.v_proj = linear_from(mha.v_weight, mha.v_bias)

    def keys_values(self, x: Tensor, qk_in: Tensor, cache: Cache | None, use_cache: bool):
        k = self.split_heads(self.k_proj(qk_in))
        v = self.split_heads(self.v_proj(x))
        if cache is None and not use_cache:
            return k, v, None
        new = append(cache, k=k, v=v)
        return new["k"], new["v"], new

    def kv_input_projection(self):
        return fused_kv(self.k_proj, self.v_proj)

    def keys_values_from(self, projected: Tensor):
        k, v = projected.chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def cache_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        # K and V: d values each per frame
        return 2 * batch * frames * self.d_model * dtype.itemsize
