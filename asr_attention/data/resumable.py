"""The training DataLoader, resumable mid-epoch, so a killed run continues with exactly the batches it had left.

Lightning saves a stateful training loader's `state_dict()` in every checkpoint and, when it resumes from a
checkpoint taken mid-epoch, calls `load_state_dict()` before it iterates again. The state is the epoch and how
many of its batches this loader has handed out; the bucketing sampler then starts the resumed epoch at the next
batch (`BucketBatchSampler.resume`). Lightning takes no batch ahead of training from a loader with a length, so
the count handed out equals the count trained on when a checkpoint is written.

Iteration starts lazily, at the first batch: by then Lightning has set the sampler's epoch, even where worker
processes draw a whole prefetch of indices the moment the iterator is created.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from .sampler import BucketBatchSampler


class ResumableLoader(DataLoader):
    """A DataLoader over a `BucketBatchSampler` whose position in the epoch survives a checkpoint."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, BucketBatchSampler):
            raise TypeError("ResumableLoader needs batch_sampler=BucketBatchSampler(...)")
        self.position = {"epoch": self.batch_sampler.epoch, "batches": 0}

    def __iter__(self) -> Iterator[Any]:
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        epoch, served = sampler.epoch, sampler.start
        for batch in super().__iter__():
            served += 1
            self.position = {"epoch": epoch, "batches": served}
            yield batch

    def state_dict(self) -> dict[str, int]:
        return dict(self.position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume(state["epoch"], state["batches"])
        self.position = dict(state)
