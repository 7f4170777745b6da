"""`python -m asr_attention.train model=… attention=…`: convert a pretrained backbone's attention, measure
zero-shot WER, fine-tune with CTC, test, and write results.json in the run directory.

The run directory is outputs/<run_name> (default <model>-<attention>), so re-running the same command after a
crash resumes from its checkpoints/last.ckpt. In a -m sweep a failing job records its error and the sweep goes on.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .backbones import count_parameters
from .backbones.export import export_backbone
from .config_check import validate
from .experiment import (
    build_datamodule_for, build_module, build_tokenizer_and_backbone, build_trainer, config_summary, convert,
)
from .results import Results, summary_table
from .throughput import measure_rtfx
from .wandb_log import log_results_to_wandb

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path, results: Results) -> float:
    start = time.time()
    L.seed_everything(cfg.seed, workers=True)  # same command, same batches and initialisation
    tokenizer, backbone = build_tokenizer_and_backbone(cfg)
    datamodule = build_datamodule_for(cfg, tokenizer)
    module = build_module(cfg, backbone, tokenizer)
    trainer = build_trainer(cfg, run_dir)
    if cfg.get("test_unconverted") and results.get("unconverted") is None:  # the original model's WER first
        module.test_prefix = "unconverted_test"
        (unconverted,) = trainer.test(module, datamodule=datamodule)
        results.update(unconverted={k.removeprefix("unconverted_"): v for k, v in unconverted.items()},
                       parameters_unconverted=count_parameters(backbone))
    if cfg.attention.name != "native":
        results.update(conversion=convert(backbone, cfg.attention, datamodule))
    results.update(vocab_size=len(tokenizer), parameters=count_parameters(backbone))
    if hasattr(backbone, "cache_per_site"):
        results.update(cache_per_site=backbone.cache_per_site())
    last = run_dir / "checkpoints" / "last.ckpt"

    if results.get("before") is None:  # a resumed run measured this already
        module.test_prefix = "before_test"
        (before,) = trainer.test(module, datamodule=datamodule)
        results.update(before={k.removeprefix("before_"): v for k, v in before.items()})
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
        wall_seconds=results.get("wall_seconds", 0) + time.time() - start,
    )
    if cfg.get("export_dir"):
        module.backbone.to("cpu")
        results.update(exported_to=str(export_backbone(module.backbone, cfg.export_dir, tokenizer.vocab)))
    return after["test_wer"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        validate(cfg)  # a single run fails before touching outputs/<run_name> (which may hold a finished run)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    results = Results(run_dir / "results.json", status="running", config=config_summary(cfg),
                      torch=torch.__version__)
    try:
        validate(cfg)  # in a sweep, a bad grid point is a failed job with its error recorded; the sweep goes on
        wer = run(cfg, run_dir, results)
        results.update(status="completed")
        print(f"\n{summary_table(results.data)}\nresults: {results.path}")
        return wer
    except Exception as err:
        results.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed; its results.json records the error and the sweep goes on")
        return None
    finally:
        log_results_to_wandb(results.data, cfg)
        finish_wandb()


def finish_wandb() -> None:
    """A W&B run must end before the next multirun job starts, or that job logs into it."""
    import sys

    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()


if __name__ == "__main__":
    main()
