"""Grouped-query attention: K/V heads mean-pooled per group of query heads (Ainslie et al., 2023).

Query head h reads K/V head h // (H / g): groups are runs of consecutive heads, as SDPA's enable_gqa reads them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .base import SoftmaxAttention, linear_from
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

    def cache_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        return 2 * batch * frames * self.kv_heads * self.head_dim * dtype.itemsize

    def compress(self, k_input: Tensor, v_input: Tensor) -> dict[str, Tensor]:
        # only kv_heads heads are made and kept; attention shares them across their query heads
        return {"k": self.split_heads(self.k_proj(k_input), self.kv_heads),
                "v": self.split_heads(self.v_proj(v_input), self.kv_heads)}

    def expand(self, kept: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return kept["k"], kept["v"]

