"""A CTranslate2 / faster-whisper Whisper folder -> transformers' `WhisperForConditionalGeneration` config and
state dict, tensor by tensor.

CTranslate2 stacks projections that transformers keeps apart, and stores every bias, including the zero bias of
Whisper's k_proj (which transformers' module does not have):
  self_attention/linear_0 = [q; k; v] rows (3d x d)     attention/linear_0 = q (cross-attention)
  self_attention/linear_1 = out_proj                    attention/linear_1 = [k; v] rows (2d x d)
                                                        attention/linear_2 = out_proj
  layer norms: gamma/beta -> weight/bias; ffn/linear_0|1 -> fc1|fc2; decoder/projection = embeddings (tied).
No scale is folded into the weights, so they load as they are (quantised ones dequantised first: ctranslate2.py).
Every variable of the file must be used: one this mapping does not know is an error naming it, not a weight left
out of the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor
from transformers import WhisperConfig

from .ctranslate2 import dequantized, read_ctranslate2

# The model-level flags the file stores as scalars, and the values transformers' Whisper implements.
WHISPER_FLAGS = {"decoder/pre_norm": 1, "decoder/activation": 3, "decoder/alibi": 0,  # 3 = exact GELU
                 "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0}
# Known and not needed: which cross-attention heads CTranslate2 returns for word timestamps (no effect on outputs).
NOT_WEIGHTS = ("decoder/alignment_heads", "decoder/alignment_layer")
SPECIAL_TOKENS = {"eos_token_id": "<|endoftext|>", "decoder_start_token_id": "<|startoftranscript|>"}


def _norm(v: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    return {f"{dst}.weight": v[f"{src}/gamma"], f"{dst}.bias": v[f"{src}/beta"]}


def _linear(v: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    return {f"{dst}.weight": v[f"{src}/weight"], f"{dst}.bias": v[f"{src}/bias"]}


def _stacked(v: dict[str, Tensor], src: str, dst: str, parts: str) -> dict[str, Tensor]:
    """Split stacked rows (parts "qkv" or "kv") into {q,k,v}_proj; k_proj gets no bias (a zero one is stored)."""
    weights, biases = v[f"{src}/weight"].chunk(len(parts)), v[f"{src}/bias"].chunk(len(parts))
    out = {}
    for part, weight, bias in zip(parts, weights, biases):
        out[f"{dst}.{part}_proj.weight"] = weight
        if part == "k":
            if bias.any():
                raise ValueError(f"{src}/bias: the k third is not zero, but Whisper's k_proj has no bias")
        else:
            out[f"{dst}.{part}_proj.bias"] = bias
    return out


def _layer_count(v: dict[str, Tensor], side: str) -> int:
    return len({m.group(1) for name in v if (m := re.match(rf"{side}/layer_(\d+)/", name))})


def whisper_state_dict(v: dict[str, Tensor]) -> dict[str, Tensor]:
    """CTranslate2 Whisper variables (`dequantized`) -> WhisperForConditionalGeneration's state dict, in the
    file's dtype. Every key the transformers model has, proj_out.weight included (the file's tied alias)."""
    sd = {"proj_out.weight": v["decoder/projection/weight"],
          "model.decoder.embed_tokens.weight": v["decoder/embeddings/weight"],
          **_linear(v, "encoder/conv1", "model.encoder.conv1"), **_linear(v, "encoder/conv2", "model.encoder.conv2")}
    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        sd.update(_norm(v, f"{side}/layer_norm", f"model.{side}.layer_norm"))
        for i in range(_layer_count(v, side)):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            sd.update(_stacked(v, f"{src}/self_attention/linear_0", f"{dst}.self_attn", "qkv"))
            sd.update(_linear(v, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"))
            sd.update(_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
            if side == "decoder":
                sd.update(_linear(v, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj"))
                sd.update(_stacked(v, f"{src}/attention/linear_1", f"{dst}.encoder_attn", "kv"))
                sd.update(_linear(v, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"))
                sd.update(_norm(v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
            sd.update(_linear(v, f"{src}/ffn/linear_0", f"{dst}.fc1"))
            sd.update(_linear(v, f"{src}/ffn/linear_1", f"{dst}.fc2"))
            sd.update(_norm(v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
    return sd


def whisper_config(v: dict[str, Tensor], folder: Path) -> WhisperConfig:
    """Sizes from the tensors' shapes and the stored head counts; special ids from tokenizer.json; the suppress
    lists from config.json (CTranslate2's names suppress_ids / suppress_ids_begin)."""
    for name, value in WHISPER_FLAGS.items():
        if name in v and int(v[name]) != value:
            raise ValueError(f"{folder / 'model.bin'}: {name} = {int(v[name])}; transformers' Whisper needs {value}")
    d = v["encoder/conv1/weight"].shape[0]
    generation = _read_json(folder / "config.json")
    special = _special_ids(folder / "tokenizer.json")
    return WhisperConfig(
        vocab_size=v["decoder/embeddings/weight"].shape[0], num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d, encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_layers=_layer_count(v, "encoder"), decoder_layers=_layer_count(v, "decoder"),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=special["eos_token_id"], bos_token_id=special["eos_token_id"], **special,
        suppress_tokens=[int(i) for i in generation.get("suppress_ids", [])],
        begin_suppress_tokens=[int(i) for i in generation.get("suppress_ids_begin", [])],
    )


def hf_state_dict_from_ct2(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[WhisperConfig,
                                                                                            dict[str, Tensor]]:
    """A faster-whisper folder (model.bin, config.json, tokenizer.json) -> (WhisperConfig, state dict in dtype)
    for `WhisperForConditionalGeneration(config).load_state_dict(state, strict=True)`."""
    folder = Path(folder)
    variables = _Reads(dequantized(read_ctranslate2(folder / "model.bin")))
    try:
        state = whisper_state_dict(variables)
    except KeyError as err:
        raise ValueError(f"{folder / 'model.bin'}: no variable {err}: not a CTranslate2 Whisper model") from None
    except ValueError as err:  # a stored value transformers' Whisper cannot hold (a k_proj bias)
        raise ValueError(f"{folder / 'model.bin'}: {err}") from None
    config = whisper_config(variables, folder)
    unused = [name for name in variables if name not in variables.read and name not in NOT_WEIGHTS]
    if unused:
        raise ValueError(f"{folder / 'model.bin'}: variables {unused} are not used by the Whisper loader "
                         "(whisper_weights.py): a layout it does not know; refusing rather than loading without them")
    return config, {k: t.to(dtype) for k, t in state.items()}


class _Reads(dict):
    """The variables, remembering which names were read (`v[name]`), so that none is silently left out."""

    def __init__(self, variables: dict[str, Tensor]):
        super().__init__(variables)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> Tensor:
        self.read.add(name)
        return super().__getitem__(name)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a faster-whisper folder holds model.bin, config.json and "
                                "tokenizer.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None


def _special_ids(path: Path) -> dict[str, int]:
    added = {t["content"]: t["id"] for t in _read_json(path).get("added_tokens", [])}
    missing = [token for token in SPECIAL_TOKENS.values() if token not in added]
    if missing:
        raise ValueError(f"{path}: no {missing} among added_tokens: not a Whisper tokenizer")
    return {key: added[token] for key, token in SPECIAL_TOKENS.items()}
