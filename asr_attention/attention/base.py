"""The one interface every attention variant implements, and what all of them share.

A variant is built from a CanonicalMHA and called as

    out, cache = layer(x, key_padding_mask=None, pos=None, cache=None, use_cache=False, *, memory=None, causal=False)

x is (B, T, d): the queries, and without `memory` the keys and values too. The three kinds of site differ in two
arguments only, and the variant knows nothing else about the site:
- encoder self-attention: x alone. Every frame sees every frame.
- decoder self-attention: causal=True. Frame i sees frames <= i. With use_cache=True the call returns a Cache of
  its frames; the next call passes it back with the next frames (one token, or a chunk, causal within itself) and
  gets it back grown by them. Without causal, a chunk against a cache sees all of itself (a streaming encoder).
- cross-attention: memory (B, S, d), the sequence K and V come from (the encoder output); x's frames all see all
  of memory. With use_cache=True the Cache is built from memory once (Cache.from_memory); later calls pass it
  with memory=None, and it comes back unchanged.
The returned cache is None unless use_cache is set or a cache was passed.
key_padding_mask (B, S), True = padding, covers the keys this call attends to: the cached frames then x's
(self-attention), or memory's frames (cross-attention; on every call: a cache does not keep the mask).
pos is the position scheme's input: None (none), (1, 2T-1, d) relative embeddings (xl), or (2, T, hd) cos/sin of
x's frames (rotary_input). Cross-attention takes position 'none' only; under xl a call attends within its own
frames (it may build a cache, never read one).
Each variant keeps its own cache: MHA and GQA their K/V heads, MLA the latent only, linear attention its state
and normaliser. cache_bytes(frames, batch, dtype) is its analytic size for any site (frames: tokens or memory
frames); cache_nbytes(cache) the measured one. The attention dropout of the original layer (CanonicalMHA.dropout)
acts on the attention weights in training mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .canonical import CanonicalMHA
from .fast_paths import fused_xl_takes, sdpa, stack_linear
from .kernels.xl_attention import xl_attention
from .masks import attention_mask
from .positions import XLPosition, rotate_inputs


@dataclass(frozen=True, eq=False)
class Cache(Mapping[str, Tensor]):
    """What a layer keeps between calls: named tensors, each with time (or nothing, for a state) before its last
    dim. from_memory: built from another sequence (cross-attention), so later calls reuse it as it is."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    from_memory: bool = False

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


def cache_nbytes(*caches: Mapping[str, Tensor] | None) -> int:
    """Bytes the caches' tensors really hold, a tensor held by several caches once (the cross layers' one latent
    under attention.cross_latent=memory): what the measured-cache tests compare to `cache_bytes`."""
    seen, total = set(), 0
    for cache in caches:
        for t in (cache or {}).values():
            key = (t.data_ptr(), t.numel(), t.dtype, t.device)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


