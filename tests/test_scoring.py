"""The scoring normalisers: AN4's spelling and Whisper's meet in one canonical form ("an4"), a read prompt and a
cased sentence in Whisper's ("english"); different words stay apart."""

import pytest

from asr_attention.data import read_an4
from asr_attention.data.normalisers import scoring_normaliser
from asr_attention.data.scoring import DIGIT_WORDS, normalise_for_scoring, words_to_digits

PAIRS = [  # (AN4 reference, what Whisper tiny.en wrote for it: benchmarks/whisper_tiny_en_an4_test.tsv)
    ("ERASE C Q Q F SEVEN", " Erase CQQF7"),  # a letter+digit code
    ("RUBOUT G M E F THREE NINE", " Rub out G-M-E-F-39."),  # hyphens, a compound, digits
    ("ONE THREE SEVEN", " 1-3-7"),
    ("ELEVEN TWENTY SEVEN FIFTY SEVEN", " 112757"),  # grouped number words against a digit string
    ("ONE FIFTY", " 150."),
    ("THREE THREE ONE OH ONE EIGHT EIGHT", " 331-0188."),  # OH is zero
    ("TWELVE TWENTY NINE FIFTY NINE", " 1229.59"),
    ("MAY SECOND NINETEEN SIXTY FIVE", " May 2nd, 1965."),  # ordinals, both ways of writing them
    ("JANUARY SEVENTH NINETEEN SIXTY SEVEN", " January 7, 1967."),
    ("NOVEMBER NINTH SIXTY FIVE", " November 9th, 65."),
    ("S Y F C D NINE SIX OH ONE SEVEN", " SYFCD 96017"),  # capitals in a cased text are spelled letters
    ("V A N E S S A", " VANESSA"),
    ("M I C H A E L", " MICH-AEL."),
    ("RUBOUT N S V H T SIX FORTY NINE", " RuboutNSVHT 649"),  # a capital run inside a word
    ("W Y A T U SEVENTY SEVEN SEVENTY SEVEN", " WYATU 7777"),
    ("GO", " Go!"),
]


@pytest.mark.parametrize("reference, hypothesis", PAIRS)
def test_an4_reference_and_whisper_spelling_meet(reference, hypothesis):
    assert normalise_for_scoring(reference) == normalise_for_scoring(hypothesis, cased=True)


def test_canonical_forms():
    assert normalise_for_scoring(" Erase CQQF7", cased=True) == "ERASE C Q Q F SEVEN"
    assert normalise_for_scoring("erase cqqf7") == "ERASE C Q Q F SEVEN"  # a mixed token is a code in any case
    assert normalise_for_scoring("G-M-E-F-39") == "G M E F THREE NINE"
    assert normalise_for_scoring("Don't stop, H&I.") == "DONT STOP H AND I"
    assert normalise_for_scoring("EIGHT HUNDRED AND TWENTY THREE") == "EIGHT TWO THREE"
    assert normalise_for_scoring("TWO THOUSAND FIVE") == "TWO ZERO ZERO FIVE"
    assert normalise_for_scoring("1,000") == normalise_for_scoring("ONE THOUSAND") == "ONE ZERO ZERO ZERO"
    assert normalise_for_scoring("the twenty first of may") == "THE TWO ONE OF MAY"
    assert normalise_for_scoring("21st") == "TWO ONE"
    assert words_to_digits("SIXTY FIVE ONE TWO NINETEEN HUNDRED".split()) == ["65", "1", "2", "1900"]
    assert words_to_digits("TWENTY THIRTY FIFTEEN SIXTY".split()) == ["20", "30", "15", "60"]
    assert words_to_digits("A HUNDRED AND ONE AND".split()) == ["A", "HUNDRED", "AND", "1", "AND"]


def test_uncased_text_keeps_its_words():
    # AN4 and the character CTC models write in capitals only: their words are words, however they look
    assert normalise_for_scoring("VANESSA") == "VANESSA"
    assert normalise_for_scoring("ERASE XAGNA") == "ERASE XAGNA"
    assert normalise_for_scoring("ERASE XAGNA", cased=True) == "E R A S E X A G N A"
    assert normalise_for_scoring("Erase Xagna", cased=True) == "ERASE XAGNA"


def test_different_words_stay_different():
    for a, b in [("ONE THREE", "ONE FOUR"), ("ERASE", "RUBOUT"), ("FIFTEEN", "FIFTY"), ("ONE HUNDRED", "ONE"),
                 ("C Q Q F", "C Q F"), ("ENTER NINE", "ENTER NINETY")]:
        assert normalise_for_scoring(a) != normalise_for_scoring(b), (a, b)


def test_every_an4_transcript_normalises_to_an4_words_and_is_a_fixed_point():
    utts = read_an4("train") + read_an4("test")
    vocabulary = {w for u in utts for w in u.text.split()} | set(DIGIT_WORDS)
    for u in utts:
        canonical = normalise_for_scoring(u.text)
        assert set(canonical.split()) <= vocabulary, u.utt_id
        assert normalise_for_scoring(canonical) == canonical, u.utt_id
    # references that say their digits one by one are left as they are
    assert normalise_for_scoring("SIX FIVE FIVE EIGHT SEVEN FOUR ZERO") == "SIX FIVE FIVE EIGHT SEVEN FOUR ZERO"


# ---- "english": Whisper's standard English normaliser, for the out-of-domain sentences (speechocean762) ---------
SENTENCES = [  # (a speechocean762 prompt, a cased, punctuated transcript of it)
    ("LET'S GO TO THE RESTROOM", "Let's go to the restroom."),  # case, apostrophe, full stop
    ("THE COLOUR OF THE SKY", "The color of the sky!"),  # British and American spelling (english.json)
    ("I HAVE TWENTY FIVE APPLES", "I have 25 apples."),  # numbers spelled out and in digits
    ("MISTER SMITH IS HERE", "Mr. Smith is here,"),
]


@pytest.mark.parametrize("prompt, transcript", SENTENCES)
def test_a_prompt_and_its_transcript_meet_under_the_english_normaliser(prompt, transcript):
    english = scoring_normaliser("english")
    assert english(prompt) == english(transcript, cased=True)


def test_the_english_normaliser_is_whispers_with_its_spelling_map():
    english = scoring_normaliser("english")
    assert english("LET'S GO TO THE RESTROOM") == english("Let's go to the restroom.") == "let us go to the restroom"
    assert english("colour") == english("color") == "color"  # only with whisper-normalizer's english.json
    for a, b in [("WE CALL IT BEAR", "We call it bare."), ("FIFTEEN", "fifty"), ("HE'S HERE", "He is hear")]:
        assert english(a) != english(b), (a, b)
    assert scoring_normaliser("an4") is normalise_for_scoring


def test_a_missing_spelling_map_is_an_error_naming_the_file(monkeypatch):
    from asr_attention.data import sentence_scoring

    monkeypatch.setattr(sentence_scoring, "SPELLING_FILE", "normalizers/missing.json")
    with pytest.raises(FileNotFoundError, match=r"normalizers/missing.json: Whisper's English spelling map is missing"):
        sentence_scoring.spelling_map()


def test_an_unknown_normaliser_is_named():
    with pytest.raises(ValueError, match=r"^--scoring='an5' is not allowed: expected one of an4, english$"):
        scoring_normaliser("an5", "--scoring")
