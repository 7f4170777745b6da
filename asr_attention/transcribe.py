"""Transcribe audio files with a converted model; prints `<file>\\t<text>` per file:

    python -m asr_attention.transcribe outputs/whisper-mla a.wav b.flac           # a run's best checkpoint
    python -m asr_attention.transcribe outputs/whisper-mla test.tsv --jsonl out.jsonl
    python -m asr_attention.transcribe exports/whisper-mla a.wav                  # a folder export_dir= wrote
    python -m asr_attention.transcribe model=whisper attention=mla attention.latent_dim=96 a.wav  # converted now

The model: a run folder (its best checkpoint; --checkpoint last; overrides such as model.decoding.max_tokens=96
apply to its config, run_model.py), a converted model's folder (converted_model.py), or Hydra overrides of
conf/train.yaml, converted now as a training run converts (calibrated on its data's val split), not fine-tuned.
The audio: files soundfile reads (mixed to mono and resampled to 16 kHz, as the datamodule does), or manifests
(.tsv, conf/data/manifest.yaml's format: one line per utterance, printed under its utt_id). Every file is checked
before the model runs: one that is unreadable, empty, or longer than the model reads (Whisper: 30 s; split it
first) stops the command with one line naming it. Decoding is the test step's (module.hypotheses), --batch-size
files at a time in the order given (on a GPU, Whisper decodes through preallocated caches and a CUDA graph kept
between batches: model.decoding.fast, docs/speed.md). Whisper's greedy transcripts do not depend on the batch (each
utterance is padded to its own 30-s window); a CTC model's can, where its front end normalises over the padded
batch, as in the test step's batches. --jsonl writes per file: file, text, audio_seconds, wall_seconds (its share,
by audio seconds, of its batch's time: the model's, the audio loaded already; RTFx = audio_seconds / wall_seconds),
batch_wall_seconds, batch_files, and a manifest line's utt_id and ref. Whisper writes at most
model.decoding.max_tokens text tokens (48) per utterance: raise it (an override) for long speech.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

from .data.audio import SAMPLE_RATE, AudioError, audio_info, load_audio, pad_waves
from .data.manifest import read_manifest
from .training.config_check import validate
from .training.converted_model import META, load_converted
from .training.ctc_module import ASRFineTuner
from .training.experiment import build_datamodule_for, build_tokenizer_and_backbone, calibration_args, convert
from .training.run_model import CONF, apply_overrides, inference_module, load_run


@dataclass
class Audio:
    key: str  # what the output line starts with: the path as given, or a manifest's utt_id
    path: str
    start: float | None = None
    end: float | None = None
    ref: str | None = None
    seconds: float = 0.0


def audio_list(items: list[str]) -> list[Audio]:
    """Files and manifests' lines, each file's header read (an unreadable or empty one raises AudioError naming it)."""
    out = []
    for item in items:
        if item.endswith(".tsv"):
            out += [Audio(u.utt_id, u.path, u.start, u.end, u.text) for u in read_manifest(item)]
        else:
            out.append(Audio(item, item))
    if not out:
        raise ValueError("no audio given: name audio files or a manifest (.tsv) after the model")
    for a in out:
        duration = audio_info(a.path).duration
        a.seconds = min(a.end or duration, duration) - (a.start or 0.0)
    return out


def model_from(source: str | None, overrides: list[str], checkpoint: str) -> ASRFineTuner:
    """A run folder, a converted model's folder (overrides: model.decoding.* only), or (source None)
    conf/train.yaml with overrides, converted now."""
    if source is not None and (Path(source) / META).is_file():
        if bad := [o for o in overrides if not o.startswith("model.decoding.")]:
            raise ValueError(f"{bad}: a converted model folder takes model.decoding.* overrides only")
        cfg, tokenizer, backbone = load_converted(source)
        apply_overrides(cfg, overrides, str(Path(source) / META))
    elif source is not None:
        cfg, tokenizer, backbone = load_run(Path(source), overrides, checkpoint)
    else:
        try:
            with initialize_config_dir(str(CONF), version_base="1.3"):
                cfg = compose("train", overrides=overrides)
        except HydraException as err:  # e.g. an unknown group option; Hydra's message spans lines
            message = " ".join(str(err).split()).split(" Config search path")[0]
            raise ValueError(f"{' '.join(overrides)}: {message}") from None
        validate(cfg)
        L.seed_everything(cfg.seed)
        tokenizer, backbone = build_tokenizer_and_backbone(cfg)
        if cfg.attention.name != "native":
            convert(backbone, cfg.attention, build_datamodule_for(cfg, tokenizer, backbone), **calibration_args(cfg))
    return inference_module(cfg, backbone, tokenizer)


@torch.no_grad()
def transcribe(module: ASRFineTuner, audio: list[Audio], device: str, jsonl: Path | None = None,
               batch_size: int = 16) -> list[dict]:
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be >= 1")
    limit = module.backbone.max_audio_seconds
    for a in audio:  # all checked before any is transcribed
        if limit is not None and a.seconds > limit:
            raise ValueError(f"{a.path}: {a.seconds:.1f} s of audio; this model reads at most {limit:g} s per "
                             "utterance (split it first)")
    module.to(device)
    rows = []
    with open(jsonl, "w") if jsonl else nullcontext() as sink:
        for start in range(0, len(audio), batch_size):
            batch = audio[start: start + batch_size]
            waves, lengths = pad_waves([load_audio(a.path, a.start, a.end) for a in batch])
            began = time.perf_counter()
            texts = module.hypotheses(waves.to(device), lengths.to(device))
            wall = time.perf_counter() - began
            seconds = lengths / SAMPLE_RATE
            for a, text, s in zip(batch, texts, seconds.tolist()):
                row = {"file": a.path, "text": text, "audio_seconds": s,
                       "wall_seconds": wall * s / float(seconds.sum()), "batch_wall_seconds": wall,
                       "batch_files": len(batch)}
                if a.ref is not None:  # a manifest's line
                    row.update(utt_id=a.key, ref=a.ref)
                print(f"{a.key}\t{text}", flush=True)
                if sink is not None:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asr_attention.transcribe", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="[run folder | converted model folder | key=value ...] audio...")
    parser.add_argument("--jsonl", type=Path, default=None, help="also write one JSON line per file here")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="of a run folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16, help="files decoded together (default 16)")
    args = parser.parse_intermixed_args(argv)  # options may come between the overrides
    overrides = [i for i in args.inputs if "=" in i and not Path(i).exists()]
    rest = [i for i in args.inputs if i not in overrides]
    source = rest.pop(0) if rest and Path(rest[0]).is_dir() else None
    try:
        if source is None and not overrides:
            raise ValueError(f"name the model first: a run folder, a converted model folder, or model=... "
                             f"attention=... ({args.inputs[0]} is none of them)")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size {args.batch_size}: must be >= 1")
        audio = audio_list(rest)  # an unreadable file fails here, before the model loads
        transcribe(model_from(source, overrides, args.checkpoint), audio, args.device, args.jsonl, args.batch_size)
    except (ValueError, OSError, AudioError) as err:  # a user's error: one line naming the file or field
        sys.exit(f"transcribe: {err}")


if __name__ == "__main__":
    main()
