"""How many text tokens Whisper's decoder may emit: model.decoding.max_tokens, or by default the model's own limit
(its target positions less the prompt); a smaller limit cuts longer transcripts, so it is a warning and each cut
utterance is recorded (`Hypothesis.truncated`)."""

from __future__ import annotations

import logging
from dataclasses import replace

from asr_attention.backbones.whisper.adapter import Whisper

log = logging.getLogger(__name__)


def model_token_limit(backbone: Whisper) -> int:
    """The most text tokens the decoder can take: its target positions (448 in every Whisper) less the prompt."""
    return backbone.model.config.max_target_positions - len(backbone.tokens.prompt)


def token_limit(backbone: Whisper, max_tokens: int | None) -> int:
    """model.decoding.max_tokens, checked against the model's limit; None: that limit."""
    limit = model_token_limit(backbone)
    if max_tokens is None:
        return limit
    if not 1 <= max_tokens <= limit:
        raise ValueError(f"model.decoding.max_tokens={max_tokens}: must be 1..{limit} (this model's "
                         f"{backbone.model.config.max_target_positions} target positions less the prompt), or null "
                         "for that limit")
    return max_tokens


def with_token_limit(backbone: Whisper, options):
    """DecodingOptions with max_tokens resolved (`token_limit`); a limit below the model's is a warning."""
    max_tokens = token_limit(backbone, options.max_tokens)
    if max_tokens < model_token_limit(backbone):
        log.warning("model.decoding.max_tokens=%d is below this model's limit (%d): longer transcripts are cut "
                    "(results.json lists each cut utterance); null uses the model's limit", max_tokens,
                    model_token_limit(backbone))
    return replace(options, max_tokens=max_tokens)
