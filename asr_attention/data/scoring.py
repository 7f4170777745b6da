"""The text normaliser every WER is scored with, applied alike to references and hypotheses of every model.

AN4 writes what was said in capitals, one spoken word per word: "ERASE C Q Q F SEVEN", "RUBOUT G M E F THREE
NINE", "ELEVEN TWENTY SEVEN", "MAY SECOND". Whisper writes "Erase CQQF7", "Rub out G-M-E-F-39.", "11:27",
"May 2nd". Both sides become one canonical spelling, so that only recognition errors count, not ways of writing:

  - case folded to capitals; apostrophes vanish ("don't" -> DONT); "&" is AND; every other mark separates;
  - numbers, in words or digits, become their digit string read digit by digit in words: "39", "THREE NINE"
    and "THIRTY NINE" all read THREE NINE; "11:27" and "ELEVEN TWENTY SEVEN" read ONE ONE TWO SEVEN. How a
    speaker grouped digits ("ONE FIFTY" or "ONE FIVE ZERO") is a way of writing, not a recognition error.
    OH is the digit ZERO (AN4 uses OH for nothing else);
  - ordinals are their numbers: "2nd", "SECOND" -> TWO, "TWENTY FIRST" -> TWO ONE (dates are written "May 2"
    or "May 2nd" for the spoken "MAY SECOND"), so an ordinal/cardinal confusion is not counted either;
  - a token mixing letters and digits is a code, spelled out character by character ("CQQF7" -> C Q Q F SEVEN);
  - in a cased text (`cased=True`: Whisper's output), a run of 2+ capitals is an initialism or a spelled
    sequence and is spelled out ("SYFCD", "VANESSA", "RuboutNSVHT" -> ... N S V H T). An uncased text (AN4's
    references, the character CTC models here) says nothing by its case, and its words stay words;
  - COMPOUNDS join words the corpus writes as one ("RUB OUT" -> RUBOUT).
The canonical forms change some references' word counts (ELEVEN -> ONE ONE): WERs scored here are over the
normalised references; results keep the raw WER beside them.
"""

from __future__ import annotations

import re

DIGIT_WORDS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
UNITS = {w: i for i, w in enumerate(DIGIT_WORDS)} | {"OH": 0}
TEENS = {w: 10 + i for i, w in enumerate(
    "TEN ELEVEN TWELVE THIRTEEN FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN".split())}
TENS = {w: 10 * i for i, w in enumerate("TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split(), start=2)}
SCALES = {"HUNDRED": 100, "THOUSAND": 1000}
NUMBER_WORDS = UNITS.keys() | TEENS.keys() | TENS.keys()
ORDINALS = {"FIRST": "ONE", "SECOND": "TWO", "THIRD": "THREE", "FIFTH": "FIVE", "EIGHTH": "EIGHT", "NINTH": "NINE",
            "TWELFTH": "TWELVE", **{w + "TH": w for w in ("FOUR", "SIX", "SEVEN", "HUNDRED", "THOUSAND", *TEENS)
                                   if w != "TWELVE"}, **{w[:-1] + "IETH": w for w in TENS}}
COMPOUNDS = {("RUB", "OUT"): "RUBOUT"}  # AN4's editing command, which Whisper writes as two words

_CAPITAL_RUNS = re.compile(r"[A-Z]{2,}")
_APOSTROPHES = re.compile(r"['’‘`]")
_DIGIT_ORDINAL = re.compile(r"([0-9]+)(?:ST|ND|RD|TH)")
_SEPARATORS = re.compile(r"[^A-Z0-9]+")  # after upper-casing: anything but letters and digits splits words
_RUNS = re.compile(r"[A-Z]+|[0-9]+")


def spell_digits(digits: str) -> list[str]:
    return [DIGIT_WORDS[int(c)] for c in digits]


def words_to_digits(words: list[str]) -> list[str]:
    """Runs of number words -> digit strings (other words pass through). A unit or teen after a unit or teen
    starts a new number (ONE FIVE -> 1, 5); a unit completes a tens word (SIXTY FIVE -> 65); HUNDRED and
    THOUSAND scale the number before them (NINETEEN HUNDRED -> 1900, TWO THOUSAND FIVE -> 2005), and an AND
    after them continues the number (EIGHT HUNDRED AND TWENTY -> 820)."""
    out: list[str] = []
    total, current, last = 0, 0, None  # last: kind of the previous number word, None outside a number

    def flush() -> None:
        nonlocal total, current, last
        if last is not None:
            out.append(str(total + current))
        total, current, last = 0, 0, None

    for i, word in enumerate(words):
        if word == "AND" and last == "scale" and i + 1 < len(words) and words[i + 1] in NUMBER_WORDS:
            continue  # EIGHT HUNDRED AND TWENTY: the AND belongs to the number
        if word in UNITS:
            if last not in ("tens", "scale"):
                flush()
            current, last = current + UNITS[word], "unit"
        elif word in TEENS:
            if last != "scale":
                flush()
            current, last = current + TEENS[word], "teen"
        elif word in TENS:
            if last != "scale" or current % 100:
                flush()
            current, last = current + TENS[word], "tens"
        elif word in SCALES and last in ("unit", "teen", "tens"):
            if SCALES[word] == 1000:
                total, current = (total + current) * 1000, 0
            else:
                current *= 100
            last = "scale"
        else:
            flush()
            out.append(word)
    flush()
    return out


def _join_compounds(words: list[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        if out and (out[-1], word) in COMPOUNDS:
            out[-1] = COMPOUNDS[(out[-1], word)]
        else:
            out.append(word)
    return out


def _spell(token: str) -> list[str]:
    """One token (letters and digits only) -> its canonical words."""
    runs = _RUNS.findall(token)
    if len(runs) > 1:  # letters and digits mixed: a code, spelled character by character
        return [w for run in runs for w in (spell_digits(run) if run.isdigit() else list(run))]
    return spell_digits(token) if token.isdigit() else [token]


def normalise_for_scoring(text: str, cased: bool = False) -> str:
    """Any transcript -> the canonical spelling (see the module docstring). cased: the text is written in upper
    and lower case (Whisper's output), so capitals mark initialisms and spelled letters."""
    if cased:
        text = _CAPITAL_RUNS.sub(lambda run: " " + " ".join(run.group()) + " ", text)
    text = _APOSTROPHES.sub("", text.upper()).replace("&", " AND ")
    tokens = [_DIGIT_ORDINAL.fullmatch(t)[1] if _DIGIT_ORDINAL.fullmatch(t) else t for t in _SEPARATORS.split(text)]
    words = [ORDINALS.get(w, w) for w in _join_compounds([t for t in tokens if t])]
    return " ".join(w for token in words_to_digits(words) for w in _spell(token))
