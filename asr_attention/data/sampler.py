"""Duration-bucketed batches: similar lengths share a batch, so little compute goes to padding.

Training (shuffle=True): each epoch, indices are shuffled with a generator of its own (seed, epoch) pair (not
`seed + epoch`, under which seed s + 1 replayed seed s's epochs one epoch ahead), cut into pools of
`pool_batches` batches, each pool sorted by duration and cut into batches, and the batch order shuffled.
Evaluation (shuffle=False): one global sort by duration. Every index appears in exactly one batch per epoch.
Batch size is a count (`batch_size`), a padded-audio budget (`max_batch_seconds`: batch count x longest
utterance), or both.

Distributed (DDP): the batch list is sharded across `num_replicas` ranks (default: the initialised
torch.distributed world, else 1 rank). Every rank builds the same seeded batch list and rank r takes batches
r, r+W, r+2W, ... (W = num_replicas). The remainder (len % W batches at the end of the list) is DROPPED, so
every rank runs the same number of steps (no rank waits at a collective the others never reach); with the
seed advancing per epoch, a different remainder is dropped each epoch. The ranks' batches together are the
single-process batch list minus that remainder. Lightning does not shard a custom batch_sampler
(use_distributed_sampler must be false with it: conf/trainer/ddp.yaml); `set_epoch` is called every epoch by
Lightning's loops on `batch_sampler.sampler`, which is this object.

Resuming mid-epoch: `resume(epoch, batches)` makes the next iteration start at batch `batches` of that epoch's
list (`ResumableLoader` calls it with the position a checkpoint saved); `len` stays the whole epoch's count.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch.distributed
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    def __init__(self, durations: Sequence[float], batch_size: int | None = None,
                 max_batch_seconds: float | None = None, shuffle: bool = True, seed: int = 0,
                 pool_batches: int = 50, num_replicas: int | None = None, rank: int | None = None):
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
        self.start = 0  # the first batch the next iteration yields (see resume); back to 0 once it began
        if num_replicas is None or rank is None:
            dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
            if num_replicas is None:
                num_replicas = torch.distributed.get_world_size() if dist_on else 1
            if rank is None:
                rank = torch.distributed.get_rank() if dist_on else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} of num_replicas {num_replicas}: need 0 <= rank < num_replicas")
        self.num_replicas, self.rank = num_replicas, rank
        # Lightning calls set_epoch on `batch_sampler.sampler` (not on the batch sampler itself).
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        """The next iteration yields `epoch`'s batches from index `batches` on (the ones a killed run had not
        trained on yet)."""
        self.epoch, self.start = epoch, batches

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
        """This rank's batches for `epoch` (default: the one set by set_epoch)."""
        all_batches = self.all_batches(epoch)
        usable = len(all_batches) - len(all_batches) % self.num_replicas  # drop the remainder
        return all_batches[self.rank:usable:self.num_replicas]

    def all_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every rank's batches for `epoch`, in the seeded order (the single-process list)."""
        epoch = self.epoch if epoch is None else epoch
        by_duration = lambda i: self.durations[i]  # noqa: E731
        if not self.shuffle:
            return self._cut(sorted(range(len(self.durations)), key=by_duration))
        rng = random.Random(self.seed * 1_000_003 + epoch)  # distinct for every (seed, epoch < 1,000,003)
        idx = list(range(len(self.durations)))
        rng.shuffle(idx)
        pool = (self.batch_size or 16) * self.pool_batches
        batches = []
        for p in range(0, len(idx), pool):
            batches += self._cut(sorted(idx[p:p + pool], key=by_duration))
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start = self.start, 0
        yield from self.batches()[start:]

    def __len__(self) -> int:
        return len(self.batches())
