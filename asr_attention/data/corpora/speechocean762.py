"""speechocean762 (Zhang et al., Interspeech 2021; Apache-2.0): 600 read English sentences by 125 non-native
speakers, vendored in `asr_attention/data/speechocean762_corpus/` (LICENSE.md there). An evaluation set only: its
one split, `test`, is what a run is also tested on out of domain (model.ood_test); there is nothing to train,
validate or calibrate on, so no other split exists.
"""

from __future__ import annotations

from pathlib import Path

from ..manifest import Utterance, read_manifest

VENDORED_ROOT = Path(__file__).resolve().parent.parent / "speechocean762_corpus"
MANIFEST = "manifest.tsv"
SPLITS = ("test",)
SCORING = "english"  # sentences with contractions and numbers: Whisper's English normaliser (data/normalisers.py)


def check_speechocean762(split: str, root: str | Path | None = None) -> Path:
    """The split is `test` and `<root>/manifest.tsv` exists (cheap: not read); returns its path."""
    if split not in SPLITS:
        raise ValueError(f"speechocean762 split {split!r}: allowed {SPLITS} (an evaluation set only: never trained, "
                         f"validated or calibrated on)")
    tsv = (Path(root) if root is not None else VENDORED_ROOT) / MANIFEST
    if not tsv.is_file():
        raise FileNotFoundError(f"speechocean762 manifest not found: {tsv}. Expected {MANIFEST} (the project's "
                                f"manifest format) in data.root; data.root=null uses the vendored copy.")
    return tsv


def read_speechocean762(split: str, root: str | Path | None = None) -> list[Utterance]:
    return read_manifest(check_speechocean762(split, root))
