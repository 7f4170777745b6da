"""Dataset of (waveform, token ids, utt_id, text, audio id) and the padding collate.

A file that fails to load, or holds more than `max_seconds` (the model's limit, e.g. Whisper's 30-s window),
does not crash the epoch: with on_bad_audio="skip" the item becomes a `Skipped` record (and a warning names the
path); `collate` drops it from the batch and passes the record on in `batch["skipped"]`, so the datamodule can
count it even when loading ran in a worker process. With "error" it raises `AudioError` naming the file.
"""

from __future__ import annotations

import warnings
from typing import Literal, NamedTuple

import torch

from .audio import SAMPLE_RATE, AudioError, audio_digest, check_length, load_audio
from .manifest import Utterance

BadAudioPolicy = Literal["skip", "error"]


class BadAudioWarning(UserWarning):
    """An audio file was skipped (its path and the reason are in the message)."""


class Example(NamedTuple):
    wave: torch.Tensor      # (S,) float32, 16 kHz mono
    targets: torch.Tensor   # (L,) int64 token ids
    utt_id: str
    text: str               # normalised transcript (the WER reference)
    audio_id: str           # hash of `wave` (audio_digest): tells apart audio that shares an utt_id


class Skipped(NamedTuple):
    utt_id: str
    path: str
    reason: str


def warn_skipped(s: Skipped) -> None:
    warnings.warn(f"skipping utterance {s.utt_id}: audio {s.path}: {s.reason}", BadAudioWarning, stacklevel=2)


class ASRDataset(torch.utils.data.Dataset):
    def __init__(self, utterances: list[Utterance], targets: list[list[int]], texts: list[str],
                 on_bad_audio: BadAudioPolicy = "skip", sample_rate: int = SAMPLE_RATE,
                 max_seconds: float | None = None):
        if on_bad_audio not in ("skip", "error"):
            raise ValueError(f"on_bad_audio {on_bad_audio!r}: allowed 'skip' or 'error'")
        assert len(utterances) == len(targets) == len(texts)
        self.utterances, self.targets, self.texts = utterances, targets, texts
        self.on_bad_audio = on_bad_audio
        self.sample_rate, self.max_seconds = sample_rate, max_seconds

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def durations(self) -> list[float]:
        return [u.duration for u in self.utterances]

    def __getitem__(self, i: int) -> Example | Skipped:
        u = self.utterances[i]
        try:
            wave = load_audio(u.path, u.start, u.end, self.sample_rate)
            check_length(u.path, wave.numel() / self.sample_rate, self.max_seconds)
        except AudioError as e:
            if self.on_bad_audio == "error":
                raise
            skipped = Skipped(u.utt_id, u.path, e.reason)
            warn_skipped(skipped)
            return skipped
        return Example(wave, torch.tensor(self.targets[i], dtype=torch.long), u.utt_id, self.texts[i],
                       audio_digest(wave))


def collate(items: list[Example | Skipped], target_pad: int = -100) -> dict:
    """Pad a batch. waves (B, S) zero-padded float32, wave_lengths (B,), targets (B, L) padded with
    `target_pad` (-100: HF's convention; torch ctc_loss ignores positions past target_lengths),
    target_lengths (B,), utt_ids, texts, audio_ids (each wave's audio_digest), skipped (records of items
    dropped). B may be 0 if all failed.
    """
    good = [x for x in items if isinstance(x, Example)]
    skipped = [dict(x._asdict()) for x in items if isinstance(x, Skipped)]
    b = len(good)
    wave_lengths = torch.tensor([x.wave.numel() for x in good], dtype=torch.long)
    target_lengths = torch.tensor([x.targets.numel() for x in good], dtype=torch.long)
    waves = torch.zeros(b, int(wave_lengths.max()) if b else 0)
    targets = torch.full((b, int(target_lengths.max()) if b else 0), target_pad, dtype=torch.long)
    for k, x in enumerate(good):
        waves[k, : x.wave.numel()] = x.wave
        targets[k, : x.targets.numel()] = x.targets
    return {"waves": waves, "wave_lengths": wave_lengths, "targets": targets, "target_lengths": target_lengths,
            "utt_ids": [x.utt_id for x in good], "texts": [x.text for x in good],
            "audio_ids": [x.audio_id for x in good], "skipped": skipped}
