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

from ..attention import cache_nbytes
from ..attention.mla import SecondMoment
from ..backbones import (
    Backbone,
    build_backbone,
    calibration_batch,
    capture_attention_calls,
    fidelity,
    kv_input,
    patch_attention,
    patched_variants,
)
from ..backbones.eval_mode import eval_mode
from ..data.datamodule import ASRDataModule, build_datamodule
from ..data.text import CharTokenizer
from ..runs.identity import setting
from .checkpoint_io import AtomicCheckpointIO
from .checkpointing import LastCheckpoint
from .ctc_module import ASRFineTuner, CTCFineTuner
from .finite_training import StopOnNonFinite

log = logging.getLogger(__name__)


def build_tokenizer_and_backbone(cfg: DictConfig, datamodule: ASRDataModule | None = None,
                                 saved: CharTokenizer | None = None) -> tuple[CharTokenizer, Backbone]:
    """Reuse the checkpoint's CTC vocabulary and head when it has one; else characters of the training texts (of
    `datamodule`'s listing when given, else a fresh one's), or `saved`: the tokenizer a converted model was saved
    with (converted_model.py)."""
    backbone = build_backbone(cfg.model)
    if cfg.model.get("pretrained", True) and backbone.family == "hf_wav2vec2":
        backbone.model.freeze_feature_encoder()  # the conv front end stays as pretrained (HF's own recipe)
    if backbone.family == "whisper" and backbone.head == "seq2seq":
        from ..backbones.whisper.tokens import WhisperTextTokenizer

        return WhisperTextTokenizer(backbone.tokens), backbone
    if backbone.vocab is not None and "|" in backbone.vocab:
        vocab = {tok: i for i, tok in enumerate(backbone.vocab)}
        return CharTokenizer(vocab, blank_id=backbone.blank_id, word_delimiter="|", oov=cfg.data.oov), backbone
    if backbone.vocab is not None:  # e.g. SpeechBrain's BPE head: this framework decodes characters
        log.warning("the checkpoint's %d-token head is not a character vocabulary: replaced by a new character "
                    "CTC head trained from scratch", len(backbone.vocab))
    tokenizer = saved
    if tokenizer is None:
        tokenizer = CharTokenizer.from_texts((datamodule or build_datamodule(cfg.data, None)).corpus_texts(),
                                             oov=cfg.data.oov)
    backbone.reset_head(len(tokenizer))
    return tokenizer, backbone


def calibration_args(cfg: DictConfig) -> dict:
    """convert's calibration arguments from a run's config (`calibration:` and the seed; Whisper's decoding options
    for calibration.text=teacher). A key absent (a config written before it) has today's default."""
    args = {"frames": cfg.calibration.frames, "seed": cfg.seed,
            **{key: setting(cfg, f"calibration.{key}") for key in ("split", "text", "utterances")}}
    if args["text"] == "teacher":
        args["decoding"] = decoding_options(cfg.model)
    return args


def convert(backbone: Backbone, attention_cfg: DictConfig, datamodule: ASRDataModule, frames: int,
            seed: int = 0, split: str = "val", text: str = "reference", utterances: int | None = None,
            decoding=None) -> dict:
    """Patch every attention layer. What conversion sees (MLA's activation-aware SVD, the fidelity table, the
    measured cache) comes from the unpatched backbone's layers on utterances of `split` (config `calibration`)
    drawn at random (seed) across it: `utterances` of them, or (None) until they hold about `frames` encoder frames.
    Whisper's decoder sites are teacher-forced on `text`: "reference" (the transcripts) or "teacher" (what the
    unpatched model itself writes for that audio, decoded with `decoding`). The summary records what was used."""
    backbone.select_sites(attention_cfg.get("sites"))
    if split not in ("val", "train"):
        raise ValueError(f"calibration.split={split!r} is not allowed: expected val or train")
    loader = datamodule.spread_dataloader(split, seconds=frames * backbone.frame_ms / 1000, seed=seed,
                                          count=utterances)
    kinds = [backbone.site_kind(parent, name) for parent, name, _ in backbone.attention_sites()]
    reads_text = any(kind != "encoder" for kind in kinds)  # a decoder is teacher-forced
    captured, waves_seen, tokens = [], [], 0
    for batch in loader:
        batch = datamodule.on_before_batch_transfer(batch, 0)  # records unreadable files; None if none was read
        if batch is None:
            continue
        targets = calibration_text(backbone, batch, text, decoding) if reads_text else batch["targets"]
        if reads_text:
            tokens += int((~backbone.tokens.padding(targets)).sum())
        captured.append(capture_attention_calls(backbone, batch["waves"], batch["wave_lengths"], targets))
        waves_seen.append(batch["wave_lengths"])
    if not captured:
        raise ValueError(f"calibration: no readable utterance in the {split} split ({datamodule.splits[split]})")
    moments = [SecondMoment() for _ in kinds]
    for capture in captured:
        for moment, rows in zip(moments, calibration_batch(capture)):
            moment.add(rows)
    lengths = torch.cat(waves_seen)
    used = {"split": split, "text": text, "utterances": len(lengths),
            "frames": encoder_frames(backbone, kinds, moments[0].count, lengths), "requested_frames": frames}
    if reads_text:
        used["tokens"] = tokens  # decoder positions teacher-forced (prompt and text), over every utterance
    if utterances is not None:
        used["requested_utterances"] = utterances
        if used["utterances"] < utterances:
            log.warning("calibration: the %s split holds %d readable utterances, fewer than calibration.utterances="
                        "%d; using all of it", split, used["utterances"], utterances)
    elif used["frames"] < frames:
        log.warning("calibration: the %s split holds %d encoder frames of audio, fewer than calibration.frames=%d; "
                    "using all of it", split, used["frames"], frames)
    activation_aware = attention_cfg.get("calibration") == "activation"
    summary = patch_attention(backbone, attention_cfg, [m.rows() for m in moments] if activation_aware else None)
    summary["calibration_data"] = used
    summary["fidelity"] = fidelity([v.eval() for v in patched_variants(backbone)], captured)
    summary["measured_cache_bytes"] = measured_cache_bytes(backbone, captured[0].inputs)  # in eval: no dropout draws
    backbone.train()
    return summary


