"""Whisper's standard English normaliser, for corpora of sentences (speechocean762): transformers'
`EnglishTextNormalizer` (OpenAI's normaliser, the one Whisper's published English WERs are scored with) with its
British-to-American spelling map, `english.json`, as the whisper-normalizer package ships it.

It lower-cases, expands contractions ("let's" -> "let us"), writes numbers as digits ("twenty five" -> "25"),
standardises spellings ("colour" -> "color") and drops punctuation and fillers, so a cased, punctuated Whisper
transcript and an upper-case prompt with its numbers spelled out read alike. AN4's spelled letters and digit
strings need the project's own normaliser instead (scoring.py).
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files

SPELLING_PACKAGE, SPELLING_FILE = "whisper_normalizer", "normalizers/english.json"


def spelling_map() -> dict[str, str]:
    """British -> American spellings (1,739 of them in whisper-normalizer 0.1.15). A missing file is an error naming
    it: without the map, "colour" and "color" would silently count as different words."""
    path = files(SPELLING_PACKAGE).joinpath(SPELLING_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Whisper's English spelling map is missing (pip install "
                                f"whisper-normalizer==0.1.15, a dependency of this package)")
    return json.loads(path.read_text())


@cache
def _normaliser():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(spelling_map())


def normalise_english(text: str, cased: bool = False) -> str:
    """Any English transcript -> Whisper's normal form (lower case, words separated by single spaces). `cased` is
    accepted for the scoring interface (data/normalisers.py) and changes nothing: case is folded either way."""
    return " ".join(_normaliser()(text).split())
