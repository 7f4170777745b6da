"""What the decoding loop never lets a token decoder choose: logit filters, applied to each step's logits before
greedy, sampling or beam search picks from them (Whisper's suppress lists, text only, no timestamps)."""

from __future__ import annotations

import torch
from torch import Tensor

from asr_attention.backbones.whisper.tokens import WhisperTokens


class LogitFilter:
    def apply(self, logits: Tensor, step: int) -> Tensor:
        """logits (rows, V) of the `step`-th emitted token (0: the first) -> the same with barred tokens at -inf."""
        raise NotImplementedError

    def always_bars(self, token: int) -> bool:
        """Whether `token` is barred at every step (then, for <|endoftext|>, no row can end early)."""
        return False


class SuppressTokens(LogitFilter):
    """Tokens never emitted: the checkpoint's suppress list, and every special token but <|endoftext|>."""

    def __init__(self, barred: Tensor):
        self.barred = barred

    def apply(self, logits: Tensor, step: int) -> Tensor:
        return logits.masked_fill(self.barred, float("-inf"))

    def always_bars(self, token: int) -> bool:
        return bool(self.barred[token])


class SuppressAtBegin(LogitFilter):
    """Tokens barred as the first token only: the checkpoint's begin-suppress list (a bare space, or stopping at
    once)."""

    def __init__(self, barred: Tensor):
        self.barred = barred

    def apply(self, logits: Tensor, step: int) -> Tensor:
        return logits.masked_fill(self.barred, float("-inf")) if step == 0 else logits


def suppress_mask(tokens: WhisperTokens, vocab: int, device) -> tuple[Tensor, Tensor]:
    """(never, first): the tokens never emitted, and those barred as the first token (never's too)."""
    never = torch.zeros(vocab, dtype=torch.bool, device=device)
    never[[i for i in tokens.suppress if i < vocab]] = True
    never[tokens.eot + 1:] = True
    first = never.clone()
    first[[i for i in tokens.suppress_begin if i < vocab]] = True
    return never, first


def whisper_filters(tokens: WhisperTokens, vocab: int, device) -> list[LogitFilter]:
    never, first = suppress_mask(tokens, vocab, device)
    return [SuppressTokens(never), SuppressAtBegin(first & ~never)]
