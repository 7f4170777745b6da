"""One utterance per row: the common currency between corpus readers and the datamodule.

Readers turn a corpus layout into `Utterance`s; a manifest TSV stores them so any corpus can be prepared once
and read back (or hand-written for a new corpus) without another reader.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Column order of a manifest TSV. start/end are empty for whole-file utterances.
COLUMNS = ("utt_id", "path", "speaker", "text", "duration", "start", "end")
FORMAT = ("a tab-separated file with a header row: utt_id, path (audio; relative to the manifest's folder), "
          "text, duration (seconds), and optionally speaker, start, end (seconds, to cut a segment)")


@dataclass
class Utterance:
    """One transcribed stretch of audio.

    `path` is absolute once read. `start`/`end` (seconds) cut a segment out of a longer file (TED-LIUM);
    None means the whole file. `duration` (seconds) drives bucketing and the `max_duration` filter.
    """

    utt_id: str
    path: str
    text: str
    duration: float
    speaker: str
    start: float | None = None
    end: float | None = None


def check_unique_ids(utterances: list[Utterance], where: str) -> None:
    """Within a split an utt_id names one utterance (predictions, skipped-file records and the encoder-output store
    go by it): a repeated one is an error naming `where` (the split) and the ids."""
    repeated = {u: n for u, n in Counter(u.utt_id for u in utterances).items() if n > 1}
    if repeated:
        shown = ", ".join(f"{u!r} ({n} rows)" for u, n in list(repeated.items())[:5])
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise ValueError(f"{where}: repeated utt_id {shown}{more}; each utterance of a split needs its own utt_id "
                         "(rename or remove the duplicates)")


def write_manifest(utterances: list[Utterance], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(COLUMNS)
        for u in utterances:
            w.writerow([u.utt_id, u.path, u.speaker, u.text, f"{u.duration:.3f}",
                        "" if u.start is None else f"{u.start:.3f}", "" if u.end is None else f"{u.end:.3f}"])


def check_manifest(path: str | Path) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"manifest not found: {path}. Expected {FORMAT}.")


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a manifest TSV; relative audio paths are resolved against the manifest's folder.

    Only utt_id, path, text and duration are required columns (speaker defaults to the utt_id).
    """
    path = Path(path)
    check_manifest(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"))
    missing = {"utt_id", "path", "text", "duration"} - set(rows[0].keys() if rows else ())
    if rows and missing:
        raise ValueError(f"manifest {path}: missing columns {sorted(missing)}. Expected {FORMAT}.")
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            duration = float(r["duration"])
        except ValueError:
            raise ValueError(f"manifest {path} line {i}: duration {r['duration']!r} is not a number") from None
        audio = Path(r["path"])
        out.append(Utterance(
            utt_id=r["utt_id"], path=str(audio if audio.is_absolute() else path.parent / audio),
            text=r["text"], duration=duration, speaker=r.get("speaker") or r["utt_id"],
            start=float(r["start"]) if r.get("start") else None, end=float(r["end"]) if r.get("end") else None))
    return out
