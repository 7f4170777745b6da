"""Inference speed of a backbone as RTFx: seconds of audio encoded per second of compute."""

from __future__ import annotations

import time

import torch

from ..backbones.eval_mode import eval_mode


@torch.no_grad()
def measure_rtfx(model: torch.nn.Module, waves: torch.Tensor, wave_lengths: torch.Tensor,
                 sample_rate: int = 16000, repeats: int = 3) -> dict:
    cuda = waves.is_cuda
    with eval_mode(model):
        model(waves, wave_lengths)  # warm-up: lazy init, cuDNN autotune
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(waves, wave_lengths)
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
    audio = wave_lengths.sum().item() / sample_rate
    return {"audio_seconds": audio, "compute_seconds": seconds, "rtfx": audio / seconds,
            "batch": waves.shape[0], "device": str(waves.device)}
