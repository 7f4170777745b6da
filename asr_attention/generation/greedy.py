"""Greedy decoding (temperature 0) and sampling (above 0): one row per utterance, the most likely token or one
drawn from the softmax at that temperature. A row that emitted <|endoftext|> keeps emitting it."""

from __future__ import annotations

import torch
from torch import Tensor

from .token_decoder import Candidate, TokenDecoder


class GreedyDecoder(TokenDecoder):
    rows_per_utterance = 1

    def __init__(self, eot: int, temperature: float = 0.0, generator: torch.Generator | None = None):
        self.eot, self.temperature, self.generator = eot, temperature, generator
        self.sum_logprob: Tensor | None = None
        self.done: Tensor | None = None
        self.prompt = 0

    def reset(self, rows: int, prompt: int, device) -> None:
        self.prompt = prompt
        self.sum_logprob = torch.zeros(rows, device=device)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)

    def update(self, tokens: Tensor, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.temperature > 0:
            next_token = torch.multinomial((logits / self.temperature).softmax(-1), 1, generator=self.generator)
            next_token = next_token.squeeze(1)
        else:
            next_token = logits.argmax(-1)
        next_token = next_token.masked_fill(self.done, self.eot)
        logprob = logits.log_softmax(-1).gather(1, next_token[:, None]).squeeze(1)
        self.sum_logprob += logprob.masked_fill(self.done, 0.0)
        self.done |= next_token == self.eot
        return torch.cat((tokens, next_token[:, None]), dim=1), None

    def completed(self) -> bool:
        return bool(self.done.all())

    def done_flag(self) -> Tensor | None:
        # sampling draws from the generator at every step: a step after the end would change later draws
        return self.done.all() if self.temperature == 0 else None

    def narrow(self, rows: Tensor) -> None:
        """Keep these rows only, in this order (compaction.py)."""
        self.sum_logprob, self.done = self.sum_logprob.index_select(0, rows), self.done.index_select(0, rows)

    def finalize(self, tokens: Tensor) -> list[Candidate]:
        return [Candidate.of(row, logprob, self.eot)
                for row, logprob in zip(tokens[:, self.prompt:].tolist(), self.sum_logprob.tolist())]