def linear_from(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight.data.copy_(weight)
    if bias is not None:
        layer.bias.data.copy_(bias)
    return layer


class AttentionVariant(nn.Module):
    """Shared by all variants: the query and output projections, the position scheme, dropout, call checks."""

    name: str

    def __init__(self, mha: CanonicalMHA):
        super().__init__()
        self.d_model, self.num_heads, self.head_dim = mha.d_model, mha.num_heads, mha.head_dim
        self.scale = mha.scale
        self.dropout = mha.dropout
        self.position = mha.position
        self.q_proj = linear_from(mha.q_weight, mha.q_bias)
        self.o_proj = linear_from(mha.o_weight, mha.o_bias)
        self.xl = XLPosition(mha) if mha.position == "xl" else None

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, pos: Tensor | None = None,
        cache: Cache | None = None, use_cache: bool = False, *, memory: Tensor | None = None, causal: bool = False,
    ) -> tuple[Tensor, Cache | None]:
        raise NotImplementedError

    def cache_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        """Bytes of the cache (or state) this layer keeps after `frames` frames (tokens, or memory frames)."""
        raise NotImplementedError

    def read_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        """Bytes of cache one call of this layer reads: its own cache's, unless it reads a tensor another layer
        keeps (MLA's shared cross latent): what the HBM-bound limit counts (generation/step_bytes.py)."""
        return self.cache_bytes(frames, batch, dtype)

    @property
    def dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def check_call(self, cache: Cache | None, memory: Tensor | None, causal: bool) -> None:
        cross = memory is not None or (cache is not None and cache.from_memory)
        if memory is not None and cache is not None:
            raise ValueError(f"{self.name}: pass memory (to attend to it or build its cache) or its cache, not both")
        if cross and causal:
            raise ValueError(f"{self.name}: cross-attention (memory) cannot be causal")
        if cross and self.position != "none":
            raise ValueError(f"{self.name}: cross-attention needs position 'none', this layer has "
                             f"{self.position!r} (positions relate frames of one sequence)")
        if cache is not None and not cross and self.position == "xl":
            # The XL skew assumes queries and keys cover the same frames; a chunk against a longer cache would
            # need the relative positions re-indexed, which no backbone here streams with.
            raise NotImplementedError(f"{self.name}: a chunk attending to a cache is not supported with xl positions")

    def split_heads(self, x: Tensor, heads: int | None = None) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads or self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.d_model)

    def query_input(self, x: Tensor, pos: Tensor | None) -> Tensor:
        """What the Q and K projections read: x, or x rotated for the rotary-on-inputs scheme."""
        return rotate_inputs(x, pos, self.num_heads) if self.position == "rotary_input" else x

    @staticmethod
    def kv_inputs(x: Tensor, query_input: Tensor, memory: Tensor | None) -> tuple[Tensor, Tensor]:
        """What the K and V projections read: memory (cross-attention), or x, rotated for K under rotary."""
        return (query_input, x) if memory is None else (memory, memory)

    # -- decoding one token at a time over preallocated caches (asr_attention/generation/static_decode.py) -------
    # The linear layers of x a decode step computes (Q, and what the cache keeps of a token), stacked at
    # construction into one (weight, bias): at decode time each narrow GEMM is too small to reach HBM speed, one
    # wide one is faster. Their Parameters are views of the stacked tensors (same values, no second copy), so a
    # change to a Parameter (training, load_state_dict) is what the step reads; after a move or a copy, which
    # give each Parameter its own storage again, they are stacked again.
    step_projections: tuple[str, ...] = ()
    step_projection: tuple[tuple[Tensor, Tensor | None], list[int]] | None = None

    def stack_step_projection(self) -> None:
        layers = [getattr(self, name) for name in self.step_projections]
        with torch.no_grad():
            (weight, bias), sizes = stack_linear(*((layer.weight, layer.bias) for layer in layers))
        biases = [None] * len(layers) if bias is None else bias.split(sizes)
        for layer, w, b in zip(layers, weight.split(sizes), biases):
            layer.weight.data = w
            if layer.bias is not None:
                layer.bias.data = b
        self.step_projection = (weight, bias), sizes

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.step_projections:
            self.stack_step_projection()
        return self

    def __setstate__(self, state) -> None:  # copy.deepcopy and unpickling
        super().__setstate__(state)
        if self.step_projections:
            self.stack_step_projection()

    def decode_buffers(self, batch: int, slots: int) -> dict[str, Tensor]:
        """This site's cache as causal decoder self-attention over `slots` tokens (or its state), preallocated and
        zeroed, on the variant's device and in its dtype."""
        raise NotImplementedError(f"{self.name}: no preallocated decoder cache")

    def decode_step(self, x: Tensor, buffers: dict[str, Tensor], position: Tensor, keep: Tensor) -> Tensor:
        """Causal decoder self-attention of one token per row, x (B, 1, d), at `position` (a 1-element long tensor
        on the device: a captured CUDA graph reads it at each replay): writes the token's entries into `buffers` in
        place and attends over the slots that `keep` (1, 1, 1, slots) marks as written, its own included."""
        raise NotImplementedError(f"{self.name}: no preallocated decoder cache")

    # -- fast path: Q, K and V of x from one GEMM ---------------------------------------------------------------
    def kv_projection(self, tokens: int) -> tuple[Tensor, Tensor | None] | None:
        """(weight, bias) mapping x to [K; V] in one GEMM, or None where the variant's K/V side is better left
        apart (tokens: frames in this call). Here: its k_proj and v_proj, stacked."""
        k, v = self.k_proj, self.v_proj
        return stack_linear((k.weight, k.bias), (v.weight, v.bias))[0]

    def query_projection(self) -> tuple[Tensor, Tensor | None]:
        return self.q_proj.weight, self.q_proj.bias

    def stacked_projection(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """Q, K, V of x as (B, T, .) from one GEMM over the stacked weights (one wide GEMM instead of two or three
        narrow ones), or None where `kv_projection` declines. Self-attention without rotary only."""
        kv = self.kv_projection(x.shape[0] * x.shape[1])
        if kv is None:
            return None
        (weight, bias), sizes = stack_linear(self.query_projection(), kv)
        q, kv = F.linear(x, weight, bias).split(sizes, dim=-1)
        return q, *kv.chunk(2, dim=-1)


class SoftmaxAttention(AttentionVariant):
    """MHA, GQA and MLA: softmax attention that differs in what it keeps per frame (`compress`) and how it gets
    K and V back from that (`expand`)."""

    kv_heads: int

    def compress(self, k_input: Tensor, v_input: Tensor) -> dict[str, Tensor]:
        """What this variant keeps of these frames (its cache entries), time on dim -2."""
        raise NotImplementedError

    def expand(self, kept: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """K, V as (B, kv_heads, S, hd) from what `compress` kept."""
        raise NotImplementedError

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, pos: Tensor | None = None,
        cache: Cache | None = None, use_cache: bool = False, *, memory: Tensor | None = None, causal: bool = False,
    ) -> tuple[Tensor, Cache | None]:
        self.check_call(cache, memory, causal)
        if cache is None and not use_cache:
            q, k, v = self.project(x, pos, memory)
            return self.attend(q, k, v, key_padding_mask, pos, causal), None
        q_input = self.query_input(x, pos)
        q = self.split_heads(self.q_proj(q_input))
        if cache is not None and cache.from_memory:
            kept = cache
        else:
            new = self.compress(*self.kv_inputs(x, q_input, memory))
            kept = Cache(new if cache is None else append(cache, new), from_memory=memory is not None)
        return self.attend_kept(q, kept, key_padding_mask, pos, causal), kept

    def project(self, x: Tensor, pos: Tensor | None, memory: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Q (B, H, T, hd) and K, V (B, kv_heads, S, hd) for a call that keeps nothing."""
        if memory is None and self.position != "rotary_input" and (stacked := self.stacked_projection(x)):
            q, k, v = stacked
            return self.split_heads(q), self.split_heads(k, self.kv_heads), self.split_heads(v, self.kv_heads)
        q_input = self.query_input(x, pos)
        k, v = self.expand(self.compress(*self.kv_inputs(x, q_input, memory)))
        return self.split_heads(self.q_proj(q_input)), k, v

    def attend_kept(self, q: Tensor, kept: Cache, key_padding_mask: Tensor | None, pos: Tensor | None,
                    causal: bool) -> Tensor:
        return self.attend(q, *self.expand(kept), key_padding_mask, pos, causal)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, pos: Tensor | None,
               causal: bool) -> Tensor:
        """o_proj(softmax(scale * (q.k + position scores), masked) v)."""
        if self.xl is not None and fused_xl_takes(q, k, v, causal, self.dropout_p):
            # fast path: the position scores made tile by tile inside the kernel, never a (B, H, T, T) mask
            out = xl_attention(q, k, v, self.xl.projected(pos, q.shape[-2]), self.xl.pos_bias_u,
                               self.xl.pos_bias_v, key_padding_mask, self.scale)
            return self.o_proj(out.flatten(2))
        q, mask, is_causal = self.score_terms(q, key_padding_mask, pos, causal, k.shape[-2])
        out = sdpa(q, k, v, mask, is_causal, self.scale, self.dropout_p)
        return self.o_proj(self.merge_heads(out))

    def score_terms(self, q: Tensor, key_padding_mask: Tensor | None, pos: Tensor | None, causal: bool,
                    keys: int) -> tuple[Tensor, Tensor | None, bool]:
        """The query as content scores read it (q + u under xl), and SDPA's (attn_mask, is_causal): padding,
        causality and, under xl, the position scores as an additive bias."""
        bias = None
        if self.xl is not None:
            bias = self.xl.score_bias(q, pos, self.scale)
            q = self.xl.content_query(q)
        return q, *attention_mask(key_padding_mask, bias, q.shape[-2], keys, causal, q.device)


def append(cache: Mapping[str, Tensor], new: dict[str, Tensor]) -> dict[str, Tensor]:
    """Grow each cached tensor along time (dim -2)."""
    return {name: torch.cat((cache[name], t), dim=-2) for name, t in new.items()}
