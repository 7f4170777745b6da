"""checkpoints/last.ckpt: what a killed run resumes from, written often enough and never half-written.

Lightning's ModelCheckpoint(save_last=True) writes last.ckpt only when it also saves a new best, so after an
epoch without a new best a resumed run would redo epochs. `LastCheckpoint` writes it itself:
- at the end of every epoch, after validation and after the best-model callback (both are checkpoint callbacks:
  Lightning runs them in list order, last), so the file holds that epoch's best-model state too;
- every `every_n_steps` optimizer steps within an epoch (None: epoch ends only);
- never before the first optimizer step (under gradient accumulation the first batches end at global step 0:
  such a file would hold the untrained model and a loader position that a resumed run cannot act on);
- atomically, through the trainer's checkpoint IO (checkpoint_io.py, installed by build_trainer): a kill or a
  full disk mid-write leaves the previous last.ckpt.
It also stores the RNG states, which Lightning's checkpoints leave out (restored at resume, they give the
resumed run the dropout masks the uninterrupted run drew), and the training loader's place in the epoch (see
data/resumable.py). With both, a resumed run's numbers equal an uninterrupted run's. Under DDP every rank's
states are gathered into the file and each rank restores its own (ranks draw different dropout masks); a file
from another world size (or from before the states were per rank) gives every rank rank 0's states, with a
warning: a correct run, though not the bit-identical continuation.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from ..data.resumable import ResumableLoader

log = logging.getLogger(__name__)

LAST = "last.ckpt"
STATE = "resume_state"  # the checkpoint's entry for the RNG states and the training loader's position


class LastCheckpoint(Checkpoint):
    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None):
        self.path = Path(dirpath) / LAST
        self.every_n_steps = every_n_steps
        self._saved_at_step = -1
        self._loader_position: dict | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        step = trainer.global_step
        last_of_epoch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch  # the epoch end saves it
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._saved_at_step \
                and not last_of_epoch:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        if trainer.global_step == 0:  # no optimizer step yet: nothing to resume from
            return
        trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes
        self._saved_at_step = trainer.global_step

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        loader = trainer.train_dataloader
        checkpoint[STATE] = {"rng": every_rank(trainer, rng_states()),
                             "train_loader": loader.state_dict() if isinstance(loader, ResumableLoader) else None}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(STATE) or {}
        if "rng" in state:
            set_rng_states(own_states(state["rng"], trainer.global_rank, trainer.world_size))
        self._loader_position = state.get("train_loader")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resumed mid-epoch: the training loader goes on after the batches the checkpoint had trained on.
        (Lightning loads a stateful loader's state itself only if it builds the loader after restoring the
        checkpoint; here configure_optimizers asks for estimated_stepping_batches, which builds it before.)"""
        position, self._loader_position = self._loader_position, None
        if position and position["batches"] < trainer.num_training_batches:
            trainer.train_dataloader.load_state_dict(position)


def every_rank(trainer: L.Trainer, states: dict) -> list[dict]:
    """`states` of every rank, in rank order (a collective: every rank saves, see `save`)."""
    if trainer.world_size == 1:
        return [states]
    gathered: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, states)
    return gathered


def own_states(saved: list[dict] | dict, rank: int, world_size: int) -> dict:
    """This rank's saved RNG states; rank 0's where the file holds another number of ranks (a dict: one rank's,
    as written before the states were per rank)."""
    per_rank = saved if isinstance(saved, list) else [saved]
    if len(per_rank) == world_size:
        return per_rank[rank]
    if rank == 0:
        log.warning("last.ckpt holds the RNG states of %d rank(s), this run has %d: every rank restores rank 0's "
                    "(a correct run, not the bit-identical continuation)", len(per_rank), world_size)
    return per_rank[0]


def rng_states() -> dict:
    """torch (CPU and every CUDA device), numpy and Python RNG states, as tensors and plain lists (a checkpoint
    must load with torch.load(weights_only=True), which Lightning uses)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
