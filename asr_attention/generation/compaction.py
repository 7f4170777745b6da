"""Dropping ended rows from a batch mid-decode. A batch decodes until its last row ends: a sentence that loops to the
token limit holds all of its batch's rows (and their cache reads) for hundreds of steps after the others ended.
Every `EVERY` steps the loop asks how many rows still run (one host read); once they fit in a quarter of the
batch, they move to a cache of that many rows (a power of two, from the backbone's cache pool: its graph captured
once per size) and the ended rows' hypotheses are set aside. Padding rows copy the first running row and are
dropped at the end.

Only where both sides can: a cache with `narrowed(rows)` (the preallocated one) and a decoder with `narrow(rows)`
(greedy at temperature 0); beam search, sampling and the growing caches decode whole batches as before. A row's
numbers are computed as in the whole batch, to float rounding: a GEMM over fewer rows may round its last bits
otherwise, as it does between batch sizes anyway."""

from __future__ import annotations

import torch
from torch import Tensor

from .token_decoder import Candidate, TokenDecoder

EVERY = 16  # steps between host reads of the rows still running
SHARE = 4  # running rows move once they fit 1 / SHARE of the current rows


class Compaction:
    def __init__(self, cache, decoder: TokenDecoder, rows: int):
        # greedy at temperature 0 only (its done_flag): sampling draws for every row of the batch at each step,
        # so fewer rows would change what the later rows draw
        self.enabled = hasattr(cache, "narrowed") and hasattr(decoder, "narrow") and decoder.done_flag() is not None
        self.origin: list[int | None] = list(range(rows))  # each current row's row in the batch (None: padding)
        self.ended: dict[int, Candidate] = {}

    def __call__(self, step: int, cache, decoder: TokenDecoder, seq: Tensor):
        """-> (cache, seq): narrowed to the running rows where they fit a quarter of the current ones."""
        # under SHARE rows nothing can move (a quarter of them is no row): no host read at batch 1 to 3
        if not self.enabled or len(self.origin) < SHARE or step % EVERY != EVERY - 1:
            return cache, seq
        running = torch.nonzero(~decoder.done).flatten().tolist()
        size = 1 << max(0, len(running) - 1).bit_length()
        if not running or size * SHARE > len(self.origin):
            return cache, seq
        still = set(running)
        for i, (row, candidate) in enumerate(zip(self.origin, decoder.finalize(seq))):
            if row is not None and i not in still:
                self.ended[row] = candidate
        picked = running + [running[0]] * (size - len(running))
        rows = torch.tensor(picked, device=seq.device)
        self.origin = [self.origin[i] for i in running] + [None] * (size - len(running))
        decoder.narrow(rows)
        return cache.narrowed(rows), seq.index_select(0, rows)

    def candidates(self, last: list[Candidate]) -> list[Candidate]:
        """The batch's hypotheses in its order: the rows set aside and the last rows' (padding dropped)."""
        out = dict(self.ended)
        out.update({row: c for row, c in zip(self.origin, last) if row is not None})
        return [out[row] for row in range(len(out))]
