"""Build an experiment's parts from a composed config: tokenizer, data, (patched) backbone, module, trainer.

Each builder takes its config group, as lightning-hydra-template's train.py instantiates one per group.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from .attention import cache_nbytes, fidelity_table
from .backbones import (
    Backbone, build_backbone, calibration_batch, capture_attention_inputs, original_variants, patch_attention,
    patched_variants,
)
from .data.datamodule import ASRDataModule, build_datamodule
from .data.text import CharTokenizer
from .module import ASRFineTuner, CTCFineTuner

log = logging.getLogger(__name__)


def build_tokenizer_and_backbone(cfg: DictConfig) -> tuple[CharTokenizer, Backbone]:
    """Reuse the checkpoint's CTC vocabulary and head when it has one; else characters of the training texts."""
    backbone = build_backbone(cfg.model)
    if cfg.model.get("pretrained", True) and backbone.family == "hf_wav2vec2":
        backbone.model.freeze_feature_encoder()  # the conv front end stays as pretrained (HF's own recipe)
    if backbone.family == "whisper" and backbone.head == "seq2seq":
        from .backbones.whisper_tokens import WhisperTextTokenizer

        return WhisperTextTokenizer(backbone.tokens), backbone
    if backbone.vocab is not None and "|" in backbone.vocab:
        vocab = {tok: i for i, tok in enumerate(backbone.vocab)}
        return CharTokenizer(vocab, blank_id=backbone.blank_id, word_delimiter="|", oov=cfg.data.oov), backbone
    if backbone.vocab is not None:  # e.g. SpeechBrain's BPE head: this framework decodes characters
        log.warning("the checkpoint's %d-token head is not a character vocabulary: replaced by a new character "
                    "CTC head trained from scratch", len(backbone.vocab))
    texts = build_datamodule(cfg.data, None).corpus_texts()
    tokenizer = CharTokenizer.from_texts(texts, oov=cfg.data.oov)
    backbone.reset_head(len(tokenizer))
    return tokenizer, backbone


def convert(backbone: Backbone, attention_cfg: DictConfig, datamodule: ASRDataModule, batches: int = 1) -> dict:
    """Patch every attention layer, calibrating on (and measuring fidelity over) the first val batch(es)."""
    loader = datamodule.val_dataloader()
    batch = next(b for b in loader if b is not None)
    backbone.select_sites(attention_cfg.get("sites"))
    inputs = capture_attention_inputs(backbone, batch["waves"], batch["wave_lengths"], batch["targets"])
    references = original_variants(backbone)
    activation_aware = attention_cfg.get("calibration") == "activation"
    summary = patch_attention(backbone, attention_cfg, calibration_batch(inputs) if activation_aware else None)
    summary["fidelity"] = fidelity_table(references, [v.eval() for v in patched_variants(backbone)], inputs)
    backbone.train()
    summary["measured_cache_bytes"] = measured_cache_bytes(backbone, inputs)
    return summary


def measured_cache_bytes(backbone: Backbone, inputs: list[dict]) -> dict:
    """Run each patched layer over its captured input with use_cache=True and count the bytes it holds, beside
    the analytic figure for the same frames and batch."""
    measured = analytic = 0
    with torch.no_grad():
        for variant, kw in zip(patched_variants(backbone), inputs):
            _, cache = variant(**kw, use_cache=True)
            measured += cache_nbytes(cache)
            b, t, _ = kv_input(kw).shape
            analytic += variant.cache_bytes(t, b, kw["x"].dtype)
    frames, batch = kv_input(inputs[0]).shape[1], inputs[0]["x"].shape[0]
    return {"frames": frames, "batch": batch, "measured": measured, "analytic": analytic}


def kv_input(inputs: dict):
    """What a layer's K/V are made from: the memory for cross-attention, else x."""
    return inputs["x"] if inputs.get("memory") is None else inputs["memory"]


def build_module(cfg: DictConfig, backbone: Backbone, tokenizer: CharTokenizer) -> ASRFineTuner:
    if backbone.family == "whisper" and backbone.head == "seq2seq":
        from .decoding import DecodingOptions
        from .seq2seq_module import Seq2SeqFineTuner

        decoding = DecodingOptions(**{k: tuple(v) if k == "temperatures" else v
                                      for k, v in cfg.model.get("decoding", {}).items()})
        return Seq2SeqFineTuner(backbone, decoding, cfg.model.get("cache_encoder", True), **cfg.optim)
    return CTCFineTuner(backbone, tokenizer, **cfg.optim)


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best-{epoch}-{val_wer:.4f}", monitor="val_wer", mode="min",
        save_last=True, save_top_k=1,
    )
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values()]
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=[checkpoints, RichProgressBar()], logger=loggers or False,
        default_root_dir=str(run_dir),
    )


def build_datamodule_for(cfg: DictConfig, tokenizer: CharTokenizer) -> ASRDataModule:
    datamodule = build_datamodule(cfg.data, tokenizer)
    datamodule.setup()
    return datamodule


def config_summary(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
