"""LibriSpeech directory layout: `<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`, each line
`<utt_id> <TEXT>`, audio `<utt_id>.flac` beside it. A split may join subsets with '+'
(`train-clean-100+train-clean-360`). Durations come from the FLAC headers (cheap); a file whose header
cannot be read gets duration 0 and is reported by the datamodule's audio check, not here.
"""

from __future__ import annotations

from pathlib import Path

from ..audio import AudioError, audio_info
from ..manifest import Utterance


LAYOUT = ("data.root is the folder that holds the subsets (e.g. .../LibriSpeech, with train-clean-100/, "
          "dev-clean/, test-clean/), each laid out as <subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt "
          "with the <utt_id>.flac files beside it")


def check_librispeech(split: str, root: str | Path) -> None:
    """Each '+'-joined subset of `split` is a folder under `root` (cheap: no file is read)."""
    for subset in split.split("+"):
        base = Path(root) / subset
        if not base.is_dir():
            raise FileNotFoundError(f"LibriSpeech subset {subset!r} not found: {base} is not a folder. {LAYOUT}.")


def read_librispeech(split: str, root: str | Path) -> list[Utterance]:
    check_librispeech(split, root)
    out = []
    for subset in split.split("+"):
        base = Path(root) / subset
        transcripts = sorted(base.glob("*/*/*.trans.txt"))
        if not transcripts:
            raise FileNotFoundError(f"LibriSpeech subset {subset!r}: no <speaker>/<chapter>/*.trans.txt under "
                                    f"{base}. {LAYOUT}.")
        for trans in transcripts:
            speaker = trans.parent.parent.name
            for line in trans.read_text().splitlines():
                if not line.strip():
                    continue
                utt_id, _, text = line.strip().partition(" ")
                audio = trans.parent / f"{utt_id}.flac"
                try:
                    duration = audio_info(str(audio)).duration
                except AudioError:
                    duration = 0.0
                out.append(Utterance(utt_id=utt_id, path=str(audio), text=text, duration=duration,
                                     speaker=speaker))
    return out
