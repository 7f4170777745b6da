"""Checkpoint files are written whole or not at all.

Lightning's own writer serialises into memory, writes a temporary file in the system's temp folder and moves it
into place: where that folder is on another disk than the run (a tmpfs, a data volume), the move is a copy, and a
full disk mid-copy left a truncated best-*.ckpt at its final name (and the earlier best already deleted).
`AtomicCheckpointIO` writes into a temporary file beside the target, fsyncs it (a full disk can surface only
there), then `os.replace`s it: the final name holds the previous file or the complete new one. A failed write
removes its temporary file and raises, so ModelCheckpoint keeps the earlier best. build_trainer installs it for
every checkpoint the trainer writes (best-*.ckpt and last.ckpt).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # same folder: os.replace is a rename
        buffer = io.BytesIO()  # serialised first (as Lightning does): a failed write then raises its OSError
        torch.save(checkpoint, buffer)
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
