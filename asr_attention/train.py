"""`python -m asr_attention.train model=… attention=…`: convert a pretrained backbone's attention, measure
zero-shot WER, fine-tune with CTC, test, and write results.json in the run directory. A model that names an
out-of-domain set (model.ood_test: Whisper's) is tested on it too, beside each test (training/ood.py).

The run directory (outputs/<run_name>, default <model>-<attention>) belongs to one config (run_identity.py):
- the same command again resumes a killed or failed run from checkpoints/last.ckpt; once the run has completed,
  it prints the stored summary and exits 0 without training (retrain=true trains it again from the start);
- another config is refused before anything in the folder changes, naming the fields that differ (where that
  run failed, retrain=true replaces it);
- a second process on the folder while the first lives is refused, naming it (run_lock.py).
A rejected config writes nothing. A user error (user_error.py: a bad value, an empty split, a corrupt file, a
refused folder, a nan loss) ends a single run with its one-line message and exit status 1. In a -m sweep a failing
job records its error in its results.json, the sweep goes on, and ends non-zero naming the failed jobs
(sweep_failures.py); a job refused its folder (another config's, or held by a live process) leaves that folder
alone and is named the same way.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .backbones import count_parameters
from .bench.throughput import measure_rtfx
from .config.errors import UserError
from .data.corpora import check_splits
from .data.datamodule import build_datamodule
from .runs.code_version import code_version
from .runs.identity import RunFolderTaken, fingerprint, stored_run
from .runs.lock import RunLock, RunLocked
from .runs.results import Results, summary_table
from .runs.sweep_failures import record_refused_job
from .runs.wandb_log import log_results_to_wandb
from .training.config_check import validate
from .training.converted_model import export
from .training.ood import OODTest, check_ood_split
from .training.experiment import (
    build_datamodule_for,
    build_module,
    build_tokenizer_and_backbone,
    build_trainer,
    calibration_args,
    config_summary,
    convert,
)
from .training.run_model import export_run
from .training.training_speed import TrainingSpeed
from .training.val_curve import ValCurve

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path, results: Results) -> float | None:
    start = time.time()
    L.seed_everything(cfg.seed, workers=True)  # same command, same batches and initialisation
    listed = build_datamodule(cfg.data, None)
    listed.check_not_empty()  # before the model loads: an empty split would train or measure nothing
    tokenizer, backbone = build_tokenizer_and_backbone(cfg, listed)
    datamodule = build_datamodule_for(cfg, tokenizer, backbone, listed)
    datamodule.check_not_empty()  # of the utterances whose audio could be read
    results.update(transcripts=datamodule.transcripts, duration_mismatches=datamodule.duration_mismatches)
    module = build_module(cfg, backbone, tokenizer)
    ood = OODTest.for_run(cfg, tokenizer, backbone, results)  # None: the model names no out-of-domain set
    results.update(scoring={"test": module.scoring, **({"ood": ood.normaliser} if ood else {})})
    trainer = build_trainer(cfg, run_dir, callbacks=(ValCurve(results), TrainingSpeed(results)))
    if cfg.get("test_unconverted") and results.get("unconverted") is None:  # the original model's WER first
        module.test_prefix = "unconverted_test"
        (unconverted,) = trainer.test(module, datamodule=datamodule)
        results.update(unconverted={k.removeprefix("unconverted_"): v for k, v in unconverted.items()},
                       parameters_unconverted=count_parameters(backbone))
        record_truncated(results, module)
    if cfg.get("test_unconverted") and ood:
        ood.test(trainer, module, "unconverted")
        record_truncated(results, module)
    if hasattr(module, "agreement") and cfg.attention.name != "native":  # the original's val transcripts, first
        module.agreement.record(backbone, (datamodule.on_before_batch_transfer(b, 0) for b in
                                           datamodule.val_dataloader()), module.decoding, accelerator_device(cfg))
    if cfg.attention.name != "native":
        results.update(conversion=convert(backbone, cfg.attention, datamodule, **calibration_args(cfg)))
    results.update(vocab_size=len(tokenizer), parameters=count_parameters(backbone))
    if per_site := getattr(backbone, "cache_per_site", dict)():  # Whisper's decoder caches (none with CTC)
        results.update(cache_per_site=per_site)
    last = run_dir / "checkpoints" / "last.ckpt"

    if results.get("before") is None:  # a resumed run measured this already
        trainer.validate(module, datamodule=datamodule)  # val_curve's step 0: right after conversion
        module.test_prefix = "before_test"
        (before,) = trainer.test(module, datamodule=datamodule)
        results.update(before={k.removeprefix("before_"): v for k, v in before.items()})
        record_truncated(results, module)
    if ood:
        ood.test(trainer, module, "before")
        record_truncated(results, module)
    module.test_prefix = "test"
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    best = trainer.checkpoint_callback.best_model_path or None
    (after,) = trainer.test(module, datamodule=datamodule, ckpt_path=best)
    batch = next(b for b in datamodule.test_dataloader() if b is not None)
    device = module.device
    results.update(
        after=after, best_checkpoint=best, global_step=trainer.global_step,
        predictions=module.last_predictions[:20], skipped_files=datamodule.skipped,
        throughput=measure_rtfx(module, batch["waves"].to(device), batch["wave_lengths"].to(device)),
    )
    record_truncated(results, module)
    if ood:  # the best checkpoint's weights (chosen on val_wer alone)
        ood.test(trainer, module, "after", ckpt_path=best)
        record_truncated(results, module)
    results.update(wall_seconds=results.get("wall_seconds", 0) + time.time() - start)
    if cfg.get("export_dir"):
        module.backbone.to("cpu")
        results.update(exported_to=str(export(module.backbone, cfg.export_dir, cfg, tokenizer)))
    # the objective a sweep minimises: model selection on validation; test WER is only reported
    best_val_wer = trainer.checkpoint_callback.best_model_score
    return None if best_val_wer is None else float(best_val_wer)


def accelerator_device(cfg: DictConfig) -> torch.device:
    """Where the trainer will run the module: a GPU where the config asks for one and there is one."""
    wanted = str(cfg.trainer.get("accelerator", "auto"))
    return torch.device("cuda" if wanted in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")


def record_truncated(results: Results, module: L.LightningModule) -> None:
    """Whisper's decoder: its token limit and, per phase, every utterance whose transcript that limit cut (merged
    with what results.json holds, so a resumed run keeps the earlier phases')."""
    cut = getattr(module, "truncated", None)
    if cut is None:
        return
    kept = (results.get("decoding") or {}).get("truncated", {})
    for phase, utts in cut.items():
        kept[phase] = sorted(set(kept.get(phase, [])) | utts)
    results.update(decoding={"max_tokens": module.decoding.max_tokens, "truncated": kept})


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return train_in_folder(cfg, Path(HydraConfig.get().runtime.output_dir), sweep)
    except UserError as err:  # its message says everything: one line, no traceback (results.json keeps one)
        if sweep:
            raise
        raise SystemExit(f"{type(err).__name__}: {err}") from None


