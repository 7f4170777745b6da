"""Attention variants behind one interface: built from a CanonicalMHA, forward over (B, T, d), cache_bytes()."""

from .base import AttentionVariant, Cache, cache_nbytes
from .build import VARIANTS, build_attention
from .canonical import CanonicalMHA, random_mha
from .fidelity import fidelity_table, relative_error

__all__ = [
    "AttentionVariant", "Cache", "CanonicalMHA", "VARIANTS", "build_attention", "cache_nbytes",
    "fidelity_table", "random_mha", "relative_error",
]
