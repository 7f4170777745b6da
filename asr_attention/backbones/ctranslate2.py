"""CTranslate2 `model.bin` (binary version 6, what faster-whisper folders hold) -> tensors -> transformers' Whisper
state dict.

File layout (little-endian): u32 version, string spec name, u32 revision, u32 variable count; per variable:
string name, u8 rank, rank x u32 dims, u8 dtype, u32 byte count, the raw data; then u32 alias count and (alias,
target) string pairs. A string is a u16 length counting a trailing NUL, the bytes, the NUL.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch
from torch import Tensor

DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
VERSION = 6


class _Reader:
    def __init__(self, path: Path):
        self.path, self.data, self.at = path, path.read_bytes(), 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError(f"{self.path}: truncated at byte {self.at} (wanted {n} more of {len(self.data)})")
        chunk = self.data[self.at: self.at + n]
        self.at += n
        return chunk

    def u(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.u("H"))[:-1].decode()


def read_model_bin(path: str | Path) -> dict[str, Tensor]:
    """Every variable by name (aliases point at their target's tensor), in the file's dtype."""
    r = _Reader(Path(path))
    version = r.u("I")
    if version != VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader knows version {VERSION}")
    r.string(), r.u("I")  # spec name ("WhisperSpec"), its revision
    variables = {}
    for _ in range(r.u("I")):
        name = r.string()
        shape = [r.u("I") for _ in range(r.u("B"))]
        code = r.u("B")
        if code not in DTYPES:
            raise ValueError(f"{path}: variable {name!r} has unknown dtype code {code}")
        raw = r.take(r.u("I"))
        variables[name] = torch.frombuffer(bytearray(raw), dtype=DTYPES[code]).reshape(shape)
    for _ in range(r.u("I")):
        alias, target = r.string(), r.string()
        variables[alias] = variables[target]
    return variables


def _linear(v: dict, src: str, dst: str, bias: bool = True) -> dict[str, Tensor]:
    out = {f"{dst}.weight": v[f"{src}/weight"]}
    if bias:
        out[f"{dst}.bias"] = v[f"{src}/bias"]
    return out


def _norm(v: dict, src: str, dst: str) -> dict[str, Tensor]:
    return {f"{dst}.weight": v[f"{src}/gamma"], f"{dst}.bias": v[f"{src}/beta"]}


def _attention(v: dict, src: str, dst: str, fused: str, d: int) -> dict[str, Tensor]:
    """Stacked [q; k; v] (self) or [k; v] (cross) rows -> separate projections. k has no bias in Whisper (its
    third of the stacked bias is zero) and none in transformers' module."""
    names = ["q", "k", "v"] if fused == "qkv" else ["k", "v"]
    weights = v[f"{src}/weight"].split(d)
    biases = v[f"{src}/bias"].split(d)
    out = {}
    for n, w, b in zip(names, weights, biases):
        out[f"{dst}.{n}_proj.weight"] = w
        if n != "k":
            out[f"{dst}.{n}_proj.bias"] = b
    return out


def whisper_state_dict(v: dict[str, Tensor]) -> dict[str, Tensor]:
    """CTranslate2 Whisper names -> transformers `WhisperForConditionalGeneration` names (proj_out is tied to
    decoder.embed_tokens, so it is left out)."""
    d = v["encoder/conv1/weight"].shape[0]
    sd = {**_linear(v, "encoder/conv1", "model.encoder.conv1"), **_linear(v, "encoder/conv2", "model.encoder.conv2"),
          "model.decoder.embed_tokens.weight": v["decoder/embeddings/weight"]}
    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        sd.update(_norm(v, f"{side}/layer_norm", f"model.{side}.layer_norm"))
        i = 0
        while f"{side}/layer_{i}/self_attention/linear_0/weight" in v:
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            sd.update(_attention(v, f"{src}/self_attention/linear_0", f"{dst}.self_attn", "qkv", d))
            sd.update(_linear(v, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"))
            sd.update(_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
            if side == "decoder":
                sd.update(_linear(v, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj"))
                sd.update(_attention(v, f"{src}/attention/linear_1", f"{dst}.encoder_attn", "kv", d))
                sd.update(_linear(v, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"))
                sd.update(_norm(v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
            sd.update(_linear(v, f"{src}/ffn/linear_0", f"{dst}.fc1"))
            sd.update(_linear(v, f"{src}/ffn/linear_1", f"{dst}.fc2"))
            sd.update(_norm(v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
            i += 1
    return sd
