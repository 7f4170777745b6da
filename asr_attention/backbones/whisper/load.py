"""Build a `Whisper` backbone from model.source: a CTranslate2 / faster-whisper folder (the default, null: the
packaged weights of model.size, packages.py: tiny.en, or base), an HF Whisper folder, or a hub id (with a
network)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from ..base import arch_of, check_sizes, hub_error, hub_offline, hub_reachable
from .adapter import Whisper
from .packages import package_folder, size_of
from .tokens import WhisperTokens, read_tokens

log = logging.getLogger(__name__)


def build_whisper(model_cfg: Mapping, ctc_vocab_size: int | None = None) -> Whisper:
    head = model_cfg.get("head", "seq2seq")
    if not model_cfg.get("pretrained", True):
        config = random_config(model_cfg)
        model = WhisperForConditionalGeneration(config)
        tokens = WhisperTokens(eot=config.eos_token_id, sot=config.decoder_start_token_id,
                               no_timestamps=config.vocab_size - 1, suppress_begin=[config.eos_token_id])
    else:
        model, tokens = load_pretrained(model_cfg)
        set_run_time_fields(model.config, arch_of(model_cfg))
    source = model_cfg.get("source")
    check_sizes(f"the packaged Whisper {size_of(model_cfg)}" if source is None else str(source), [
        ("model.d_model", model_cfg["d_model"], "d_model", model.config.d_model),
        ("model.num_heads", model_cfg["num_heads"], "decoder_attention_heads", model.config.decoder_attention_heads),
        ("model.num_layers", model_cfg["num_layers"], "decoder_layers", model.config.decoder_layers),
    ])
    if model_cfg.get("freeze_encoder", False):
        model.model.encoder.requires_grad_(False)  # attention converted later is new, and trains
    return Whisper(model.eval(), tokens, head=head, ctc_vocab_size=ctc_vocab_size)


def random_config(model_cfg: Mapping) -> WhisperConfig:
    arch = arch_of(model_cfg)
    d, h, n = int(model_cfg["d_model"]), int(model_cfg["num_heads"]), int(model_cfg["num_layers"])
    defaults = dict(vocab_size=100, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d, max_source_positions=1500,
                    max_target_positions=448, decoder_start_token_id=97, eos_token_id=96, pad_token_id=96,
                    bos_token_id=96)
    return WhisperConfig(d_model=d, encoder_attention_heads=h, decoder_attention_heads=h, encoder_layers=n,
                         decoder_layers=n, **{**defaults, **arch})


# The WhisperConfig fields a loaded model reads while it runs (SpecAugment, in training). The others fix shapes, or
# are read once when the modules are built: set on loaded weights, they would change nothing.
RUN_TIME_FIELDS = ("apply_spec_augment", "mask_time_prob", "mask_time_length", "mask_time_min_masks",
                   "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks")


def set_run_time_fields(config: WhisperConfig, arch: Mapping) -> None:
    """model.arch on pretrained weights: the SpecAugment fields only."""
    for key, value in arch.items():
        if key not in RUN_TIME_FIELDS:
            raise ValueError(f"model.arch.{key}: a pretrained Whisper takes only {list(RUN_TIME_FIELDS)} from "
                             "model.arch (the checkpoint fixes the rest)")
        setattr(config, key, value)


def load_pretrained(model_cfg: Mapping) -> tuple[WhisperForConditionalGeneration, WhisperTokens]:
    source = model_cfg.get("source")
    folder = package_folder(size_of(model_cfg)) if source is None else Path(str(source)).expanduser()
    if (folder / "model.bin").is_file():
        model = load_ctranslate2(folder, model_cfg)
        return model, read_tokens(folder, model.config.vocab_size)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model.source={str(source)!r}: the folder holds neither model.bin "
                                    "(CTranslate2) nor config.json (HF)")
        model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                                                attn_implementation="sdpa")
        return model, read_tokens(folder, model.config.vocab_size)
    return load_hub(str(source))


def load_ctranslate2(folder: Path, model_cfg: Mapping) -> WhisperForConditionalGeneration:
    """The CTranslate2 weights in transformers' layout (fp32 master weights; the file stores fp16, or integers and
    scales where quantised)."""
    from .weights import hf_state_dict_from_ct2

    config, state = hf_state_dict_from_ct2(folder)
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)
    return model


def load_hub(source: str) -> tuple[WhisperForConditionalGeneration, WhisperTokens]:
    """A hub id (openai/whisper-tiny.en, ...): from the local cache, or downloaded when the network allows."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(source, local_files_only=True))
    except Exception as err:  # noqa: BLE001 -- the hub client raises several types for "not cached"
        if hub_offline():
            raise hub_error(source, "HF_HUB_OFFLINE is set and it is not in the local cache") from err
        if not hub_reachable():
            raise hub_error(source, "no network: huggingface.co is unreachable") from err
        folder = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                                            attn_implementation="sdpa")
    return model, read_tokens(folder, model.config.vocab_size)
