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

# attention.calibration for MLA: plain SVD of the weights, or activation-aware SVD on calibration data.
CALIBRATIONS = ("plain", "activation")


def build_attention(cfg: Mapping, mha: CanonicalMHA, calibration: Tensor | None = None) -> AttentionVariant:
    """cfg is the `attention` config node: name plus that variant's options."""
    name = cfg["name"]
    if name not in VARIANTS:
        raise ValueError(f"attention.name={name!r} is not one of {sorted(VARIANTS)}")
    if name == "gqa":
        return GroupedQueryAttention(mha, num_kv_heads=int(cfg["num_kv_heads"]))
    if name == "mla":
        how = cfg.get("calibration", "plain")
        if how not in CALIBRATIONS:
            raise ValueError(f"attention.calibration={how!r} is not one of {list(CALIBRATIONS)}")
        if how == "activation" and calibration is None:  # plain SVD here would be a different conversion
            raise ValueError("attention.calibration=activation needs calibration data (each site's K/V inputs: "
                             "patch_attention(..., calibration=calibration_batch(capture_attention_calls(...))), "
                             "as experiment.convert does), or set attention.calibration=plain")
        # latent "input": set by backbones/patch.py at cross sites under attention.cross_latent=memory
        return MultiHeadLatentAttention(
            mha, latent_dim=int(cfg["latent_dim"]), calibration=calibration if how == "activation" else None,
            latent_from_input=cfg.get("latent") == "input", owns_cache=cfg.get("owns_cache", True),
        )
    if name == "linear":
        return LinearAttention(mha, feature_map=cfg.get("feature_map", "elu"))
    return MultiHeadAttention(mha)
