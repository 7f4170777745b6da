"""The scoring normalisers by name: what a WER's references and hypotheses are both put through before they are
compared (the module scores with `ASRFineTuner.scoring`; results.json records the name beside each test set).

  "an4"      the project's (scoring.py): spelled letters and digit strings in one canonical spelling; every
             model's test on AN4 (and the in-domain corpora) is scored with it;
  "english"  Whisper's standard English normaliser (sentence_scoring.py), for sentences: the out-of-domain set.
"""

from __future__ import annotations

from collections.abc import Callable

from .scoring import normalise_for_scoring
from .sentence_scoring import normalise_english

Normaliser = Callable[..., str]  # (text, cased=False) -> normal form; cased: the text is a cased hypothesis
NORMALISERS: dict[str, Normaliser] = {"an4": normalise_for_scoring, "english": normalise_english}


def scoring_normaliser(name: str, field: str = "scoring") -> Normaliser:
    if name not in NORMALISERS:
        raise ValueError(f"{field}={name!r} is not allowed: expected one of {', '.join(NORMALISERS)}")
    return NORMALISERS[name]
