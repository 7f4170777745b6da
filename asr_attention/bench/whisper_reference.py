"""Whisper tiny.en or base (the pinned packages' weights) on AN4 test through transformers' own `generate`: the
reference transcripts that the scoring normaliser is measured on, and a cross-check for any other decoder of the
model.

    python -m asr_attention.bench.whisper_reference --decode   # decode (CPU, a few minutes) -> the TSV, then score it
    python -m asr_attention.bench.whisper_reference            # score the committed TSV with the current normaliser
    python -m asr_attention.bench.whisper_reference --model whisper_base --decode   # base: its own TSV

Decoding: greedy, without timestamps, config.json's suppress lists, at most MAX_NEW_TOKENS tokens, no temperature
fallback (a looping utterance shows as a long insertion). tiny.en starts from [<|startoftranscript|>,
<|notimestamps|>]; base (multilingual) from the prompt transformers builds for language="en", task="transcribe".
WER is printed three ways: raw (texts as written), case and punctuation only (data.text.normalise), and the
scoring normaliser (references uncased, hypotheses cased).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import jiwer

from asr_attention.backbones.whisper.tokens import LANGUAGE, MULTILINGUAL_VOCAB, TASK
from asr_attention.data import SAMPLE_RATE, Utterance, load_audio, normalise, read_an4
from asr_attention.data.scoring import normalise_for_scoring

MODELS = {"whisper": "tiny.en", "whisper_base": "base"}  # --model (as model= names it) -> the packaged size
MAX_NEW_TOKENS = 96
BATCH = 16


def tsv_of(size: str) -> Path:
    return Path(__file__).resolve().parents[2] / "benchmarks" / f"whisper_{size.replace('.', '_')}_an4_test.tsv"


TSV = tsv_of("tiny.en")


def load_tiny_en():
    return load_packaged("tiny.en")


def load_packaged(size: str):
    """(WhisperForConditionalGeneration in eval mode, its `tokenizers.Tokenizer`) from the pinned package(s) of
    `size` (tiny.en, base)."""
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    from asr_attention.backbones.whisper.packages import package_folder
    from asr_attention.backbones.whisper.weights import hf_state_dict_from_ct2

    folder = package_folder(size)
    config, state = hf_state_dict_from_ct2(folder)
    model = WhisperForConditionalGeneration(config).eval()
    model.load_state_dict(state, strict=True)
    return model, Tokenizer.from_file(str(folder / "tokenizer.json"))


def transcribe(model, tokenizer, utts: list[Utterance]) -> list[str]:
    """Greedy transcripts of the utterances, as the model writes them, in batches of BATCH."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor()  # tiny.en's and base's: 80 mels, 16 kHz, padded to 30 s
    texts = []
    for start in range(0, len(utts), BATCH):
        batch = utts[start:start + BATCH]
        features = extractor([load_audio(u.path).numpy() for u in batch], sampling_rate=SAMPLE_RATE,
                             return_tensors="pt").input_features
        texts += generate(model, tokenizer, len(batch), input_features=features)
    return texts


def generate(model, tokenizer, rows: int, **inputs) -> list[str]:
    """transformers' `generate` on `rows` utterances (inputs: input_features, or encoder_outputs): greedy without
    timestamps under the checkpoint's suppress lists, at most MAX_NEW_TOKENS. English-only: from
    [<|startoftranscript|>, <|notimestamps|>], given; multilingual: language="en", task="transcribe", from which
    transformers builds the prompt itself (so our prompt is checked against its, not copied)."""
    import torch
    from transformers import GenerationConfig

    config = model.config
    no_timestamps = tokenizer.token_to_id("<|notimestamps|>")
    if config.vocab_size >= MULTILINGUAL_VOCAB:
        # Whisper's generate reads these as attributes: given to the constructor (`update` drops unknown names)
        prompt, language = {}, dict(
            is_multilingual=True, language="en", task="transcribe", return_timestamps=False,
            no_timestamps_token_id=no_timestamps, lang_to_id={LANGUAGE: tokenizer.token_to_id(LANGUAGE)},
            task_to_id={"transcribe": tokenizer.token_to_id(TASK), "translate": tokenizer.token_to_id("<|translate|>")})
    else:
        prompt = {"decoder_input_ids": torch.tensor([[config.decoder_start_token_id, no_timestamps]] * rows)}
        language = {}
    generation = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.eos_token_id, suppress_tokens=config.suppress_tokens,
        begin_suppress_tokens=config.begin_suppress_tokens, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
        num_beams=1, **language)
    with torch.inference_mode():
        out = model.generate(**inputs, **prompt, generation_config=generation)
    # ids below <|endoftext|> are text: drops the prompt, <|endoftext|> and the padding after it
    return [tokenizer.decode([i for i in ids if i < config.eos_token_id]) for ids in out.tolist()]


def decode(split: str = "test", size: str = "tiny.en") -> list[dict]:
    model, tokenizer = load_packaged(size)
    utts = read_an4(split)
    texts = transcribe(model, tokenizer, utts)
    return [{"utt_id": u.utt_id, "reference": u.text, "hypothesis": t} for u, t in zip(utts, texts)]


def write(rows: list[dict], path: Path = TSV) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["utt_id", "reference", "hypothesis"], delimiter="\t",
                                quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read(path: Path = TSV) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no transcripts yet; run `python -m asr_attention.bench.whisper_reference "
                                "--decode`")
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def scored(row: dict) -> tuple[str, str]:
    """The reference (uncased AN4) and the hypothesis (cased: Whisper writes initialisms in capitals), normalised."""
    return normalise_for_scoring(row["reference"]), normalise_for_scoring(row["hypothesis"], cased=True)


def wers(rows: list[dict]) -> dict[str, float]:
    """WER in percent: raw (as written), case and punctuation folded on both sides, the scoring normaliser."""
    pairs = {"raw": [(r["reference"].strip(), r["hypothesis"].strip()) for r in rows],
             "case_and_punctuation": [(normalise(r["reference"]), normalise(r["hypothesis"])) for r in rows],
             "scoring_normaliser": [scored(r) for r in rows]}
    return {name: 100 * jiwer.wer([ref for ref, _ in p], [hyp for _, hyp in p]) for name, p in pairs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MODELS), default="whisper",
                        help="whisper (tiny.en, the default) or whisper_base (base), as model= names them")
    parser.add_argument("--decode", action="store_true", help="decode AN4 test again and rewrite the model's TSV "
                                                              f"({TSV.name} for tiny.en)")
    parser.add_argument("--errors", action="store_true", help="list the utterances still wrong after normalising")
    args = parser.parse_args(argv)
    path = tsv_of(MODELS[args.model])
    if args.decode:
        write(decode(size=MODELS[args.model]), path)
    rows = read(path)
    for name, wer in wers(rows).items():
        print(f"{name:22s} WER {wer:6.2f} %  ({len(rows)} utterances)")
    if args.errors:
        for r in rows:
            ref, hyp = scored(r)
            if ref != hyp:
                print(f"{r['utt_id']}\n  ref {ref}\n  hyp {hyp}   <- {r['hypothesis']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
