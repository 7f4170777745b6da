"""Multi-head attention: the original layer, same weights; the reference every other variant is measured against.

It is grouped-query attention with one K/V head per query head, so it shares GQA's code (pooling groups of one
head copies the weights exactly)."""

from __future__ import annotations

from .canonical import CanonicalMHA
from .gqa import GroupedQueryAttention


class MultiHeadAttention(GroupedQueryAttention):
    name = "mha"

    def __init__(self, mha: CanonicalMHA):
        super().__init__(mha, num_kv_heads=mha.num_heads)
