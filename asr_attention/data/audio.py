"""Audio loading: soundfile for I/O (torchaudio 2.11's load/info need torchcodec), torchaudio for resampling.

Always returns what every backbone here consumes: a float32 mono 1-D tensor at 16 kHz. Any failure raises
`AudioError` naming the file and the reason, so callers can skip or fail fast with a useful message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000


class AudioError(Exception):
    """A file that cannot give audio: unreadable, corrupt, empty, a segment outside the file, or longer than the
    model reads. `reason` is what a skip records; `hint`, if any, what to do (in the message only)."""

    def __init__(self, path: str, reason: str, hint: str = ""):
        super().__init__(f"{path}: {reason}" + (f"; {hint}" if hint else ""))
        self.path = str(path)
        self.reason = reason


@dataclass
class AudioInfo:
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str) -> AudioInfo:
    """Read only the header (cheap): used to pre-validate a corpus and to get durations."""
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/OSError depending on the failure
        raise AudioError(path, f"unreadable ({type(e).__name__}: {e})") from e
    if info.frames <= 0:
        raise AudioError(path, "empty (0 samples)")
    return AudioInfo(info.samplerate, info.frames, info.channels)


def check_length(path: str, seconds: float, max_seconds: float | None) -> None:
    """AudioError if `seconds` of audio are more than the model reads per utterance (Whisper: its 30-s window)."""
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(path, f"{seconds:.2f} s long, over the {max_seconds:g} s the model reads per utterance",
                         "split it, or set data.on_bad_audio=skip to skip such files (counted in results.json)")


def load_audio(path: str, start: float | None = None, end: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Load `path` (optionally the [start, end) seconds segment) as float32 mono at `sample_rate`."""
    info = audio_info(path)
    first = 0 if start is None else int(round(start * info.sample_rate))
    last = info.frames if end is None else min(int(round(end * info.sample_rate)), info.frames)
    if first >= last:
        raise AudioError(path, f"empty segment [{start}, {end}] s in a {info.duration:.2f} s file")
    try:
        data, sr = sf.read(str(path), start=first, stop=last, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(path, f"cannot decode ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise AudioError(path, "empty (0 samples decoded)")
    if not np.isfinite(data).all():
        raise AudioError(path, "corrupt (non-finite samples)")
    # (frames, channels) -> mono by channel mean, in float32
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    wave = torch.from_numpy(np.ascontiguousarray(mono))
    if sr != sample_rate:
        wave = AF.resample(wave, sr, sample_rate)
    return wave.contiguous()


def audio_digest(wave: torch.Tensor) -> str:
    """What identifies a loaded waveform: a hash of its samples (cheap next to reading the file). The encoder-output
    store keys on it, so an utterance is never given the stored output of other audio that shares its utt_id."""
    return hashlib.blake2b(wave.contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def pad_waves(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D waves -> (B, longest) zero-padded float32 and their lengths (B,), as the datamodule's batches."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    out = torch.zeros(len(waves), int(lengths.max()) if waves else 0)
    for i, w in enumerate(waves):
        out[i, : len(w)] = w
    return out, lengths
