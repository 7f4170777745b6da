"""AN4 (CMU census database), vendored in `asr_attention/data/an4_corpus/` with its license.

Splits: `train` (948 utterances, 74 speakers) and `test` (130, 10 other speakers) as published, and `val`:
the utterances of `AN4_VAL_SPEAKERS`, 8 train speakers held out for model selection (so it is a *subset* of
`train`; the datamodule removes val speakers from train, keeping val, train and test speaker-disjoint).
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..manifest import Utterance

VENDORED_ROOT = Path(__file__).resolve().parent.parent / "an4_corpus"

# Fixed, so results are comparable across runs: 2 female + 6 male (test has 3 f / 7 m), spread over the
# alphabet of speaker ids; 103 utterances (10.9 % of train, 4.3 min).
AN4_VAL_SPEAKERS = ("fejs", "fsaf2", "mblw", "mdxn", "mjgk", "mmsh", "mrcb", "mtje")

SPLITS = ("train", "val", "test")


def check_an4(split: str, root: str | Path | None = None) -> Path:
    """The split is one of AN4's and `<root>/transcripts.tsv` exists (cheap: not read); returns its path."""
    if split not in SPLITS:
        raise ValueError(f"AN4 split {split!r}: allowed {SPLITS}")
    tsv = (Path(root) if root is not None else VENDORED_ROOT) / "transcripts.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"AN4 transcripts not found: {tsv}. Expected transcripts.tsv (columns utt_id, "
                                f"path, speaker, text, split, duration_s) in data.root; data.root=null uses the "
                                f"vendored copy.")
    return tsv


def read_an4(split: str, root: str | Path | None = None,
             val_speakers: tuple[str, ...] | list[str] = AN4_VAL_SPEAKERS) -> list[Utterance]:
    """Read `<root>/transcripts.tsv` (columns utt_id, path, speaker, text, split, duration_s)."""
    tsv = check_an4(split, root)
    root = tsv.parent
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    wanted = "train" if split == "val" else split
    out = []
    for r in rows:
        if r["split"] != wanted or (split == "val" and r["speaker"] not in val_speakers):
            continue
        out.append(Utterance(utt_id=r["utt_id"], path=str(root / r["path"]), text=r["text"],
                             duration=float(r["duration_s"]), speaker=r["speaker"]))
    return out
