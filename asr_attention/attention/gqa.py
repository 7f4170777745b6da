"""Grouped-query attention: K/V heads mean-pooled per group of query heads (Ainslie et al., 2023).

Query head h reads K/V head h // (H / g): groups are runs of consecutive heads, as SDPA's enable_gqa reads them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
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
    step_projections = ("q_proj", "k_proj", "v_proj")

    def __init__(self, mha: CanonicalMHA, num_kv_heads: int):
        if num_kv_heads < 1 or mha.num_heads % num_kv_heads:
            raise ValueError(
                f"attention.num_kv_heads={num_kv_heads} must be >= 1 and divide num_heads={mha.num_heads}"
            )
        super().__init__(mha)
        self.kv_heads = num_kv_heads
        self.k_proj: nn.Linear = linear_from(*pool_heads(mha.k_weight, mha.k_bias, mha.num_heads, num_kv_heads))
        self.v_proj: nn.Linear = linear_from(*pool_heads(mha.v_weight, mha.v_bias, mha.num_heads, num_kv_heads))
        self.stack_step_projection()

    def cache_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        return 2 * batch * frames * self.kv_heads * self.head_dim * dtype.itemsize

    def compress(self, k_input: Tensor, v_input: Tensor) -> dict[str, Tensor]:
        # only kv_heads heads are made and kept; attention shares them across their query heads
        return {"k": self.split_heads(self.k_proj(k_input), self.kv_heads),
                "v": self.split_heads(self.v_proj(v_input), self.kv_heads)}

    def expand(self, kept: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return kept["k"], kept["v"]

    def decode_buffers(self, batch: int, slots: int) -> dict[str, Tensor]:
        shape = (batch, self.kv_heads, slots, self.head_dim)
        return {"k": self.k_proj.weight.new_zeros(shape), "v": self.v_proj.weight.new_zeros(shape)}

    def decode_step(self, x: Tensor, buffers: dict[str, Tensor], position: Tensor, keep: Tensor) -> Tensor:
        (weight, bias), sizes = self.step_projection
        q, k, v = F.linear(x, weight, bias).split(sizes, dim=-1)
        buffers["k"].index_copy_(2, position, self.split_heads(k, self.kv_heads))
        buffers["v"].index_copy_(2, position, self.split_heads(v, self.kv_heads))
        # one query against the grouped heads as they are kept (SDPA shares them: no copy per query head)
        out = F.scaled_dot_product_attention(self.split_heads(q), buffers["k"], buffers["v"], attn_mask=keep,
                                             scale=self.scale, enable_gqa=self.kv_heads != self.num_heads)
        return self.o_proj(self.merge_heads(out))
