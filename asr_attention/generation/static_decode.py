"""Decoding with every cache preallocated, so that a decode step has fixed shapes and addresses and, on a GPU, can
run as one captured CUDA graph (a step is launch-bound at small batches: a dozen kernels per layer).

Each decoder self-attention site keeps its variant's own preallocated cache (`decode_buffers`: `slots` token
slots, or a running state) and steps through it (`decode_step`), writing at the step's position -- a device
tensor, so a replay reads no host value -- and attending over the slots written so far. The cross caches are built
once per batch of utterances from the encoder output by the sites' own variants, then kept in (and later copied
into) fixed buffers. Tokens are fed one at a time, the prompt too, so the eager steps and the replayed ones are the
same computation: `Whisper.decode` with this object as its cache. compile: the step through torch.compile first (one
graph for the whole decoder: each LayerNorm fused with its residual add, each cache write in place); graph: the
step replayed as a CUDA graph, captured on the first single-token step.

Under autocast (a bf16-mixed trainer's test step) the step computes in the autocast dtype, as the growing caches do:
the self caches are then kept in that dtype (`dtype`), and the graph is captured with autocast's weight-cast cache
off, so the captured casts read the Parameters themselves (a cached cast would be a copy made before the capture,
stale once training changes the weights and freed when the autocast region ends)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from asr_attention.attention.base import Cache, cache_nbytes
from asr_attention.backbones.whisper.adapter import Whisper, cross_per_utterance, cross_rows


class PreallocatedCache:
    """For `batch` rows (`beams` per utterance, sharing its cross caches) and up to `slots` fed tokens (prompt +
    max_tokens - 1: the last token is emitted, never fed). The loop's cache object (see caches.py), and the cache
    `Whisper.decode` steps through. dtype: the self caches' floating dtype (None: each variant's own; under autocast,
    the autocast dtype: what the step writes into them)."""

    def __init__(self, backbone: Whisper, batch: int, slots: int, beams: int = 1, graph: bool = False,
                 compile: bool = False, dtype: torch.dtype | None = None):
        if graph and not torch.cuda.is_available():
            raise RuntimeError("graph=True needs CUDA")
        layers = backbone.decoder.layers
        for layer in layers:
            if layer.self_attn.variant.position != "none":
                raise ValueError(f"static decoding supports absolute positions only, not "
                                 f"{layer.self_attn.variant.position!r}")
        device = backbone.decoder.embed_tokens.weight.device
        self.backbone, self.batch, self.beams, self.graph, self.compile = backbone, batch, beams, graph, compile
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(slots, device=device)
        self.fed = 0  # tokens fed (host side): past `slots` a write would land outside the buffers
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.dtype = dtype
        self.self_buffers = [_in_dtype(layer.self_attn.variant.decode_buffers(batch, slots), dtype)
                             for layer in layers]
        self.cross: list[Cache | None] = [None] * len(layers)
        self._memory_copy: Tensor | None = None  # the cross layers' one latent under cross_latent=memory
        self._memory_owner = -1  # the layer that copies it in at each new batch
        # the decoder alone (token choice stays eager); fullgraph: no part of it left eager unseen
        self._step = torch.compile(self._forward, fullgraph=True, dynamic=False) if compile else self._forward
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: Tensor | None = None
        self.pool, self.pool_key = None, None  # the fast path's CachePool that made it, and its key there

    # ---- what Whisper.decode asks of a cache -------------------------------------------------------------------
    def positions(self, n: int) -> Tensor:
        if n != 1:
            raise ValueError("a preallocated cache is fed one token at a time")
        return self.position

    def self_attention(self, i: int, site: nn.Module, x: Tensor) -> Tensor:
        keep = (self.slots <= self.position)[None, None, None, :]  # slots written so far, this one included
        return site.variant.decode_step(x, self.self_buffers[i], self.position, keep)

    def cross_attention(self, i: int, site: nn.Module, x: Tensor, memory: Tensor | None) -> Tensor:
        """memory: build layer i's cross cache from it (into the same buffers as before); None: read it."""
        if memory is None:
            return cross_per_utterance(site, x, None, self.cross[i], self.beams)[0]
        out, built = cross_per_utterance(site, x, memory, None, self.beams)
        if self.cross[i] is None:
            self.cross[i] = Cache({k: self._owned(t, memory, i) for k, t in built.items()}, from_memory=True)
        else:
            for name, t in self.cross[i].items():
                if t is not self._memory_copy or i == self._memory_owner:  # the shared latent: copied once
                    t.copy_(built[name])
        return out

    def _owned(self, t: Tensor, memory: Tensor, i: int) -> Tensor:
        """A cross cache tensor this cache may write into later: the caller's encoder output itself (a latent that
        is the input, attention.cross_latent=memory) is copied once, in the dtype the step computes in (under
        autocast a latent made by a projection is in it too), and that copy shared by every layer holding it."""
        if t.data_ptr() != memory.data_ptr():
            return t
        dtype = t.dtype if self.dtype is None or not t.is_floating_point() else self.dtype
        if self._memory_copy is None:  # the first layer of the first build; the others share it
            self._memory_copy = t.to(dtype, copy=True)
            self._memory_owner = i
        return self._memory_copy

    def advance(self, n: int) -> None:
        self.position += n

    # ---- what the decoding loop asks of a cache ----------------------------------------------------------------
    def logits(self, tokens: Tensor, memory: Tensor | None = None) -> Tensor:
        """Feed tokens (batch, T) one at a time -> the next-token logits (batch, V), float; memory starts a new
        decode (positions and self caches emptied, cross caches built from it, eagerly, with its first token).
        Every other token, the prompt's included, goes through the step (compiled, replayed as a CUDA graph, as
        asked); the returned logits of a replay are the graph's own output: read them before the next step."""
        if memory is not None:
            self.reset()
        if self.fed + tokens.shape[1] > len(self.slots):
            raise ValueError(f"{self.fed + tokens.shape[1]} tokens fed: this cache holds {len(self.slots)} slots")
        self.fed += tokens.shape[1]
        for i in range(tokens.shape[1]):
            self.token.copy_(tokens[:, i: i + 1])
            # the first token of a new decode also builds the cross caches (eager); every other one, the prompt's
            # too, is the step: at batch 1 the prompt's eager steps cost as much as the text's replays
            logits = self._forward(memory) if i == 0 and memory is not None else self._one_step()
        return logits

    def _one_step(self) -> Tensor:
        if not self.graph:
            return self._step()
        if self._graph is None:
            self._capture()
        self._graph.replay()
        return self._graph_logits

    def _forward(self, memory: Tensor | None = None) -> Tensor:
        """Feed self.token at self.position -> next-token logits (batch, V), float."""
        return self.backbone.decode(self.token, memory, self)[:, -1].float()

    def reset(self) -> None:
        """Empty: position 0, self caches zeroed (a running state starts at zero; slots not yet written are masked,
        so zeroing them is only tidy); the cross caches are rebuilt by the next call with memory."""
        self.position.zero_()
        self.fed = 0
        for buffers in self.self_buffers:
            for t in buffers.values():
                t.zero_()

    def reorder(self, rows: Tensor) -> None:
        """Self caches follow their rows (beams), copied within the same buffers."""
        for buffers in self.self_buffers:
            for t in buffers.values():
                t.copy_(t.index_select(0, rows))

    def narrowed(self, rows: Tensor) -> "PreallocatedCache":
        """The same decode for these rows only, in this order (generation/compaction.py): a cache of len(rows) rows
        from the backbone's pool where this one came from it (its graph captured once per size), else a new one;
        self caches, cross caches and the position copied in."""
        if self.pool is not None:
            to = self.pool.get_key(self.backbone, (len(rows), *self.pool_key[1:]))
        else:
            to = PreallocatedCache(self.backbone, len(rows), len(self.slots), graph=self.graph, compile=self.compile,
                                   dtype=self.dtype)
        for mine, theirs in zip(self.self_buffers, to.self_buffers):
            for name, t in theirs.items():
                t.copy_(mine[name].index_select(0, rows))
        picked = cross_rows(self.cross, rows)
        if to.cross[0] is None:  # never built: these tensors become its own (one shared latent stays one)
            to.cross = picked
        else:
            copied = set()
            for cache, new in zip(to.cross, picked):
                for name, t in cache.items():
                    if id(t) not in copied:
                        t.copy_(new[name])
                        copied.add(id(t))
        to.position.copy_(self.position)
        to.fed = self.fed
        return to

    def restart(self, utterances: Tensor) -> "PreallocatedCache":
        """Some utterances decoded again from the prompt, one row each, in a cache of their own (eager): their
        cross caches kept, self caches empty."""
        again = PreallocatedCache(self.backbone, len(utterances), len(self.slots), dtype=self.dtype)
        again.cross = cross_rows(self.cross, utterances)
        return again

    @property
    def rows(self) -> int:
        return self.batch

    @property
    def device(self) -> torch.device:
        return self.position.device

    def _capture(self) -> None:
        """Warm up on a side stream (as CUDA graph capture requires), capture one step, then put back the state
        the warm-up steps changed. Each of these steps writes the first slot: the next free one may be the
        buffers' last, and a replay reads its position from the state, not from the capture."""
        saved = [t.clone() for t in self._state()]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), uncached_autocast(self.device.type):
            for _ in range(2):  # compiles here, if at all
                self.position.zero_()
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self.position.zero_()
        with torch.cuda.graph(graph), uncached_autocast(self.device.type):
            self._graph_logits = self._step()
        for t, s in zip(self._state(), saved):
            t.copy_(s)
        self._graph = graph

    def _state(self) -> list[Tensor]:
        return [self.position, self.token] + [t for buffers in self.self_buffers for t in buffers.values()]

    def nbytes(self) -> dict[str, int]:
        return {"decoder_self": cache_nbytes(*self.self_buffers), "cross": cache_nbytes(*self.cross)}


def _in_dtype(buffers: dict[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    if dtype is None:
        return buffers
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in buffers.items()}


def uncached_autocast(device_type: str):
    """The autocast in force (if any) with its weight-cast cache off: inside a graph capture every cast is captured,
    reading the weights where they live."""
    if not torch.is_autocast_enabled(device_type):
        return nullcontext()
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False)
