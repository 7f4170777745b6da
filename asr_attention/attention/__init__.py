"""Attention variants behind one interface (see base.py): built from a CanonicalMHA; encoder self-attention,
causal decoder self-attention and cross-attention; each keeps its own cache; cache_bytes()."""

from .base import AttentionVariant, Cache, cache_nbytes
from .build import VARIANTS, build_attention
from .canonical import CanonicalMHA, random_mha
from .fidelity import relative_error

__all__ = [
    "AttentionVariant", "Cache", "CanonicalMHA", "VARIANTS", "build_attention", "cache_nbytes",
    "random_mha", "relative_error",
]
