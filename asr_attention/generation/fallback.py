"""Whisper's temperature fallback as a policy: a transcript that loops (its gzip compression ratio above 2.4) or
is improbable (its mean token log-probability below -1) is decoded again by sampling at the next temperature
(0.2, 0.4, ...); the last attempt is kept if none passes."""

from __future__ import annotations

import zlib
from dataclasses import dataclass


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(len(zlib.compress(data)), 1)


@dataclass(frozen=True)
class TemperatureFallback:
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0

    def needs_fallback(self, compression: float, avg_logprob: float) -> bool:
        return compression > self.compression_ratio_threshold or avg_logprob < self.logprob_threshold

    @property
    def retries(self) -> tuple[float, ...]:
        """The temperatures after the first (greedy, or beam search), in order."""
        return self.temperatures[1:]
