"""Backbone adapters, one per family, behind `Backbone`; `build_backbone` dispatches on model.family."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Backbone
from .patch import (
    calibration_batch,
    capture_attention_inputs,
    count_parameters,
    original_variants,
    patch_attention,
    patched_variants,
)

FAMILIES = ("hf_wav2vec2", "speechbrain_branchformer", "whisper")


def build_backbone(model_cfg: Mapping, vocab: Any = None) -> Backbone:
    """model_cfg: the `model` config node (family, source, pretrained, d_model, num_heads, num_layers, arch).

    vocab: None (keep the checkpoint's CTC head; random models use model.arch.vocab_size or a default), an int
    (the CTC head's size: a new head if it differs from the checkpoint's), or anything with len() (a tokenizer
    or token list).
    """
    family = model_cfg.get("family")
    size = None if vocab is None else (vocab if isinstance(vocab, int) else len(vocab))
    if family == "hf_wav2vec2":
        from .hf_wav2vec2 import build_hf_wav2vec2

        return build_hf_wav2vec2(model_cfg, size)
    if family == "speechbrain_branchformer":
        from .speechbrain_branchformer import build_speechbrain_branchformer

        return build_speechbrain_branchformer(model_cfg, size)
    if family == "whisper":
        from .whisper_load import build_whisper

        return build_whisper(model_cfg, size)
    raise ValueError(f"model.family={family!r} is not one of {list(FAMILIES)}")


__all__ = [
    "FAMILIES", "Backbone", "build_backbone", "calibration_batch", "capture_attention_inputs", "count_parameters",
    "original_variants", "patch_attention", "patched_variants",
]
