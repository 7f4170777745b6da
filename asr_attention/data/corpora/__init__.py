"""Corpus readers: each turns a corpus layout (or a manifest TSV) into a list of `Utterance`."""

from __future__ import annotations

from pathlib import Path

from ..manifest import Utterance, read_manifest
from .an4 import AN4_VAL_SPEAKERS, VENDORED_ROOT, read_an4
from .librispeech import read_librispeech
from .tedlium import read_tedlium

CORPORA = ("an4", "librispeech", "tedlium2", "manifest")


def read_corpus(corpus: str, root: str | Path | None, split: str,
                val_speakers: list[str] | tuple[str, ...] | None = None) -> list[Utterance]:
    """Utterances of one split. `root=None` is only allowed for AN4 (the vendored copy).

    corpus "manifest": `split` is a manifest TSV path, relative to `root` if root is given.
    `val_speakers` (AN4 only) overrides the held-out speakers of the `val` split.
    """
    if corpus == "an4":
        return read_an4(split, root, val_speakers or AN4_VAL_SPEAKERS)
    if corpus == "manifest":
        return read_manifest(Path(root) / split if root is not None else Path(split))
    if corpus not in CORPORA:
        raise ValueError(f"data.corpus {corpus!r}: allowed {CORPORA}")
    if root is None:
        raise ValueError(f"data.root is null: corpus {corpus!r} needs the folder that holds it "
                         "(only an4 has a vendored default)")
    if corpus == "librispeech":
        return read_librispeech(split, root)
    return read_tedlium(split, root)


__all__ = ["AN4_VAL_SPEAKERS", "CORPORA", "VENDORED_ROOT", "read_an4", "read_corpus", "read_librispeech",
           "read_tedlium"]
