"""The cache objects behind the decoding loop: each turns tokens into the next token's logits, keeping what the
decoder has read. GrowingCache: every site's own cache, grown by concatenation (`DecoderCache`). NoCache: nothing
kept, the whole prefix read again each step (the reference the caches are tested against). The preallocated one,
with its CUDA-graph option, is static_decode.PreallocatedCache.

What the loop asks of each: logits(tokens, memory) (memory starts a new decode: the caches are emptied and the
cross caches built from it; None continues), reorder(rows) (beams), restart(utterances) (the same utterances
from the prompt, cross caches kept: the temperature fallback), beams (rows per utterance sharing its cross
caches), and for a restarted one its rows and device."""

from __future__ import annotations

import torch
from torch import Tensor

from asr_attention.backbones.whisper.adapter import DecoderCache, Whisper


class GrowingCache:
    def __init__(self, backbone: Whisper, beams: int = 1, cache: DecoderCache | None = None):
        self.backbone = backbone
        self.cache = backbone.new_cache(beams) if cache is None else cache
        self.cache.beams = beams

    @property
    def beams(self) -> int:
        return self.cache.beams

    def logits(self, tokens: Tensor, memory: Tensor | None = None) -> Tensor:
        if memory is not None:
            self.cache.clear()
        return self.backbone.decode(tokens, memory, self.cache)[:, -1].float()

    def reorder(self, rows: Tensor) -> None:
        self.cache.reorder(rows)

    def restart(self, utterances: Tensor) -> "GrowingCache":
        return GrowingCache(self.backbone, cache=self.cache.restart(utterances))

    @property
    def rows(self) -> int:
        return self.cache.utterances * self.beams

    @property
    def device(self) -> torch.device:
        return self.backbone.model.device

    def nbytes(self) -> dict[str, int]:
        return self.cache.nbytes()


class NoCache:
    def __init__(self, backbone: Whisper, beams: int = 1):
        self.backbone, self.beams = backbone, beams
        self.memory: Tensor | None = None
        self.prefix: Tensor | None = None

    def logits(self, tokens: Tensor, memory: Tensor | None = None) -> Tensor:
        if memory is not None:
            self.memory, self.prefix = memory.repeat_interleave(self.beams, 0), None
        self.prefix = tokens if self.prefix is None else torch.cat((self.prefix, tokens), dim=1)
        return self.backbone.decode(self.prefix, self.memory, None)[:, -1].float()

    def reorder(self, rows: Tensor) -> None:
        self.prefix, self.memory = self.prefix.index_select(0, rows), self.memory.index_select(0, rows)

    def restart(self, utterances: Tensor) -> "NoCache":
        again = NoCache(self.backbone)
        again.memory = self.memory[:: self.beams].index_select(0, utterances)
        return again

    @property
    def rows(self) -> int:
        return self.memory.shape[0]

    @property
    def device(self) -> torch.device:
        return self.memory.device
