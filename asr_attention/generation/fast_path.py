"""Which cache `transcribe` decodes through, and the preallocated caches kept between batches.

The fast path (model.decoding.fast): "auto" decodes through a `PreallocatedCache` with its step replayed as a CUDA
graph where the encoder output is on CUDA and the backbone is in eval mode, else through growing caches; true: a
preallocated cache everywhere (its step eager on a CPU or in train mode, the same computation); false: growing
caches. compile: the step through torch.compile before the capture (tens of seconds per batch shape).

A graph is captured once per cache, so the caches live on in a `CachePool` on the backbone, one per (rows, beams,
slots, encoder frames, autocast dtype, graph, compile, inference mode), at most 8: the batches of an epoch share
one, the smaller last batch has its own, and so do the quarter-size batches compaction moves running rows into
(compaction.py). A replay reads every weight at the address it had at capture: training's optimizer steps and
load_state_dict write the Parameters in place, so replays follow them; a move (`.to()`), a converted site or any
Parameter replaced changes the weights' fingerprint, and the pool then drops every cache (and its graph) before
building new ones."""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch
from torch import Tensor

from asr_attention.backbones.whisper.adapter import Whisper

from .caches import GrowingCache
from .static_decode import PreallocatedCache

POOL_ATTRIBUTE = "_decoding_cache_pool"


def fast_setting(value) -> str | bool:
    """model.decoding.fast as given (auto, true, false; also on / off) -> "auto", True or False."""
    named = {"auto": "auto", "on": True, "off": False, "true": True, "false": False}
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in named:
        return named[value.lower()]
    raise ValueError(f"model.decoding.fast={value!r}: expected auto (preallocated caches and a CUDA graph on a GPU), "
                     "true (preallocated caches everywhere) or false (growing caches)")


def uses_preallocated(backbone: Whisper, memory: Tensor, fast) -> bool:
    return fast is True or (fast == "auto" and memory.is_cuda and not backbone.training)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def loop_cache(backbone: Whisper, memory: Tensor, beams: int, max_tokens: int, fast, compile: bool = False):
    """The cache object the decoding loop reads for `memory` (utterances, frames, d) with `beams` rows per utterance
    and up to `max_tokens` text tokens: a pooled `PreallocatedCache` (see the module docstring) or a growing one."""
    if not uses_preallocated(backbone, memory, fast):
        return GrowingCache(backbone, beams)
    graph = memory.is_cuda and not backbone.training
    return cache_pool(backbone).get(backbone, memory, beams, len(backbone.tokens.prompt) + max_tokens - 1, graph,
                                    compile)


def cache_pool(backbone: Whisper) -> "CachePool":
    """The backbone's pool, made on first use. Kept in the module's __dict__ (not a submodule, not state): a copy of
    the backbone (deepcopy, pickling) gets an empty pool of its own."""
    pool = backbone.__dict__.get(POOL_ATTRIBUTE)
    if pool is None:
        pool = backbone.__dict__[POOL_ATTRIBUTE] = CachePool()
    return pool


def release_caches(backbone: Whisper) -> None:
    """Free the backbone's pooled caches and their graphs (e.g. before measuring another batch size's memory)."""
    pool = backbone.__dict__.get(POOL_ATTRIBUTE)
    if pool is not None:
        pool.clear()


class CachePool:
    """Up to `capacity` preallocated caches, least recently used dropped first, valid for the weights they were
    made with (`WeightsFingerprint`)."""

    def __init__(self, capacity: int = 8):
        if capacity < 1:
            raise ValueError(f"capacity={capacity}: a pool holds at least one cache")
        self.capacity = capacity
        self.caches: OrderedDict[tuple, PreallocatedCache] = OrderedDict()
        self.weights: WeightsFingerprint | None = None
        self.built = 0  # caches made so far (each captures its own graph on first use)

    def get(self, backbone: Whisper, memory: Tensor, beams: int, slots: int, graph: bool,
            compile: bool) -> PreallocatedCache:
        dtype = autocast_dtype(memory.device.type)
        # inference mode (Lightning's val and test steps) makes inference tensors, which no in-place write outside
        # it may touch: a cache made there serves there only
        key = (memory.shape[0] * beams, beams, slots, memory.shape[1], dtype, graph, compile,
               torch.is_inference_mode_enabled())
        return self.get_key(backbone, key)

    def get_key(self, backbone: Whisper, key: tuple) -> PreallocatedCache:
        """The cache for `key` (rows, beams, slots, encoder frames, autocast dtype, graph, compile, inference mode),
        made if missing; compaction asks for smaller row counts of a cache's own key."""
        if self.weights is None or not self.weights.matches(backbone):
            self.clear()
            self.weights = WeightsFingerprint(backbone)
        cache = self.caches.pop(key, None)
        if cache is None:
            while len(self.caches) >= self.capacity:
                self.caches.popitem(last=False)
            rows, beams, slots, _, dtype, graph, compile, _ = key
            cache = PreallocatedCache(backbone, rows, slots, beams=beams, graph=graph, compile=compile, dtype=dtype)
            cache.pool, cache.pool_key = self, key
            self.built += 1
        self.caches[key] = cache  # most recently used last
        return cache

    def clear(self) -> None:
        self.caches.clear()
        self.weights = None

    def __len__(self) -> int:
        return len(self.caches)

    def __deepcopy__(self, memo) -> "CachePool":
        return CachePool(self.capacity)

    def __getstate__(self) -> dict:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])


class WeightsFingerprint:
    """Every tensor a decode step reads from the decoder, by identity and address: the Parameters (the output
    projection's too) and the stacked step projections they are views of."""

    def __init__(self, backbone: Whisper):
        tensors = _step_tensors(backbone)
        self.refs = [weakref.ref(t) for t in tensors]
        self.addresses = [(t.data_ptr(), t.dtype, t.device) for t in tensors]

    def matches(self, backbone: Whisper) -> bool:
        tensors = _step_tensors(backbone)
        return (len(tensors) == len(self.refs) and all(r() is t for r, t in zip(self.refs, tensors))
                and all(a == (t.data_ptr(), t.dtype, t.device) for a, t in zip(self.addresses, tensors)))


def _step_tensors(backbone: Whisper) -> list[Tensor]:
    params = list(backbone.decoder.parameters()) + list(backbone.model.proj_out.parameters())
    stacked = []
    for layer in backbone.decoder.layers:
        for site in (layer.self_attn, layer.encoder_attn):
            projection = getattr(site.variant, "step_projection", None)
            if projection is not None:
                (weight, bias), _ = projection
                stacked += [weight] + ([] if bias is None else [bias])
    return params + stacked
