"""Backbone adapters, one per family, behind `Backbone`; `build_backbone` dispatches on model.family."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import get_method

from .base import Backbone
from .patch import (
    calibration_batch,
    capture_attention_calls,
    count_parameters,
    fidelity,
    kv_input,
    original_variants,
    patch_attention,
    patched_variants,
)

# model.family -> the builder of its adapter, imported only when that family is built (each pulls in its own
# library: transformers, SpeechBrain)
FAMILIES = {
    "hf_wav2vec2": "asr_attention.backbones.hf_wav2vec2.build_hf_wav2vec2",
    "speechbrain_branchformer": "asr_attention.backbones.speechbrain_branchformer.build_speechbrain_branchformer",
    "whisper": "asr_attention.backbones.whisper.load.build_whisper",
}


def build_backbone(model_cfg: Mapping, vocab: Any = None) -> Backbone:
    """model_cfg: the `model` config node (family, source, pretrained, d_model, num_heads, num_layers, arch).

    vocab: None (keep the checkpoint's CTC head; random models use model.arch.vocab_size or a default), an int
    (the CTC head's size: a new head if it differs from the checkpoint's), or anything with len() (a tokenizer
    or token list).
    """
    family = model_cfg.get("family")
    if family not in FAMILIES:
        raise ValueError(f"model.family={family!r} is not one of {list(FAMILIES)}")
    size = None if vocab is None else (vocab if isinstance(vocab, int) else len(vocab))
    return get_method(FAMILIES[family])(model_cfg, size)


__all__ = [
    "FAMILIES", "Backbone", "build_backbone", "calibration_batch", "capture_attention_calls", "count_parameters",
    "fidelity", "original_variants", "patch_attention", "patched_variants",
]
