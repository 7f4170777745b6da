"""Name -> variant: the only place that knows which classes exist."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from .base import AttentionVariant
from .canonical import CanonicalMHA
from .gqa import GroupedQueryAttention
from .linear import LinearAttention
from .mha import MultiHeadAttention
from .mla import MultiHeadLatentAttention

VARIANTS: dict[str, type[AttentionVariant]] = {
    "mha": MultiHeadAttention,
    "gqa": GroupedQueryAttention,
    "mla": MultiHeadLatentAttention,
    "linear": LinearAttention,
}


def build_attention(cfg: Mapping, mha: CanonicalMHA, calibration: Tensor | None = None) -> AttentionVariant:
    """cfg is the `attention` config node: name plus that variant's options."""
    name = cfg["name"]
    if name not in VARIANTS:
        raise ValueError(f"attention.name={name!r} is not one of {sorted(VARIANTS)}")
    if name == "gqa":
        return GroupedQueryAttention(mha, num_kv_heads=int(cfg["num_kv_heads"]))
    if name == "mla":
        activation_aware = cfg.get("calibration", "plain") == "activation"
        return MultiHeadLatentAttention(
            mha, latent_dim=int(cfg["latent_dim"]), calibration=calibration if activation_aware else None
        )
    if name == "linear":
        return LinearAttention(mha, feature_map=cfg.get("feature_map", "elu"))
    return MultiHeadAttention(mha)