def train_in_folder(cfg: DictConfig, run_dir: Path, sweep: bool) -> float | None:
    if not sweep:
        check_config(cfg)  # a single run's bad config fails before touching the folder (it may hold a finished run)
    if rank_zero_only.rank != 0:  # a DDP rank that Lightning started: rank 0 holds the folder and writes into it
        return fit_and_record(cfg, run_dir, sweep)
    try:
        return hold_and_run(cfg, run_dir, sweep)
    except (RunFolderTaken, RunLocked) as err:
        if not sweep:
            raise
        log.error("job refused, its folder left alone; the sweep goes on: %s", err)
        record_refused_job(HydraConfig.get(), run_dir, err)  # the sweep then ends non-zero, naming it
        return None


def hold_and_run(cfg: DictConfig, run_dir: Path, sweep: bool) -> float | None:
    """Train in run_dir once it is this config's and this process's, or report its completed run."""
    if (done := completed_run(cfg, run_dir)) is not None:  # reads only: a finished run is not even locked
        return report_completed(done, run_dir, cfg.get("export_dir"))
    with RunLock(run_dir):
        if (done := completed_run(cfg, run_dir)) is not None:  # it finished while this process started
            return report_completed(done, run_dir, cfg.get("export_dir"))
        if cfg.retrain:
            start_over(run_dir)
        record_hydra_config(cfg, run_dir)
        with log_file(run_dir):
            return fit_and_record(cfg, run_dir, sweep)


