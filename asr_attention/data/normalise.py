"""The text normaliser every WER here is scored with, applied to references and hypotheses alike.

AN4 writes what was said in capitals, spelled out: "C Q Q F SEVEN", "G M E F THREE NINE", "SIXTY FIVE".
Whisper writes "CQQF7", "G-M-E-F-39.", "65". Both become the same canonical spelling:
  - case folded to capitals; punctuation becomes a space, apostrophes vanish ("don't" -> DONT);
  - number words become digits ("SIXTY FIVE" -> 65, "FIVE HUNDRED TWENTY" -> 520, OH -> 0);
  - every token holding a digit is read character by character ("CQQF7" -> C Q Q F 7, "65" -> 6 5), so
    "ONE FIVE" and "FIFTEEN" and "15" all read 1 5: how a speaker grouped digits is not a recognition error.
Tokens made only of letters stay words ("ERASE"; an unhyphenated "GMEF" stays one word, not four letters).
"""

from __future__ import annotations

import re

UNITS = {w: i for i, w in enumerate("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split())} | {"OH": 0}
TEENS = {w: 10 + i for i, w in enumerate(
    "TEN ELEVEN TWELVE THIRTEEN FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN".split())}
TENS = {w: 20 + 10 * i for i, w in enumerate("TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split())}
SCALES = {"HUNDRED": 100, "THOUSAND": 1000}
_PUNCTUATION = re.compile(r"[^A-Z0-9' ]")


def words_to_numbers(words: list[str]) -> list[str]:
    """Runs of number words -> digit strings. A unit after a unit starts a new number (digits read one by one);
    after a tens word or a scale it adds to it (SIXTY FIVE, TWO HUNDRED FIVE)."""
    out: list[str] = []
    total = current = 0
    last = None  # kind of the previous number word: unit, teen, tens, scale; None outside a number

    def flush():
        nonlocal total, current, last
        if last is not None:
            out.append(str(total + current))
        total = current = 0
        last = None

    for w in words:
        if w in UNITS or w in TEENS:
            kind, value = ("unit", UNITS[w]) if w in UNITS else ("teen", TEENS[w])
            if not (last == "scale" or (last == "tens" and kind == "unit")):
                flush()
            current += value
            last = kind
        elif w in TENS:
            if last != "scale":
                flush()
            current += TENS[w]
            last = "tens"
        elif w in SCALES and last in ("unit", "teen", "tens"):
            if SCALES[w] == 1000:
                total, current = (total + current) * 1000, 0
            else:
                current *= 100
            last = "scale"
        else:
            flush()
            out.append(w)
    flush()
    return out


def normalise_for_scoring(text: str) -> str:
    text = _PUNCTUATION.sub(" ", text.upper().replace("’", "'")).replace("'", "")
    words = []
    for w in words_to_numbers(text.split()):
        words.extend(w if any(c.isdigit() for c in w) else [w])
    return " ".join(words)
