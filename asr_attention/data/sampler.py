"""Duration-bucketed batches: similar lengths share a batch, so little compute goes to padding.

Training (shuffle=True): each epoch, indices are shuffled with `seed + epoch`, cut into pools of
`pool_batches` batches, each pool sorted by duration and cut into batches, and the batch order shuffled.
Evaluation (shuffle=False): one global sort by duration. Every index appears in exactly one batch per epoch.
Batch size is a count (`batch_size`), a padded-audio budget (`max_batch_seconds`: batch count x longest
utterance), or both.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    def __init__(self, durations: Sequence[float], batch_size: int | None = None,
                 max_batch_seconds: float | None = None, shuffle: bool = True, seed: int = 0,
                 pool_batches: int = 50):
        if batch_size is None and max_batch_seconds is None:
            raise ValueError("BucketBatchSampler needs batch_size or max_batch_seconds")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: must be >= 1")
        self.durations = list(durations)
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.epoch = 0
        # Lightning calls set_epoch on `batch_sampler.sampler` (not on the batch sampler itself).
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _cut(self, order: list[int]) -> list[list[int]]:
        """Cut duration-sorted indices into batches that respect both limits (at least one item each)."""
        batches, cur, longest = [], [], 0.0
        for i in order:
            d = self.durations[i]
            full = self.batch_size is not None and len(cur) >= self.batch_size
            over = (self.max_batch_seconds is not None and cur
                    and (len(cur) + 1) * max(longest, d) > self.max_batch_seconds)
            if full or over:
                batches.append(cur)
                cur, longest = [], 0.0
            cur.append(i)
            longest = max(longest, d)
        if cur:
            batches.append(cur)
        return batches

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else epoch
        by_duration = lambda i: self.durations[i]  # noqa: E731
        if not self.shuffle:
            return self._cut(sorted(range(len(self.durations)), key=by_duration))
        rng = random.Random(self.seed + epoch)
        idx = list(range(len(self.durations)))
        rng.shuffle(idx)
        pool = (self.batch_size or 16) * self.pool_batches
        batches = []
        for p in range(0, len(idx), pool):
            batches += self._cut(sorted(idx[p:p + pool], key=by_duration))
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        return len(self.batches())