def check_config(cfg: DictConfig) -> None:
    validate(cfg)
    check_splits(cfg.data)
    check_ood_split(cfg.model)


def completed_run(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The folder's results.json if this config's run there has completed (and retrain is off). Raises
    RunFolderTaken if the folder is another config's (unless that run failed and retrain is on: it is replaced)."""
    stored = stored_run(run_dir, config_summary(cfg), cfg.run_name, retrain=cfg.retrain)
    done = stored is not None and stored.get("status") == "completed"
    return stored if done and not cfg.retrain else None


def report_completed(stored: dict, run_dir: Path, export_dir: str | None = None) -> float | None:
    print(f"\n{summary_table(stored)}\nresults: {run_dir / 'results.json'}\n"
          "This config's run completed earlier: nothing was trained (retrain=true trains it again).")
    if export_dir:  # export_dir= added to a finished run's command: its best checkpoint is exported now
        print(f"exported its best checkpoint to {export_run(run_dir, export_dir)}")
    return stored.get("objective")


def start_over(run_dir: Path) -> None:
    """retrain=true: this config's earlier run (or another config's failed one) goes: its checkpoints and
    results.json; training starts fresh."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    (run_dir / "results.json").unlink(missing_ok=True)
    log.warning("retrain=true: removed %s's checkpoints and results.json; training from the start", run_dir)


def record_hydra_config(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra itself writes into .hydra/ (hydra.output_subdir is null in train.yaml: Hydra would write it
    before this process knows whether the folder is this config's)."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}
    for name, node in (("config", cfg), ("hydra", hydra_cfg), ("overrides", hydra_cfg.hydra.overrides.task)):
        (hydra_dir / f"{name}.yaml").write_text(OmegaConf.to_yaml(node))


@contextmanager
def log_file(run_dir: Path) -> Iterator[None]:
    """<run dir>/train.log, opened only now that the folder is this process's (train.yaml keeps Hydra's log
    file handler unattached), with the console's format."""
    root = logging.getLogger()
    handler = logging.FileHandler(run_dir / f"{HydraConfig.get().job.name}.log")
    handler.setFormatter(next((h.formatter for h in root.handlers if h.formatter), None))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def fit_and_record(cfg: DictConfig, run_dir: Path, sweep: bool) -> float | None:
    config = config_summary(cfg)
    results = Results(run_dir / "results.json", status="running", config=config, fingerprint=fingerprint(config),
                      torch=torch.__version__, code=code_version())
    results.discard("error", "traceback")  # an earlier failed attempt's, now resumed
    try:
        check_config(cfg)  # in a sweep, a bad grid point is a failed job with its error recorded; the sweep goes on
        wer = run(cfg, run_dir, results)
        results.update(status="completed", objective=wer)  # objective: what main returns to a sweeper
        print(f"\n{summary_table(results.data)}\nresults: {results.path}")
        return wer
    except Exception as err:
        results.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        if not sweep:
            raise
        log.exception("job failed; its results.json records the error and the sweep goes on")
        return None
    finally:
        log_results_to_wandb(results.data, cfg)
        finish_wandb(exit_code=0 if results.get("status") == "completed" else 1)  # W&B marks the run failed


def finish_wandb(exit_code: int = 0) -> None:
    """A W&B run must end before the next multirun job starts, or that job logs into it. A non-zero exit code
    marks it failed in W&B."""
    import sys

    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish(exit_code=exit_code)


if __name__ == "__main__":
    main()