def calibration_text(backbone: Backbone, batch: dict, text: str, decoding) -> torch.Tensor:
    """The token ids that teacher-force the decoder sites: the batch's targets, or the unpatched model's own
    transcripts of its audio."""
    if text == "reference":
        return batch["targets"]
    if text != "teacher":
        raise ValueError(f"calibration.text={text!r} is not allowed: expected reference or teacher")
    from ..generation.token_limit import with_token_limit
    from .teacher_text import as_targets, transcript_ids

    if decoding is None:
        raise ValueError("calibration.text=teacher needs the model's decoding options (calibration_args)")
    device = next(backbone.parameters()).device
    with torch.no_grad(), eval_mode(backbone):
        memory = backbone.encode(batch["waves"].to(device), batch["wave_lengths"].to(device))
        ids = transcript_ids(backbone, memory, with_token_limit(backbone, decoding))
    return as_targets(ids)


def encoder_frames(backbone: Backbone, kinds: list[str], first_site_rows: int, wave_lengths: torch.Tensor) -> int:
    """Encoder frames calibrated on: the rows of the first site where it is an encoder site, else the frames the
    audio holds (decoder sites count tokens: results record those as `tokens`)."""
    if kinds[0] == "encoder":
        return first_site_rows
    samples_per_frame = 16 * backbone.frame_ms  # 16 kHz audio
    return int(torch.ceil(wave_lengths / samples_per_frame).sum())


def patch_structure(backbone: Backbone, attention_cfg: DictConfig, latent_dims: list[int] | None = None) -> None:
    """What `convert` builds, without its calibration, for weights loaded next (run_model.py, converted_model.py):
    each selected site gets the variant, MLA at the per-layer ranks the conversion chose (latent_dims; None:
    attention.latent_dim everywhere)."""
    if attention_cfg.name == "mla":  # the factors are overwritten by the loaded weights: plain SVD builds the shapes
        patch_attention(backbone, OmegaConf.merge(attention_cfg, {"calibration": "plain"}), latent_dims=latent_dims)
    elif attention_cfg.name != "native":
        patch_attention(backbone, attention_cfg)


def measured_cache_bytes(backbone: Backbone, inputs: list[dict]) -> dict:
    """Run each patched layer over its captured input with use_cache=True and count the bytes it holds, beside
    the analytic figure for the same frames and batch."""
    analytic, caches = 0, []
    with torch.no_grad():
        for variant, kw in zip(patched_variants(backbone), inputs):
            caches.append(variant(**kw, use_cache=True)[1])
            b, t, _ = kv_input(kw).shape
            analytic += variant.cache_bytes(t, b, kw["x"].dtype)
    measured = cache_nbytes(*caches)  # a tensor several layers share counts once
    frames, batch = kv_input(inputs[0]).shape[1], inputs[0]["x"].shape[0]
    return {"frames": frames, "batch": batch, "measured": measured, "analytic": analytic}


def decoding_options(model_cfg: DictConfig):
    """Whisper's DecodingOptions from model.decoding."""
    from ..generation.decoding import DecodingOptions

    return DecodingOptions(**{k: tuple(v) if k == "temperatures" else v
                              for k, v in model_cfg.get("decoding", {}).items()})


def build_module(cfg: DictConfig, backbone: Backbone, tokenizer: CharTokenizer) -> ASRFineTuner:
    if backbone.family == "whisper" and backbone.head == "seq2seq":
        from .seq2seq_module import Seq2SeqFineTuner

        return Seq2SeqFineTuner(backbone, decoding_options(cfg.model), cfg.model.get("cache_encoder", True),
                                **cfg.optim)
    return CTCFineTuner(backbone, tokenizer, **cfg.optim)


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: tuple[L.Callback, ...] = ()) -> L.Trainer:
    """The best `val_wer` checkpoint, and checkpoints/last.ckpt for resuming (see checkpointing.py). A resumed
    run that re-saves an epoch's best overwrites the file of the same name instead of adding a -v1 copy. A nan
    loss or weight stops the run before a checkpoint holds it (finite_training.py). Every checkpoint file is
    written whole or not at all (checkpoint_io.py)."""
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best-{epoch}-{val_wer:.4f}", monitor="val_wer", mode="min",
        save_top_k=1, enable_version_counter=False,
    )
    last = LastCheckpoint(run_dir / "checkpoints", every_n_steps=cfg.get("checkpoint_every_n_steps"))
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values()]
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=[best, last, StopOnNonFinite(), RichProgressBar(), *callbacks],
        plugins=[AtomicCheckpointIO()], logger=loggers or False, default_root_dir=str(run_dir),
    )


def build_datamodule_for(cfg: DictConfig, tokenizer: CharTokenizer, backbone: Backbone,
                         listed: ASRDataModule | None = None) -> ASRDataModule:
    """The data, set up for `tokenizer`: `listed`, a datamodule built without one (whose corpus listing is then
    reused), or a new one. Audio longer than the backbone reads (Whisper: 30 s) is bad audio: data.on_bad_audio
    skips or refuses it."""
    datamodule = listed or build_datamodule(cfg.data, tokenizer)
    datamodule.tokenizer = tokenizer
    datamodule.max_audio_seconds = backbone.max_audio_seconds
    datamodule.setup()
    return datamodule


def config_summary(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
