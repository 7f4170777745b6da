"""Whisper's log-mel front end in torch, batched and on the model's device: the same numbers as
`WhisperFeatureExtractor` (tested), which runs per utterance on the host."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.audio_utils import mel_filter_bank

N_FFT, HOP, SAMPLE_RATE = 400, 160, 16_000


class LogMel(nn.Module):
    """waves (B, S) at 16 kHz -> (B, mels, frames): each utterance zero-padded to the window (30 s = 3000 frames),
    log10 power mel, floored at its max - 8, scaled to about [-1, 1]."""

    def __init__(self, mels: int = 80, frames: int = 3000):
        super().__init__()
        self.frames = frames
        filters = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=mels, min_frequency=0.0,
                                  max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                                  mel_scale="slaney")
        self.register_buffer("filters", torch.from_numpy(filters).float().T, persistent=False)  # (mels, freqs)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, waves: Tensor, wave_lengths: Tensor) -> Tensor:
        samples = self.frames * HOP
        if waves.shape[1] > samples:
            raise ValueError(f"Whisper reads at most {samples / SAMPLE_RATE:g} s per utterance; got "
                             f"{waves.shape[1] / SAMPLE_RATE:g} s (split longer audio)")
        valid = torch.arange(waves.shape[1], device=waves.device)[None] < wave_lengths[:, None]
        padded = torch.nn.functional.pad((waves * valid).float(), (0, samples - waves.shape[1]))
        stft = torch.stft(padded, N_FFT, HOP, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2  # the extractor drops the last frame
        log_spec = (self.filters @ power).clamp_min(1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log_spec + 4.0) / 4.0
