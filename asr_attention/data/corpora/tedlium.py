"""TED-LIUM 2 layout: `<root>/<split>/stm/<talk>.stm` and `<root>/<split>/sph/<talk>.sph` (NIST SPHERE, which
soundfile reads). Splits: train, dev, test.

stm line: `talk channel speaker start end [<label>] text...`. Segments are cut from the talk's sph by
start/end. Dropped: `;;` comments and `ignore_time_segment_in_scoring` lines (not transcribed). Text, as
Kaldi's TED-LIUM recipe prepares it: `<unk>`-style tokens are removed, pronunciation variants lose their marker
("the(2)" -> "the", Kaldi's `s:([0-9])::g`; the digit would otherwise become a character target), and split
contractions are re-joined ("it 's" -> "it's", join_suffix), so the character targets look like ordinary words.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..manifest import Utterance

_ANGLE_TOKEN = re.compile(r"<[^>]*>")
_VARIANT_MARK = re.compile(r"\(\d+\)")
_SPLIT_SUFFIX = re.compile(r" '")


def clean_tedlium_text(text: str) -> str:
    text = _VARIANT_MARK.sub("", _ANGLE_TOKEN.sub(" ", text))
    text = " ".join(text.split())
    return _SPLIT_SUFFIX.sub("'", text)


LAYOUT = ("data.root is the release folder (e.g. .../TEDLIUM_release2) holding train/, dev/ and test/, each with "
          "stm/<talk>.stm and sph/<talk>.sph")


def check_tedlium(split: str, root: str | Path) -> None:
    """`<root>/<split>/stm` is a folder (cheap: no file is read)."""
    stm_dir = Path(root) / split / "stm"
    if not stm_dir.is_dir():
        raise FileNotFoundError(f"TED-LIUM split {split!r} not found: {stm_dir} is not a folder. {LAYOUT}.")


def read_tedlium(split: str, root: str | Path) -> list[Utterance]:
    check_tedlium(split, root)
    base = Path(root) / split
    stm_dir = base / "stm"
    out = []
    for stm in sorted(stm_dir.glob("*.stm")):
        for n, line in enumerate(stm.read_text().splitlines(), start=1):
            if not line.strip() or line.startswith(";;"):
                continue
            fields = line.split()
            if len(fields) < 5:
                raise ValueError(f"{stm} line {n}: expected 'talk channel speaker start end [label] text'")
            talk, _channel, speaker, start, end = fields[:5]
            words = fields[5:]
            if words and words[0].startswith("<") and words[0].endswith(">"):
                words = words[1:]  # the <o,f0,male> condition label
            raw = " ".join(words)
            if raw.strip() == "ignore_time_segment_in_scoring":
                continue
            text = clean_tedlium_text(raw)
            if not text:
                continue  # nothing left to learn from once <unk> etc. are removed
            t0, t1 = float(start), float(end)
            out.append(Utterance(
                utt_id=f"{speaker}-{round(t0 * 100):07d}-{round(t1 * 100):07d}",
                path=str(base / "sph" / f"{talk}.sph"), text=text, duration=t1 - t0, speaker=speaker,
                start=t0, end=t1))
    return out
