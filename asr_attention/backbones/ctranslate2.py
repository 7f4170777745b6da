"""Read a CTranslate2 `model.bin` (binary version 6: what faster-whisper folders hold) into named tensors.

Layout, little-endian. A string is a u16 length that counts a trailing NUL, the bytes, then that NUL.
  u32 version (6) | string spec name | u32 spec revision | u32 variable count
  per variable: string name | u8 rank | rank x u32 dims | u8 dtype code | u32 byte count | the raw bytes
  u32 alias count | per alias: string alias | string target name
Aliases (e.g. a tied output projection) resolve to the very tensor of their target.
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
    return CTranslate2Model(spec, revision, variables, aliases)


def read_model_bin(path: str | Path) -> dict[str, Tensor]:
    """Every variable of model.bin by name, aliases resolved, in the file's dtypes."""
    return read_ctranslate2(path).variables

