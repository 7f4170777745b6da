"""Training stops at the first non-finite loss or weight, before any checkpoint holds it.

A nan loss (optim.lr far too high, a bad batch) used to train on: every weight became nan, validation and test
scored garbage, and the run was marked completed. `StopOnNonFinite` checks, at the end of every training batch,
its loss and, after an optimizer step, the trained weights; the first that is not finite raises
`NonFiniteTraining`, naming the global step, and the run fails. Lightning runs the checkpoint callbacks after
every other callback, so neither last.ckpt nor a best checkpoint is written from that state: last.ckpt keeps
the last finite one. Under DDP the ranks agree on the decision (one all-reduce of a flag), so all stop together.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn.utils import get_total_norm

from ..config.errors import UserError


class NonFiniteTraining(UserError, FloatingPointError):
    """The training loss or the weights became nan or inf (the message names the global step)."""


class StopOnNonFinite(Callback):
    def __init__(self) -> None:
        self._step_at_start = 0  # the batch's global step: optimizer steps taken before it
        self._weights_checked_at = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, *args) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        bad_loss = loss is not None and not bool(torch.isfinite(loss).all())
        bad_weights = None
        if trainer.global_step != self._weights_checked_at:  # an optimizer step just ran
            trained = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
            # the largest magnitude: nan and inf show, and unlike a 2-norm it cannot overflow from finite weights
            if trained and not torch.isfinite(get_total_norm([p.detach() for _, p in trained], float("inf"))):
                bad_weights = [n for n, p in trained if not torch.isfinite(p.detach()).all()]
            self._weights_checked_at = trainer.global_step
        if trainer.strategy.reduce_boolean_decision(not bad_loss and not bad_weights, all=True):
            return
        if bad_loss:
            what = f"the training loss is {float(loss)}"
        elif bad_weights:
            what = f"its optimizer step made {len(bad_weights)} weight tensor(s) non-finite, e.g. {bad_weights[0]}"
        else:
            what = "another rank's loss or weights are not finite"
        lr = getattr(pl_module, "lr", None)
        hint = f" A lower optim.lr (now {lr:g}) may avoid it." if isinstance(lr, (int, float)) else ""
        raise NonFiniteTraining(f"training stopped at global step {self._step_at_start}: {what}. No checkpoint was "
                                f"written from this state (checkpoints/last.ckpt, if any, holds the last finite "
                                f"one).{hint}")
