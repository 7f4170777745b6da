"""Greedy decoding with every cache preallocated, so that a decode step has fixed shapes and addresses and, on a
GPU, runs as one captured CUDA graph (a step is launch-bound at small batches: a dozen kernels per layer).

The cross caches are built once per batch of utterances from the encoder output by the sites' own variants, then
copied into fixed buffers. Each self-attention keeps `prompt + steps - 1` token slots per layer, written at the
step's position -- a device tensor, so a replay reads no host value -- and attends over every slot with those not
yet written masked out (linear attention keeps its running state instead). Tokens are fed one at a time, the
prompt too, so the eager steps and the replayed ones are the same computation. The layer computation is
`Whisper._layer`; only the attention modules it calls are swapped for the static ones while decoding."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from asr_attention.backbones.whisper import LayerCache, Whisper
from asr_attention.decoding import suppress_mask


class StaticSelfAttention(nn.Module):
    """A decoder self-attention variant over its preallocated cache (`decode_buffers`, `decode_step`); called like
    the site it stands in for: (x, cache, use_cache) -> (out, cache), x one token per row."""

    def __init__(self, variant: nn.Module, batch: int, slots: int, position: Tensor):
        super().__init__()
        if variant.position != "none":
            raise ValueError(f"static decoding supports absolute positions only, not {variant.position!r}")
        self.variant, self.position = variant, position
        self.buffers = variant.decode_buffers(batch, slots)
        self.slots = torch.arange(slots, device=position.device)

    def reset(self) -> None:
        """Empty: a running state starts at zero; slots not yet written are masked, so zeroing them is only tidy."""
        for t in self.buffers.values():
            t.zero_()

    def forward(self, x: Tensor, cache=None, use_cache: bool = True):
        keep = (self.slots <= self.position)[None, None, None, :]  # slots written so far, this one included
        return self.variant.decode_step(x, self.buffers, self.position, keep), self.buffers


class StaticCrossAttention(nn.Module):
    """A cross-attention site whose cache, built from memory by the site itself, lives in fixed buffers."""

    def __init__(self, site: nn.Module):
        super().__init__()
        self.site = site
        self.buffers: dict[str, Tensor] | None = None

    def forward(self, x: Tensor, memory: Tensor | None = None, cache=None, use_cache: bool = True):
        if memory is None:
            out, _ = self.site(x, None, self.buffers, True)
            return out, self.buffers
        out, built = self.site(x, memory, None, True)
        if self.buffers is None:
            self.buffers = built
        else:
            for name, t in self.buffers.items():
                t.copy_(built[name])
        return out, self.buffers


class StaticGreedy:
    """Greedy decoding of up to `max_steps` tokens for `batch` rows of one backbone, caches preallocated; graph:
    replay the step as a CUDA graph (captured on the first call); compile: the step through torch.compile first
    (one graph for the whole decoder: each LayerNorm fused with its residual add, each cache write in place), so a
    replay launches fewer kernels."""

    def __init__(self, backbone: Whisper, batch: int, max_steps: int, graph: bool = False, compile: bool = False):
        if graph and not torch.cuda.is_available():
            raise RuntimeError("graph=True needs CUDA")
        self.backbone, self.batch, self.max_steps, self.graph = backbone, batch, max_steps, graph
        # the decoder alone (token choice and logging stay eager); fullgraph: no part of it left eager unseen
        self._decode = torch.compile(self._forward, fullgraph=True, dynamic=False) if compile else self._forward
        device = backbone.model.device
        self.prompt = torch.tensor(backbone.tokens.prompt, device=device)
        slots = len(self.prompt) + max_steps - 1  # the last token is emitted, never fed
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.out = torch.zeros(batch, max_steps, dtype=torch.long, device=device)
        layers = backbone.decoder.layers
        self.self_sites = [StaticSelfAttention(layer.self_attn.variant, batch, slots, self.position) for layer in layers]
        self.cross_sites = [StaticCrossAttention(layer.encoder_attn) for layer in layers]
        self.caches = [LayerCache() for _ in layers]
        self.never, self.first = suppress_mask(backbone, backbone.model.config.vocab_size, device)
        self.logits: list[Tensor] | None = None  # set to [] to keep every step's logits (tests)
        self._graph: torch.cuda.CUDAGraph | None = None

    @contextlib.contextmanager
    def _static_sites(self):
        layers = self.backbone.decoder.layers
        originals = [(layer.self_attn, layer.encoder_attn) for layer in layers]
        try:
            for layer, s, c in zip(layers, self.self_sites, self.cross_sites):
                layer.self_attn, layer.encoder_attn = s, c
            yield
        finally:
            for layer, (s, c) in zip(layers, originals):
                layer.self_attn, layer.encoder_attn = s, c

    def _forward(self, memory: Tensor | None = None) -> Tensor:
        """Feed self.token at self.position -> next-token logits (B, V), float."""
        dec = self.backbone.decoder
        x = dec.embed_tokens(self.token) + dec.embed_positions.weight.index_select(0, self.position)
        for layer, cache in zip(dec.layers, self.caches):
            x = self.backbone._layer(layer, x, memory, cache)
        self.position += 1
        return self.backbone.model.proj_out(dec.layer_norm(x))[:, -1].float()

    def _emit(self, logits: Tensor, banned: Tensor) -> None:
        if self.logits is not None:
            self.logits.append(logits.clone())
        token = logits.masked_fill(banned, float("-inf")).argmax(-1)
        self.out.index_copy_(1, self.column, token[:, None])
        self.token.copy_(token[:, None])
        self.column += 1

    def _step(self) -> None:
        self._emit(self._decode(), self.never)

    @torch.no_grad()
    def __call__(self, memory: Tensor, steps: int | None = None) -> Tensor:
        """memory (batch, frames, d) -> tokens (batch, steps)."""
        steps = self.max_steps if steps is None else steps
        if memory.shape[0] != self.batch or not 1 <= steps <= self.max_steps:
            raise ValueError(f"memory batch {memory.shape[0]} / steps {steps}: this decoder was built for batch "
                             f"{self.batch} and 1..{self.max_steps} steps")
        self._rewind()
        for site in self.self_sites:
            site.reset()
        for cache in self.caches:
            cache.cross = None  # rebuilt from this memory (into the same buffers)
        with self._static_sites():
            for i, token in enumerate(self.prompt):
                self.token.fill_(int(token))
                logits = self._forward(memory if i == 0 else None)
            self._emit(logits, self.first)
            if self.graph and steps > 1 and self._graph is None:
                self._capture()
            for _ in range(steps - 1):
                self._graph.replay() if self._graph is not None else self._step()
        return self.out[:, :steps].clone()

    def _capture(self) -> None:
        """Warm up on a side stream (as CUDA graph capture requires), capture one step, then put back the state
        the warm-up steps changed. Each of these steps writes the first slot and column: the next free ones may be
        the buffers' last (prompt + max_steps - 1 slots, max_steps columns), and a replay reads its position from
        the state, not from the capture."""
        saved = [t.clone() for t in self._state()]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compiles here, if at all
                self._rewind()
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self._rewind()
        with torch.cuda.graph(graph):
            self._step()
        for t, s in zip(self._state(), saved):
            t.copy_(s)
        self._graph = graph

    def _rewind(self) -> None:
        self.position.zero_()
        self.column.zero_()

    def _state(self) -> list[Tensor]:
        return [self.position, self.column, self.token] + [t for s in self.self_sites for t in s.buffers.values()]

    def cache_nbytes(self) -> dict[str, int]:
        def total(buffers):
            return sum(t.numel() * t.element_size() for b in buffers for t in (b or {}).values())
        return {"decoder_self": total(s.buffers for s in self.self_sites),
                "cross": total(c.buffers for c in self.cross_sites)}
