"""Has every row of a decode ended? The decoding loop asks after each step. Reading the answer on the host waits for
the GPU to finish that step, so the host cannot queue the next one meanwhile: at small batches that wait is most of
a step (the step itself is one CUDA-graph replay).

On CUDA, for a token decoder with an on-device flag (greedy, temperature 0), each step's flag is copied to pinned
host memory behind an event and read once the copy has landed, never waiting: the loop stops a step or two after
the last row ended. The extra steps change nothing a caller sees: a row that ended keeps emitting <|endoftext|>,
adds nothing to its log-probability, and its text ends at its first <|endoftext|>. Sampling keeps the blocking read:
an extra step would draw from the random generator and change what a later temperature draws."""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

from .token_decoder import TokenDecoder


class BlockingStop:
    """The decoder's own answer, read on the host at every step."""

    def __init__(self, decoder: TokenDecoder):
        self.decoder = decoder

    def __call__(self, step: int) -> bool:
        return self.decoder.completed()


class LaggedStop:
    """Each step's on-device flag sent to the host without waiting; True once a landed flag says every row ended."""

    def __init__(self, decoder: TokenDecoder, steps: int):
        self.decoder = decoder
        self.host = self.buffer(steps)
        self.pending: deque = deque()

    def buffer(self, steps: int) -> Tensor:
        return torch.zeros(steps, dtype=torch.bool, pin_memory=True)  # a non_blocking copy lands in pinned memory

    def __call__(self, step: int) -> bool:
        self.pending.append((step, self.send(self.decoder.done_flag(), step)))
        while self.pending and self.landed(self.pending[0][1]):
            sent, _ = self.pending.popleft()
            if self.host[sent]:
                return True
        return False

    def send(self, flag: Tensor, step: int):
        self.host[step].copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return event

    def landed(self, event) -> bool:
        return event.query()


def stop_check(decoder: TokenDecoder, device: torch.device, steps: int):
    """The lagged check where it is exact and pays (CUDA, a decoder with an on-device flag), else the blocking one."""
    if device.type == "cuda" and decoder.done_flag() is not None:
        return LaggedStop(decoder, steps)
    return BlockingStop(decoder)
