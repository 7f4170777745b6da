"""The interface every variant implements, and the Q/O side that all of them share.

A variant is built from a CanonicalMHA (`from_mha`), runs over (B, T, d) with a key-padding mask (True = pad),
optional positional input and an optional cache, and reports the bytes of the cache it produces.

Cache semantics (streaming encoder): a chunk attends to every cached frame plus itself. `cache` is the dict the
previous call returned (or None); with `use_cache=True` the call returns the grown cache / updated state.

Decoder sites use two more arguments:
  causal=True   each position attends to the cached positions and to x's positions up to its own (decoder
                self-attention: a whole prefix for teacher forcing, or a token at a time with a cache).
  memory        cross-attention: K/V come from this other sequence (B, S, d) instead of x (key_padding_mask then
                masks memory frames); with use_cache the call returns the cache built from it. memory may also be
                that cache, reused as it is (built once per utterance, never grown). Each variant caches its own
                kind: K/V, grouped K/V, the latent, the linear state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .canonical import CanonicalMHA
from .kernels.xl_attention import fused_xl_fits, xl_attention
from .positions import XLPosition, causal_keep, key_padding_to_sdpa, rotate_inputs

Cache = dict[str, Tensor]
KVFromProjection = Callable[[Tensor], tuple[Tensor, Tensor]]


def linear_from(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight.data.copy_(weight)
    if bias is not None:
        layer.bias.data.copy_(bias)
    return layer


def cache_nbytes(cache: Cache) -> int:
    """Bytes the cache tensors really hold: what the measured-cache tests compare to `cache_bytes`."""
    return sum(t.numel() * t.element_size() for t in cache.values())


class AttentionVariant(nn.Module):
    """Shared by all variants: the query and output projections and the position scheme."""

    name: str
    _inference_projection: tuple | None = None

    def __init__(self, mha: CanonicalMHA):
        super().__init__()
        self.d_model, self.num_heads, self.head_dim = mha.d_model, mha.num_heads, mha.head_dim
        self.scale = mha.scale
        self.position = mha.position
        self.q_proj = linear_from(mha.q_weight, mha.q_bias)
        self.o_proj = linear_from(mha.o_weight, mha.o_bias)
        self.xl = XLPosition(mha) if mha.position == "xl" else None

    @classmethod
    def from_mha(cls, mha: CanonicalMHA, **options) -> "AttentionVariant":
        return cls(mha, **options)

    def cache_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        """Bytes of the cache (or state) this layer keeps after `frames` frames."""
        raise NotImplementedError

    def split_heads(self, x: Tensor, heads: int | None = None) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads or self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.d_model)

    def query_input(self, x: Tensor, pos: Tensor | None) -> Tensor:
        """What the Q and K projections read: x, or x rotated for the rotary-on-inputs scheme."""
        return rotate_inputs(x, pos, self.num_heads) if self.position == "rotary_input" else x

    def kv_input_projection(self, tokens: int | None) -> tuple[Tensor, Tensor | None, KVFromProjection] | None:
        """Weight and bias of the K/V-side projection that reads x, and how to turn its output into K, V; None
        where stacking it with Q does not pay. tokens: frames in this call, or None for inference, where the
        stacked weights are built once."""
        raise NotImplementedError

    def input_projection(self, x: Tensor) -> tuple[Tensor, Tensor | None, list[int], KVFromProjection] | None:
        """Q and the K/V side stacked into one (weight, bias) for x: one GEMM instead of two or three narrower
        ones. Without autograd (inference) the stack is kept until a parameter changes (in place, or by .to()),
        already cast to the autocast dtype: autocast would otherwise cast it again on every call (it keeps casts
        of parameters only)."""
        if torch.is_grad_enabled():
            return self._stack_input_projection(x.shape[0] * x.shape[1])
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        key = (dtype, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        if self._inference_projection is None or self._inference_projection[0] != key:
            self._inference_projection = (key, self._stack_input_projection(None, dtype))
        return self._inference_projection[1]

    def _stack_input_projection(self, tokens: int | None, dtype: torch.dtype | None = None):
        kv_side = self.kv_input_projection(tokens)
        if kv_side is None:
            return None
        kv_weight, kv_bias, to_kv = kv_side
        (weight, bias), sizes = stack_linear(self.query_projection(), (kv_weight, kv_bias))
        if dtype is not None:
            weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
        return weight, bias, sizes, to_kv

    def query_projection(self) -> tuple[Tensor, Tensor | None]:
        return self.q_proj.weight, self.q_proj.bias

    def check_decoder_use(self, causal: bool, memory) -> None:
        if (causal or memory is not None) and self.position != "none":
            # decoders here (Whisper) add absolute positions before the layers; no scheme inside attention
            raise NotImplementedError(f"{self.name}: causal / cross-attention with position={self.position!r}")

    def check_cache(self, cache: Cache | None, use_cache: bool) -> None:
        if cache is not None and self.position == "xl":
            # The XL skew assumes queries and keys cover the same frames; a chunk against a longer cache
            # would need the relative positions re-indexed, which no backbone here streams with. Producing
            # a cache from a whole sequence (use_cache alone) is fine.
            raise NotImplementedError(f"{self.name}: a chunk attending to a cache is not supported with xl positions")


class SoftmaxAttention(AttentionVariant):
    """MHA, GQA and MLA: softmax attention that differs only in how K/V are produced and cached."""

    kv_heads: int

    def keys_values(
        self, x: Tensor, qk_in: Tensor, cache: Cache | None, use_cache: bool
    ) -> tuple[Tensor, Tensor, Cache | None]:
        """-> K, V as (B, kv_heads, S, hd) over cache + chunk, and the new cache (None unless asked)."""
        raise NotImplementedError

    def cross_attention(self, x: Tensor, memory: Tensor | Cache, key_padding_mask: Tensor | None,
                        use_cache: bool) -> tuple[Tensor, Cache | None]:
        """x's queries against memory's keys and values; memory may be the cache a previous call returned."""
        raise NotImplementedError

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        causal: bool = False,
        memory: Tensor | Cache | None = None,
    ) -> tuple[Tensor, Cache | None]:
        self.check_decoder_use(causal, memory)
        if memory is not None:
            return self.cross_attention(x, memory, key_padding_mask, use_cache)
        self.check_cache(cache, use_cache)
        stacked = None
        if self.position != "rotary_input" and cache is None and not use_cache:
            stacked = self.input_projection(x)
        if stacked is None:
            qk_in = self.query_input(x, pos)
            q = self.split_heads(self.q_proj(qk_in))
            k, v, new_cache = self.keys_values(x, qk_in, cache, use_cache)
        else:
            weight, bias, sizes, to_kv = stacked
            q, projected = F.linear(x, weight, bias).split(sizes, dim=-1)
            q = self.split_heads(q)
            k, v = to_kv(projected)
            new_cache = None
        if self.xl is not None and fused_xl_fits(q, k, v):
            # inference: the position scores are made tile by tile inside the kernel, never a (B, H, T, T) mask
            xl = self.xl
            out = xl_attention(q, k, v, xl.projected(pos, q.shape[-2]), xl.pos_bias_u, xl.pos_bias_v,
                               key_padding_mask, self.scale)
            return self.o_proj(out.flatten(2)), new_cache
        bias = None
        if self.xl is not None:
            bias = self.xl.score_bias(q, pos, self.scale)
            q = self.xl.content_query(q)
        mask = key_padding_to_sdpa(key_padding_mask, bias)
        if causal:
            mask = causal_keep(mask, q.shape[-2], k.shape[-2], q.device)
        return self.o_proj(self.merge_heads(self.attend(q, k, v, mask))), new_cache

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """SDPA over (B, H, T, hd) queries and (B, kv_heads, S, hd) keys / values."""
        grouped = self.kv_heads != self.num_heads
        if grouped and not flash_takes(q, mask):
            # SDPA shares grouped K/V heads (enable_gqa) only in its flash and math kernels; the math kernel would
            # build the (B, H, T, S) scores, so copy K/V per head (MHA's size) for the memory-efficient kernel
            k, v = (t.repeat_interleave(self.num_heads // self.kv_heads, dim=1) for t in (k, v))
            grouped = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=grouped)


def flash_takes(q: Tensor, mask: Tensor | None) -> bool:
    """Whether SDPA's flash kernel can take this call: CUDA, 16-bit, no attn_mask, head_dim <= 256."""
    return q.is_cuda and mask is None and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256


def stack_linear(*layers: tuple[Tensor, Tensor | None]) -> tuple[tuple[Tensor, Tensor | None], list[int]]:
    """Several (weight, bias) maps of the same input as one; a missing bias counts as zeros."""
    weight = torch.cat([w for w, _ in layers])
    bias = None
    if any(b is not None for _, b in layers):
        bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in layers])
    return (weight, bias), [w.shape[0] for w, _ in layers]


def stacked_kv(k_proj: nn.Linear, v_proj: nn.Linear) -> tuple[Tensor, Tensor | None]:
    """K and V projections as one (weight, bias)."""
    return stack_linear((k_proj.weight, k_proj.bias), (v_proj.weight, v_proj.bias))[0]


def append(cache: Cache | None, **new: Tensor) -> Cache:
    """Grow each cached tensor along time (dim -2)."""
    if cache is None:
        return dict(new)
    return {k: torch.cat((cache[k], v), dim=-2) for k, v in new.items()}
