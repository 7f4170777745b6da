"""Training speed per device: results.json `training_speed` = {"seconds", "steps", "utterances", "audio_seconds"},
what this process trained in fit (its own batches: under DDP one rank's, so the figures are per device) and the
seconds it took, without the val passes inside fit (`validation_seconds`) and without setup or testing. A resumed
run adds its figures to those of the earlier attempts that reached the end of fit (a killed attempt records none)."""

from __future__ import annotations

import time

import lightning as L
import torch

from ..runs.results import Results

SAMPLE_RATE = 16000  # the datamodule's (data/datamodule.py refuses others)
FIELDS = ("seconds", "validation_seconds", "steps", "utterances", "audio_seconds")


class TrainingSpeed(L.Callback):
    def __init__(self, results: Results):
        self.results = results
        self.counts = dict.fromkeys(FIELDS, 0.0)
        self.started = self.validation_started = self.first_step = None

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":  # kernels run asynchronously: count them where they end
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counts = dict.fromkeys(FIELDS, 0.0)
        self.first_step, self.started = trainer.global_step, self._now(pl_module)  # after a resume's restore

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch is not None:  # None: every file of the batch was unreadable
            self.counts["utterances"] += len(batch["utt_ids"])
            self.counts["audio_seconds"] += float(batch["wave_lengths"].sum()) / SAMPLE_RATE

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.started is not None and not trainer.sanity_checking:
            self.validation_started = self._now(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validation_started is not None:
            self.counts["validation_seconds"] += self._now(pl_module) - self.validation_started
            self.validation_started = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counts["seconds"] = self._now(pl_module) - self.started - self.counts["validation_seconds"]
        self.counts["steps"] = trainer.global_step - self.first_step
        earlier = self.results.get("training_speed") or {}
        self.results.update(training_speed={k: earlier.get(k, 0) + v for k, v in self.counts.items()})
        self.started = None
