"""Corpus readers: each turns a corpus layout (or a manifest TSV) into a list of `Utterance`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..manifest import Utterance, check_manifest, read_manifest
from .an4 import AN4_VAL_SPEAKERS, VENDORED_ROOT, check_an4, read_an4
from .librispeech import LAYOUT as LIBRISPEECH_LAYOUT
from .librispeech import check_librispeech, read_librispeech
from . import speechocean762
from .speechocean762 import check_speechocean762, read_speechocean762
from .tedlium import LAYOUT as TEDLIUM_LAYOUT
from .tedlium import check_tedlium, read_tedlium

CORPORA = ("an4", "librispeech", "tedlium2", "manifest", "speechocean762")
VENDORED = ("an4", "speechocean762")  # shipped inside the package: data.root=null reads them
# Evaluation-only corpora a run may also be tested on out of domain (model.ood_test; never trained, calibrated or
# selected on), each with the scoring normaliser its references need (data/normalisers.py).
OOD_SETS = {"speechocean762": speechocean762.SCORING}


def _manifest_path(root: str | Path | None, split: str) -> Path:
    return Path(root) / split if root is not None else Path(split)


def _check_root(corpus: str, root: str | Path | None) -> None:
    if corpus not in CORPORA:
        raise ValueError(f"data.corpus {corpus!r}: allowed {CORPORA}")
    layout = {"librispeech": LIBRISPEECH_LAYOUT, "tedlium2": TEDLIUM_LAYOUT}.get(corpus)
    if root is None and layout:
        raise ValueError(f"data.root is null: data={corpus} needs its folder (only {' and '.join(VENDORED)} have a "
                         f"vendored copy). "
                         f"{layout}.")
    if root is not None and not Path(root).is_dir():
        raise FileNotFoundError(f"data.root={root}: no such folder" + (f". {layout}." if layout else ""))


def check_split(corpus: str, root: str | Path | None, split: str) -> None:
    """Cheap: the split is where its reader will look (nothing is read). Raises naming the folder or file and
    what was expected there."""
    _check_root(corpus, root)
    if corpus == "an4":
        check_an4(split, root)
    elif corpus == "librispeech":
        check_librispeech(split, root)
    elif corpus == "tedlium2":
        check_tedlium(split, root)
    elif corpus == "speechocean762":
        check_speechocean762(split, root)
    else:
        check_manifest(_manifest_path(root, split))


def check_splits(data: Mapping) -> None:
    """check_split for the train, val and test splits of a `data` config node, before any model loads."""
    for part in ("train", "val", "test"):
        check_split(data.get("corpus", "an4"), data.get("root"), data.get(f"{part}_split", part))


def read_corpus(corpus: str, root: str | Path | None, split: str,
                val_speakers: list[str] | tuple[str, ...] | None = None) -> list[Utterance]:
    """Utterances of one split. `root=None` reads the vendored copy of AN4 or speechocean762; for "manifest", the
    split's path alone.

    corpus "manifest": `split` is a manifest TSV path, relative to `root` if root is given.
    `val_speakers` (AN4 only) overrides the held-out speakers of the `val` split.
    """
    _check_root(corpus, root)
    if corpus == "an4":
        return read_an4(split, root, val_speakers or AN4_VAL_SPEAKERS)
    if corpus == "manifest":
        return read_manifest(_manifest_path(root, split))
    if corpus == "librispeech":
        return read_librispeech(split, root)
    if corpus == "speechocean762":
        return read_speechocean762(split, root)
    return read_tedlium(split, root)


__all__ = ["AN4_VAL_SPEAKERS", "CORPORA", "OOD_SETS", "VENDORED", "VENDORED_ROOT", "check_split", "check_splits",
           "read_an4", "read_corpus", "read_librispeech", "read_speechocean762", "read_tedlium"]
