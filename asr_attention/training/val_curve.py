"""The recovery curve: every val pass of a run (step 0 = right after conversion, then every
trainer.val_check_interval steps of fine-tuning) appended to results.json as
val_curve = [{"step": 0, "val_wer": ..., "val_cer": ...}, ...], so a crash keeps the points already measured."""

from __future__ import annotations

import lightning as L
from torchmetrics import Metric

from ..runs.results import Results


class ValCurve(L.Callback):
    def __init__(self, results: Results):
        self.results = results

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Step 0 was validated by trainer.validate, under inference mode, whose metric states (inference tensors)
        fit's no-grad validation (sanity check included) could not update in place: start them afresh."""
        for metric in pl_module.modules():
            if isinstance(metric, Metric):
                metric.reset()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if not metrics:
            return
        point = {"step": trainer.global_step, **metrics}
        # a resumed run may validate a step again: keep one point per step, the latest
        curve = [p for p in self.results.get("val_curve", []) if p["step"] != point["step"]]
        self.results.update(val_curve=sorted(curve + [point], key=lambda p: p["step"]))
