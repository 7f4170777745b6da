"""The scoring normaliser: Whisper's way of writing and AN4's meet in one spelling."""

import pytest

from asr_attention.data.normalise import normalise_for_scoring, words_to_numbers

PAIRS = [  # (AN4 reference, what Whisper tiny.en writes for it)
    ("ERASE C Q Q F SEVEN", " Erase CQQF7"),
    ("RUBOUT G M E F THREE NINE", "RUBOUT G-M-E-F-39."),
    ("ONE THREE SEVEN", " 1-3-7"),
    ("B A O Z FIVE THREE", "B-A-O-Z, 5-3."),
    ("SIXTY FIVE", "65"),
    ("ONE FIVE TWO ONE THREE", "15213"),
    ("FIFTEEN", "1 5"),
    ("GO", "Go!"),
    ("FIVE HUNDRED TWENTY", "520"),
    ("TWO THOUSAND FIVE", "2005"),
    ("OH SEVEN", "0-7"),
]


@pytest.mark.parametrize("reference, hypothesis", PAIRS)
def test_reference_and_whisper_spelling_meet(reference, hypothesis):
    assert normalise_for_scoring(reference) == normalise_for_scoring(hypothesis)


def test_canonical_forms():
    assert normalise_for_scoring(" Erase CQQF7") == "ERASE C Q Q F 7"
    assert normalise_for_scoring("Don't stop.") == "DONT STOP"
    assert normalise_for_scoring("ERASE GMEF") == "ERASE GMEF"  # letters alone stay a word
    assert words_to_numbers("SIXTY FIVE ONE TWO".split()) == ["65", "1", "2"]
    assert words_to_numbers("TWENTY THIRTY".split()) == ["20", "30"]
    assert words_to_numbers("A HUNDRED".split()) == ["A", "HUNDRED"]  # a scale needs a number before it


def test_different_words_stay_different():
    assert normalise_for_scoring("ONE THREE") != normalise_for_scoring("ONE FOUR")
    assert normalise_for_scoring("ERASE") != normalise_for_scoring("RUBOUT")
