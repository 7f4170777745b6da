"""Test a trained run's converted, fine-tuned model on any corpus or manifest:

    python -m asr_attention.evaluate outputs/whisper-mla                      # the run's own test split again
    python -m asr_attention.evaluate outputs/whisper-mla data=manifest data.root=/data/mine data.test_split=test.tsv
    python -m asr_attention.evaluate outputs/whisper-mla data=librispeech data.root=/data/LibriSpeech \\
        data.test_split=test-other --unconverted --before trainer.accelerator=gpu

The model is the run's (its .hydra/config.yaml, run_model.py), with the weights of its best checkpoint
(--checkpoint last: checkpoints/last.ckpt). Hydra-style overrides change the test data (`data=<conf/data group>`,
`data.<field>=...`; only the test split is read) or how it runs (`trainer.accelerator=cpu`,
`model.decoding.max_tokens=96`), never the model. --unconverted also tests the model before conversion, --before
the converted one before fine-tuning (converted again as the run did: calibrated on the run's own val split).
Scoring is the run's test step's: the same numbers as its results.json for the same checkpoint and data. A test
utterance longer than the model reads (Whisper: 30 s) stops it before any test, naming the file.

Writes <run folder>/eval/<name>.json (name: --name, else from the data: corpus, test split, limit): each phase's
metrics keyed as results.json keys them (unconverted, before, after: test_wer, test_cer, test_raw_wer, ...), every
utterance's prediction (predictions: after; before_predictions, unconverted_predictions), the files skipped, the
checkpoint and data used. The run's results.json is never touched. The same command again measures again and
replaces that file, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from .data.audio import AudioError
from .data.corpora import check_split
from .data.datamodule import ASRDataModule, build_datamodule
from .runs.code_version import code_version
from .training.ctc_module import ASRFineTuner
from .training.experiment import build_datamodule_for, calibration_args, convert, patch_structure
from .training.run_model import (
    checkpoint_file,
    inference_module,
    load_weights,
    run_config,
    run_latent_dims,
    unconverted_model,
)


def eval_name(data: DictConfig) -> str:
    """e.g. an4-test, librispeech-test-other, manifest-mine-test (a manifest's folder and file), + -first20."""
    split = data.test_split
    parts = [data.corpus]
    if data.corpus == "manifest":
        parts += [Path(data.root).name] if data.root else []
        split = Path(split).stem
    parts.append(split)
    if data.get("limit_test"):
        parts.append(f"first{data.limit_test}")
    return re.sub(r"[^\w.+-]+", "_", "-".join(parts))


def eval_trainer(cfg: DictConfig) -> L.Trainer:
    """The run's trainer settings (accelerator, precision, batch limits) on one device: every rank would test the
    whole split anyway (the datamodule does not shard it). No logger, no checkpoints."""
    return hydra.utils.instantiate(cfg.trainer, devices=1, num_nodes=1, strategy="auto", logger=False,
                                   callbacks=[], enable_checkpointing=False)


def test(trainer: L.Trainer, module: ASRFineTuner, data: ASRDataModule, prefix: str) -> dict:
    """The test step's metrics, keyed as results.json keys them (test_wer, test_cer, ...)."""
    module.test_prefix = prefix
    (metrics,) = trainer.test(module, datamodule=data)
    return {"test" + k.removeprefix(prefix): v for k, v in metrics.items()}


def evaluate(run_dir: Path, overrides: list[str], checkpoint: str = "best", name: str | None = None,
             unconverted: bool = False, before: bool = False) -> Path:
    start = time.time()
    cfg = run_config(run_dir, overrides)
    check_split(cfg.data.corpus, cfg.data.root, cfg.data.test_split)  # before any model loads
    ckpt = checkpoint_file(run_dir, checkpoint)
    name = name or eval_name(cfg.data)
    if not re.fullmatch(r"[\w.+-]+", name):
        raise ValueError(f"--name {name!r}: use letters, digits and . _ + - only")
    out = run_dir / "eval" / f"{name}.json"
    if out.exists():
        print(f"{out} holds an earlier evaluation: measuring again, it will be replaced", flush=True)
    L.seed_everything(cfg.seed, workers=True)  # as the run: the same decoding fallback draws
    tokenizer, backbone = unconverted_model(run_dir, cfg)
    module = inference_module(cfg, backbone, tokenizer)
    data = build_datamodule(cfg.data, tokenizer)
    data.setup("test")
    limit = backbone.max_audio_seconds
    if limit is not None and (long := [u for u in data.datasets["test"].utterances if u.duration > limit]):
        raise ValueError(f"{long[0].path}: {long[0].duration:.1f} s of audio; this model reads at most {limit:g} s "
                         f"per utterance ({len(long)} test utterances are longer: leave them out of the test split)")
    trainer = eval_trainer(cfg)
    report = {"run": str(run_dir), "checkpoint": str(ckpt), "overrides": overrides,
              "data": OmegaConf.to_container(cfg.data), "utterances": len(data.datasets["test"])}
    if unconverted:
        report["unconverted"] = test(trainer, module, data, "unconverted_test")
        report["unconverted_predictions"] = module.last_predictions
    if before:  # converted as the run converted it, from its own val split
        if cfg.attention.name != "native":
            own = run_config(run_dir)
            convert(backbone, cfg.attention, build_datamodule_for(own, tokenizer, backbone), **calibration_args(own))
        report["before"] = test(trainer, module, data, "before_test")
        report["before_predictions"] = module.last_predictions
    else:
        patch_structure(backbone, cfg.attention, run_latent_dims(run_dir))
    load_weights(backbone, ckpt)
    report["after"] = test(trainer, module, data, "test")
    report.update(predictions=module.last_predictions, skipped_files=data.skipped,
                  transcripts=data.transcripts, duration_mismatches=data.duration_mismatches,
                  code=code_version(), wall_seconds=time.time() - start)
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, out)  # only a finished evaluation replaces the earlier one
    return out


def summary(report: dict) -> str:
    rows = [(phase, report[phase]) for phase in ("unconverted", "before", "after") if phase in report]
    return "\n".join(f"{phase:<12} WER {100 * m['test_wer']:.1f} %  CER {100 * m['test_cer']:.1f} %"
                     for phase, m in rows) + f"\n({report['utterances']} utterances)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asr_attention.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (outputs/<run_name>)")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides: data=..., data.test_split=..., ...")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--name", default=None, help="the file's name under <run>/eval/ (default: from the data)")
    parser.add_argument("--unconverted", action="store_true", help="also test the model before conversion")
    parser.add_argument("--before", action="store_true", help="also test the converted model before fine-tuning")
    args = parser.parse_intermixed_args(argv)  # options may come between the overrides
    try:
        out = evaluate(args.run, args.overrides, args.checkpoint, args.name, args.unconverted, args.before)
    except (ValueError, OSError, AudioError) as err:  # a user's error: one line naming the file or field
        sys.exit(f"evaluate: {err}")
    print(f"\n{summary(json.loads(out.read_text()))}\nwrote {out}")


if __name__ == "__main__":
    main()
