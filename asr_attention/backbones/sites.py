"""The kinds of attention site each family has, and which of them a config's attention.sites converts.

Three kinds share one variant interface (DESIGN.md): encoder self-attention, decoder self-attention (cached token
by token), cross-attention (K/V of another sequence, cached once per utterance). The adapters know their sites;
config checks and reports ask here.
"""

from __future__ import annotations

from typing import Any

SITE_KINDS = {"whisper": ("encoder", "decoder_self", "cross")}  # other families: encoder self-attention only
DEFAULT_SITES = {"whisper": ("decoder_self", "cross")}  # attention.sites=null: the two caches that exist at inference


def model_site_kinds(family: str, head: str | None = None) -> tuple[str, ...]:
    """The kinds of attention site a model has: a CTC head reads the encoder alone (Whisper's decoder is dropped)."""
    return ("encoder",) if head == "ctc" else SITE_KINDS.get(family, ("encoder",))


def site_kinds(sites: Any, family: str, head: str | None = None) -> tuple[str, ...]:
    """The kinds of site a valid attention.sites converts: null is the model's default, 'all' every kind."""
    kinds = model_site_kinds(family, head)
    if sites == "all" or list(sites or []) == ["all"]:
        return kinds
    chosen = tuple(sites or (DEFAULT_SITES.get(family, ("encoder",)) if head != "ctc" else kinds))
    return tuple(k for k in kinds if k in chosen)
