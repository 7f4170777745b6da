"""What the training run's trainer (experiment.build_trainer) writes, and when, on a toy module (a second each):
no checkpoint before the first optimizer step, none from a nan state, and none half-written on a full disk."""

import errno
import io
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

BATCHES = 4  # per epoch


class Toy(L.LightningModule):
    """A linear layer pulled to 0 on random inputs. val_wer falls every epoch (a new best each time).
    nan_loss_at / inf_weights_at: the batch at that global step has a nan loss / an update that makes a weight inf."""

    def __init__(self, nan_loss_at: int | None = None, inf_weights_at: int | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.lr = 0.1
        self.nan_loss_at, self.inf_weights_at = nan_loss_at, inf_weights_at

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        return loss * float("nan") if self.global_step == self.nan_loss_at else loss

    def on_before_optimizer_step(self, optimizer):
        if self.global_step == self.inf_weights_at:
            self.layer.bias.grad.fill_(float("inf"))

    def validation_step(self, batch, batch_idx):
        self.log("val_wer", 1.0 / (self.current_epoch + 1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader() -> DataLoader:
    return DataLoader(torch.randn(2 * BATCHES, 4, generator=torch.Generator().manual_seed(0)), batch_size=2)


@pytest.fixture
def trainer_for(compose_cfg, tmp_path):
    """trainer_for("trainer.max_epochs=2", ...): the training entry's trainer, writing into tmp_path/checkpoints."""
    from asr_attention.training.experiment import build_trainer

    def _build(*overrides: str) -> L.Trainer:
        cfg = compose_cfg("train", ["experiment=demo", "model=branchformer", "logger=none", "trainer.max_epochs=1",
                                    "checkpoint_every_n_steps=1",
                                    "+trainer.enable_model_summary=false", *overrides])
        return build_trainer(cfg, tmp_path)

    return _build


def saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def test_no_last_checkpoint_before_the_first_optimizer_step(trainer_for, monkeypatch):
    """Under gradient accumulation the first batch ends at global step 0: last.ckpt was written there, holding the
    untrained model."""
    saves = []
    real = L.Trainer.save_checkpoint

    def recorded(trainer, path, *args, **kwargs):
        if "last.ckpt" in str(path):
            saves.append(trainer.global_step)
        return real(trainer, path, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", recorded)
    trainer = trainer_for("+trainer.accumulate_grad_batches=2")
    trainer.fit(Toy(), loader(), loader())
    assert saves == [1, 2]  # after each of the epoch's two optimizer steps (the second at the epoch's end)


@pytest.mark.parametrize("module,message", [
    (Toy(nan_loss_at=2), "training stopped at global step 2: the training loss is nan."),
    (Toy(inf_weights_at=2), "training stopped at global step 2: its optimizer step made 1 weight tensor(s) "
                            "non-finite, e.g. layer.bias."),
], ids=["nan-loss", "inf-weights"])
def test_a_non_finite_loss_or_weight_stops_the_run_and_keeps_the_last_finite_checkpoint(trainer_for, tmp_path,
                                                                                         module, message):
    """It used to train on: nan weights, a garbage WER, and a run marked completed."""
    from asr_attention.training.finite_training import NonFiniteTraining

    trainer = trainer_for("trainer.max_epochs=2")
    with pytest.raises(NonFiniteTraining) as err:
        trainer.fit(module, loader(), loader())
    assert str(err.value) == (f"{message} No checkpoint was written from this state (checkpoints/last.ckpt, if "
                              f"any, holds the last finite one). A lower optim.lr (now 0.1) may avoid it.")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert saved_step(last) == 2  # written after step 2, before the batch at step 2 went wrong
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values())
    assert {p.name for p in last.parent.iterdir()} == {"last.ckpt"}  # no best checkpoint of a nan state either


def full_disk(monkeypatch, folder: Path, room: int) -> None:
    """`folder` is on another disk than the system's temp folder, with `room` bytes left: a rename into it from
    elsewhere fails as across disks (EXDEV), and writing into a file there fails with ENOSPC past `room` bytes
    (whatever bytes fitted stay in the file, as on a real disk)."""
    left, fds = [room], set()
    real_open, real_sendfile, real_rename, real_replace = open, os.sendfile, os.rename, os.replace

    def inside(path) -> bool:
        return Path(os.fspath(path)).resolve().is_relative_to(folder.resolve())

    def no_space() -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FileOnFullDisk:
        def __init__(self, f):
            self.f = f
            fds.add(f.fileno())

        def write(self, data) -> int:
            data = memoryview(data).cast("B")
            fits = min(len(data), left[0])
            self.f.write(data[:fits])
            left[0] -= fits
            if fits < len(data):
                self.f.flush()
                raise no_space()
            return fits

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def patched_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FileOnFullDisk(f) if isinstance(file, (str, os.PathLike)) and "w" in mode and inside(file) else f

    def patched_sendfile(out_fd, in_fd, offset, count):  # shutil.copyfile's way of copying on Linux
        if out_fd not in fds:
            return real_sendfile(out_fd, in_fd, offset, count)
        if left[0] == 0:
            raise no_space()
        sent = real_sendfile(out_fd, in_fd, offset, min(count, left[0]))
        left[0] -= sent
        return sent

    def across_disks(real):
        def rename(src, dst, *args, **kwargs):
            if inside(dst) and not inside(src):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr("builtins.open", patched_open)
    monkeypatch.setattr(io, "open", patched_open)
    monkeypatch.setattr(os, "sendfile", patched_sendfile)
    monkeypatch.setattr(os, "rename", across_disks(real_rename))
    monkeypatch.setattr(os, "replace", across_disks(real_replace))


def test_a_full_disk_leaves_no_truncated_checkpoint_and_keeps_the_earlier_best(trainer_for, tmp_path, monkeypatch):
    """Epoch 0 saves its best; the disk is full when epoch 1's better one is written. That write fails, and the
    folder still holds epoch 0's complete files and nothing else (it used to hold a truncated best-epoch=1 file)."""
    folder = tmp_path / "checkpoints"

    class FillTheDisk(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                full_disk(monkeypatch, folder, room=1000)

    trainer = trainer_for("trainer.max_epochs=2", "checkpoint_every_n_steps=null")
    trainer.callbacks.insert(0, FillTheDisk())
    with pytest.raises(OSError) as err:
        trainer.fit(Toy(), loader(), loader())
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    best = "best-epoch=0-val_wer=1.0000.ckpt"
    assert sorted(p.name for p in folder.iterdir()) == [best, "last.ckpt"]
    assert saved_step(folder / best) == saved_step(folder / "last.ckpt") == BATCHES  # complete, loadable
