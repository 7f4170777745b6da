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

Out of domain: --ood tests on the run's out-of-domain set (model.ood_test; +model.ood_test=speechocean762 for a
run from before that field existed) instead, its first data.limit_ood utterances, scored with the set's normaliser
as the run scored it (results.json: ood), each phase under the run's seeded RNG, so the numbers are the run's.
--scoring picks the normaliser for any data (an4, the default; english: Whisper's, data/normalisers.py):

    python -m asr_attention.evaluate outputs/whisper-mla --ood --unconverted --before
    python -m asr_attention.evaluate outputs/whisper-mla data=manifest data.root=/data/mine data.test_split=test.tsv \
        --scoring english

Writes <run folder>/eval/<name>.json (name: --name, else from the data: corpus, test split, limit, and the
normaliser unless an4): each phase's metrics keyed as results.json keys them (unconverted, before, after:
test_wer, test_cer, test_raw_wer, ...), every utterance's prediction (predictions: after; before_predictions,
unconverted_predictions), the files skipped, the checkpoint, data and normaliser (scoring; set: the
out-of-domain set's name) used. The run's results.json is never touched. The same command again measures again
and replaces that file, saying so.
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
from .data.corpora import OOD_SETS, check_split
from .data.datamodule import build_datamodule
from .data.normalisers import NORMALISERS, scoring_normaliser
from .runs.code_version import code_version
from .training.experiment import build_datamodule_for, calibration_args, convert, patch_structure
from .training.ood import ood_data_config, ood_set, score_on
from .training.run_model import (
    checkpoint_file,
    inference_module,
    load_weights,
    rebuilt_backbone,
    run_config,
    run_latent_dims,
    unconverted_model,
)


def eval_name(data: DictConfig, scoring: str = "an4") -> str:
    """e.g. an4-test, librispeech-test-other, manifest-mine-test (a manifest's folder and file), + -first20, +
    -english (a normaliser other than an4)."""
    split = data.test_split
    parts = [data.corpus]
    if data.corpus == "manifest":
        parts += [Path(data.root).name] if data.root else []
        split = Path(split).stem
    parts.append(split)
    if data.get("limit_test"):
        parts.append(f"first{data.limit_test}")
    if scoring != "an4":
        parts.append(scoring)
    return re.sub(r"[^\w.+-]+", "_", "-".join(parts))


def evaluation_data(cfg: DictConfig, ood: bool) -> tuple[DictConfig, str | None]:
    """The data node evaluated on, and the out-of-domain set's name (None: the run's data, overrides applied)."""
    if not ood:
        return cfg.data, None
    name = ood_set(cfg.model)
    if name is None:
        example = next(iter(OOD_SETS))
        raise ValueError(f"--ood: this run's model.ood_test is null or absent; name the set: model.ood_test={example} "
                         f"(+model.ood_test={example} for a run from before the field existed)")
    if name not in OOD_SETS:
        raise ValueError(f"model.ood_test={name!r} is not allowed: expected one of {', '.join(OOD_SETS)}")
    return OmegaConf.create(ood_data_config(cfg.data, name)), name


def eval_trainer(cfg: DictConfig) -> L.Trainer:
    """The run's trainer settings (accelerator, precision, batch limits) on one device: every rank would test the
    whole split anyway (the datamodule does not shard it). No logger, no checkpoints."""
    return hydra.utils.instantiate(cfg.trainer, devices=1, num_nodes=1, strategy="auto", logger=False,
                                   callbacks=[], enable_checkpointing=False)


def evaluate(run_dir: Path, overrides: list[str], checkpoint: str = "best", name: str | None = None,
             unconverted: bool = False, before: bool = False, ood: bool = False,
             scoring: str | None = None) -> Path:
    """ood: test on the run's model.ood_test set instead of its data. scoring: the normaliser's name (None: the
    out-of-domain set's with ood, else an4)."""
    start = time.time()
    cfg = run_config(run_dir, overrides)
    data_cfg, ood = evaluation_data(cfg, ood)
    scoring = scoring or (OOD_SETS[ood] if ood else "an4")
    scoring_normaliser(scoring, "--scoring")
    check_split(data_cfg.corpus, data_cfg.root, data_cfg.test_split)  # before any model loads
    ckpt = checkpoint_file(run_dir, checkpoint)
    name = name or eval_name(data_cfg, scoring)
    if not re.fullmatch(r"[\w.+-]+", name):
        raise ValueError(f"--name {name!r}: use letters, digits and . _ + - only")
    out = run_dir / "eval" / f"{name}.json"
    if out.exists():
        print(f"{out} holds an earlier evaluation: measuring again, it will be replaced", flush=True)
    L.seed_everything(cfg.seed, workers=True)  # as the run: the same decoding fallback draws
    tokenizer, backbone = unconverted_model(run_dir, cfg)
    module = inference_module(cfg, backbone, tokenizer)
    data = build_datamodule(data_cfg, tokenizer)
    data.setup("test")
    limit = backbone.max_audio_seconds
    if limit is not None and (long := [u for u in data.datasets["test"].utterances if u.duration > limit]):
        raise ValueError(f"{long[0].path}: {long[0].duration:.1f} s of audio; this model reads at most {limit:g} s "
                         f"per utterance ({len(long)} test utterances are longer: leave them out of the test split)")
    trainer = eval_trainer(cfg)
    report = {"run": str(run_dir), "checkpoint": str(ckpt), "overrides": overrides,
              "data": OmegaConf.to_container(data_cfg), "scoring": scoring, "utterances": len(data.datasets["test"])}
    seed = cfg.seed if ood else None  # out of domain: each phase under its own seeded RNG, as the run tested it
    if ood:
        report["set"] = ood
    if unconverted:
        report["unconverted"] = score_on(trainer, module, data, "unconverted_test", scoring, seed)
        report["unconverted_predictions"] = module.last_predictions
    if before:  # converted as the run converted it, from its own val split
        if cfg.attention.name != "native":
            own = run_config(run_dir)
            convert(backbone, cfg.attention, build_datamodule_for(own, tokenizer, backbone), **calibration_args(own))
        report["before"] = score_on(trainer, module, data, "before_test", scoring, seed)
        report["before_predictions"] = module.last_predictions
    else:
        patch_structure(backbone, cfg.attention, run_latent_dims(run_dir))
    # trained-weight parts fill in what they leave out from the run's rebuild, not from a calibrated conversion
    load_weights(backbone, ckpt, rebuilt_backbone(run_dir, cfg)[1] if before and ckpt.is_dir() else None)
    report["after"] = score_on(trainer, module, data, "test", scoring, seed)
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
    scoring = report.get("scoring", "an4")
    return "\n".join(f"{phase:<12} WER {100 * m['test_wer']:.1f} %  CER {100 * m['test_cer']:.1f} %"
                     for phase, m in rows) + f"\n({report['utterances']} utterances, {scoring} normaliser)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asr_attention.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (outputs/<run_name>)")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides: data=..., data.test_split=..., ...")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--name", default=None, help="the file's name under <run>/eval/ (default: from the data)")
    parser.add_argument("--unconverted", action="store_true", help="also test the model before conversion")
    parser.add_argument("--before", action="store_true", help="also test the converted model before fine-tuning")
    parser.add_argument("--ood", action="store_true",
                        help="test on the run's out-of-domain set (model.ood_test) instead of its data; "
                             "data.limit_ood keeps the first N utterances")
    parser.add_argument("--scoring", choices=tuple(NORMALISERS), default=None,
                        help="the scoring normaliser (default: the out-of-domain set's with --ood, else an4)")
    args = parser.parse_intermixed_args(argv)  # options may come between the overrides
    try:
        out = evaluate(args.run, args.overrides, args.checkpoint, args.name, args.unconverted, args.before,
                       args.ood, args.scoring)
    except (ValueError, OSError, AudioError) as err:  # a user's error: one line naming the file or field
        sys.exit(f"evaluate: {err}")
    print(f"\n{summary(json.loads(out.read_text()))}\nwrote {out}")


if __name__ == "__main__":
    main()
