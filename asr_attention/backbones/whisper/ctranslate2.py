"""Read a CTranslate2 `model.bin` (binary version 6: what faster-whisper folders hold) into named tensors.

Layout, little-endian. A string is a u16 length that counts a trailing NUL, the bytes, then that NUL.
  u32 version (6) | string spec name | u32 spec revision | u32 variable count
  per variable: string name | u8 rank | rank x u32 dims | u8 dtype code | u32 byte count | the raw bytes
  u32 alias count | per alias: string alias | string target name
Aliases (e.g. a tied output projection) resolve to the very tensor of their target.

Quantised files (`ct2-transformers-converter --quantization ...`) store each quantisable weight (a linear or an
embedding matrix) as integers beside a `<name>_scale` variable; `dequantized` turns them back into float32:
  int8 (int8, int8_float16, int8_bfloat16, int8_float32): one float32 scale per output row, 127 / max|row| (127 for
      a row of zeros); stored round(weight * scale[row]) as int8
  int16: one scale for the whole matrix, 2^10 / max|weight|; stored round(weight * scale) as int16
so weight = stored / scale, row by row.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

VERSION = 6
DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}


class CTranslate2FormatError(ValueError):
    """model.bin is not a file this reader understands; the message names the file and the place."""


@dataclass
class CTranslate2Model:
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, Tensor]  # aliases included, each the same tensor object as its target
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> target
    path: Path | None = None  # the file it was read from, for error messages


class _Cursor:
    """Reads the file front to back; every short read is a truncation error naming the file and offset."""

    def __init__(self, path: Path):
        self.path = path
        self.data = bytearray(path.read_bytes())  # writable, so tensors can view it without a copy per variable
        self.at = 0

    def fail(self, what: str) -> CTranslate2FormatError:
        return CTranslate2FormatError(f"{self.path}: {what}")

    def bytes(self, n: int, what: str) -> memoryview:
        if self.at + n > len(self.data):
            raise self.fail(f"truncated: {what} needs {n} bytes at offset {self.at}, the file has {len(self.data)}")
        view = memoryview(self.data)[self.at:self.at + n]
        self.at += n
        return view

    def number(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.bytes(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.bytes(self.number("H", f"{what} length"), what)
        if len(raw) == 0 or raw[-1] != 0:
            raise self.fail(f"{what} at offset {self.at - len(raw)} does not end in NUL")
        return bytes(raw[:-1]).decode("utf-8")


def read_ctranslate2(path: str | Path) -> CTranslate2Model:
    """Parse model.bin at `path`; errors (CTranslate2FormatError) name the file and what is wrong where."""
    cur = _Cursor(Path(path))
    version = cur.number("I", "binary version")
    if version != VERSION:
        raise cur.fail(f"CTranslate2 binary version {version}, this reader reads version {VERSION} "
                       "(is it a CTranslate2 model.bin?)")
    spec = cur.string("spec name")
    revision = cur.number("I", "spec revision")
    variables: dict[str, Tensor] = {}
    for _ in range(cur.number("I", "variable count")):
        name = cur.string("variable name")
        shape = [cur.number("I", f"{name!r} dims") for _ in range(cur.number("B", f"{name!r} rank"))]
        code = cur.number("B", f"{name!r} dtype")
        if code not in DTYPES:
            raise cur.fail(f"variable {name!r} has dtype code {code}; known codes: {DTYPES}")
        dtype = DTYPES[code]
        size = cur.number("I", f"{name!r} byte count")
        expected = math.prod(shape) * dtype.itemsize
        if size != expected:
            raise cur.fail(f"variable {name!r}: {size} bytes stored, shape {shape} of {dtype} needs {expected}")
        raw = cur.bytes(size, f"variable {name!r} data")
        variables[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape) if size else torch.empty(shape, dtype=dtype)
    aliases = {}
    for _ in range(cur.number("I", "alias count")):
        alias, target = cur.string("alias name"), cur.string("alias target")
        if target not in variables:
            raise cur.fail(f"alias {alias!r} points at {target!r}, which is not a variable of the file")
        aliases[alias] = target
        variables[alias] = variables[target]
    if cur.at != len(cur.data):
        raise cur.fail(f"{len(cur.data) - cur.at} unread bytes after the aliases (offset {cur.at})")
    return CTranslate2Model(spec, revision, variables, aliases, cur.path)


def read_model_bin(path: str | Path) -> dict[str, Tensor]:
    """Every variable of model.bin by name, aliases resolved, in the file's dtypes."""
    return read_ctranslate2(path).variables


SCALE = "_scale"


def dequantized(model: CTranslate2Model) -> dict[str, Tensor]:
    """The variables with every quantised weight back in float32 (see the module's docstring) and the scales
    consumed (left out); aliases resolve to the dequantised tensors. A scale with no integer tensor beside it, a
    scale of the wrong shape, or an integer `.../weight` with no scale is an error naming the file and variable."""
    def fail(what: str) -> CTranslate2FormatError:
        return CTranslate2FormatError(f"{model.path}: {what}")

    out = {name: t for name, t in model.variables.items() if name not in model.aliases}
    for name in [n for n in out if n.endswith(SCALE)]:
        scale, base = out.pop(name), name[:-len(SCALE)]
        weight = out.get(base)
        if weight is None or weight.is_floating_point():
            raise fail(f"variable {name!r} scales {base!r}, which is "
                       f"{'not in the file' if weight is None else f'{weight.dtype}, not quantised'}")
        if scale.shape not in ((), weight.shape[:1]):
            raise fail(f"variable {name!r} has shape {list(scale.shape)}: a scale of {base!r} "
                       f"{list(weight.shape)} is one number or one per row ({weight.shape[0]})")
        rows = scale.float().reshape(scale.shape + (1,) * (weight.dim() - scale.dim()))
        out[base] = weight.float() / rows
    unscaled = [n for n, t in out.items() if n.endswith("/weight") and not t.is_floating_point()]
    if unscaled:
        raise fail(f"variable {unscaled[0]!r} is {out[unscaled[0]].dtype} with no {unscaled[0] + SCALE!r}: "
                   "a quantised weight without its scale")
    for alias, target in model.aliases.items():
        out[alias] = out[target]
    return out
