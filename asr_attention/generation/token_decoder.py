"""What the decoding loop asks of a token decoder (a token selection strategy: greedy.py, beam.py), and the
hypothesis it hands back per utterance."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Candidate:
    """An utterance's decoded text tokens (before <|endoftext|>), their summed log-probability (<|endoftext|>'s
    included) and whether <|endoftext|> came before the token limit."""

    tokens: list[int]
    sum_logprob: float
    finished: bool

    @classmethod
    def of(cls, emitted: list[int], sum_logprob: float, eot: int) -> "Candidate":
        if eot in emitted:
            return cls(emitted[: emitted.index(eot)], sum_logprob, True)
        return cls(emitted, sum_logprob, False)

    @property
    def avg_logprob(self) -> float:
        """Whisper's mean log-probability (what the fallback policy reads): per text token plus one, also where
        the limit came before <|endoftext|>."""
        return self.sum_logprob / (len(self.tokens) + 1)


class TokenDecoder:
    """rows_per_utterance: the rows the loop feeds per utterance (beams). Per decode: reset(rows, prompt, device)
    (prompt: the tokens each row starts with), then each step update(tokens, logits) -> (tokens grown by the chosen
    token, the rows whose caches the new rows continue, or None where each row continues its own); completed()
    once every utterance is done (a host read: the loop asks only where a row can end; done_flag() the same on the
    device, see stop_check.py); finalize(tokens) -> one
    Candidate per utterance."""

    rows_per_utterance: int

    def reset(self, rows: int, prompt: int, device) -> None:
        raise NotImplementedError

    def update(self, tokens: Tensor, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def completed(self) -> bool:
        raise NotImplementedError

    def done_flag(self) -> Tensor | None:
        """completed() as a 0-dim bool tensor on the device, where the decoder can say it without a host read and
        a step after the end changes nothing (stop_check.py); None: ask completed()."""
        return None

    def finalize(self, tokens: Tensor) -> list[Candidate]:
        raise NotImplementedError
