"""Linear attention: softmax(q.k) replaced by phi(q).phi(k), computed in O(T) as phi(Q) (phi(K)^T V).

Same Q/K/V/O weights as the MHA it comes from. What it keeps is a state S = sum phi(k) v^T and a normaliser
z = sum phi(k), constant in size; out = phi(q) S / (phi(q) . z + eps). Per site:
- encoder self-attention: S and z over the whole sequence (non-causal); a chunk against a cache adds its frames
  to the cached S, z and reads the sum (streaming).
- decoder self-attention (causal): frame i reads the running S, z after frame i (cumulative sums over the call's
  frames, on top of a cached S, z); the cache is the running S, z after the last frame.
- cross-attention: S and z over memory, made once; the cache holds them.
It forms no attention weights, so the original's attention dropout has nothing to act on and is not applied.
The Transformer-XL position term needs the full T x T score matrix, so under xl positions it is dropped (the
content bias u is kept); rotary-on-inputs is kept as is.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from .base import AttentionVariant, Cache, linear_from
from .canonical import CanonicalMHA
from .feature_maps import build_feature_map
from .kernels import runs_on
from .kernels.linear_attention import linear_attention, supported

log = logging.getLogger(__name__)
_warned_xl = False


class LinearAttention(AttentionVariant):
    name = "linear"

    def __init__(self, mha: CanonicalMHA, feature_map: str = "elu", eps: float = 1e-6):
        super().__init__(mha)
        self.k_proj = linear_from(mha.k_weight, mha.k_bias)
        self.v_proj = linear_from(mha.v_weight, mha.v_bias)
        self.feature_map = build_feature_map(feature_map, self.num_heads, self.head_dim)
        self.feature_dim = self.head_dim * getattr(self.feature_map, "expansion", 1)
        self.eps = eps
        if self.xl is not None:
            # linear attention cannot keep the O(T^2) relative-position term: keep only the u bias
            self.xl.linear_pos.requires_grad_(False)
            self.xl.pos_bias_v.requires_grad_(False)
            _warn_xl_dropped()

    def cache_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        # state (H, F, hd) + normaliser (H, F), independent of frames
        return batch * self.num_heads * self.feature_dim * (self.head_dim + 1) * dtype.itemsize

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, pos: Tensor | None = None,
        cache: Cache | None = None, use_cache: bool = False, *, memory: Tensor | None = None, causal: bool = False,
    ) -> tuple[Tensor, Cache | None]:
        self.check_call(cache, memory, causal)
        b, t, _ = x.shape
        if cache is not None and cache.from_memory:  # cross-attention: S, z over memory are made already
            phi_q = self.feature_map(self.heads(self.q_proj(x)))
            return self.o_proj(self.read(phi_q, cache["state"], cache["normaliser"])), cache
        q, k, v = self.project(x, pos, memory)
        if cache is None and not use_cache and not causal:
            return self.o_proj(self.whole_sequence(q, k, v, key_padding_mask, memory is None)), None
        phi_q, phi_k = self.feature_map(q), self.feature_map(k)
        if key_padding_mask is not None:  # the mask covers cached frames too: this call's keys are its last ones
            phi_k = phi_k.masked_fill(key_padding_mask[:, -k.shape[1]:, None, None], 0.0)
        if causal:
            out, state, normaliser = self.running(phi_q, phi_k, v, cache)
        else:
            state, normaliser = torch.einsum("bthf,bthd->bhfd", phi_k, v), phi_k.sum(dim=1)
            if cache is not None:
                state, normaliser = state + cache["state"], normaliser + cache["normaliser"]
            out = self.read(phi_q, state, normaliser)
        kept = Cache({"state": state, "normaliser": normaliser}, from_memory=memory is not None)
        return self.o_proj(out), kept if use_cache or cache is not None else None

    def decode_buffers(self, batch: int, slots: int) -> dict[str, Tensor]:
        """The running state and normaliser (no slots: their size does not grow)."""
        h, f, hd = self.num_heads, self.feature_dim, self.head_dim
        return {"state": self.q_proj.weight.new_zeros(batch, h, f, hd),
                "normaliser": self.q_proj.weight.new_zeros(batch, h, f)}

    def decode_step(self, x: Tensor, buffers: dict[str, Tensor], position: Tensor, keep: Tensor) -> Tensor:
        """The token's running-state update (a causal call against the state), written back in place."""
        out, new = self(x, cache=Cache(buffers), use_cache=True, causal=True)
        for name, t in buffers.items():
            t.copy_(new[name])
        return out

    def heads(self, y: Tensor) -> Tensor:
        """(B, T, d) -> (B, T, H, hd), a view."""
        return y.view(y.shape[0], y.shape[1], self.num_heads, self.head_dim)

    def project(self, x: Tensor, pos: Tensor | None, memory: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """q (u added under xl), k, v as (B, ., H, hd) views: one stacked GEMM for self-attention without rotary."""
        if memory is None and self.position != "rotary_input":
            q, k, v = self.stacked_projection(x)
        else:
            q_input = self.query_input(x, pos)
            k_input, v_input = self.kv_inputs(x, q_input, memory)
            q, k, v = self.q_proj(q_input), self.k_proj(k_input), self.v_proj(v_input)
        return self.heads(q), self.heads(k), self.heads(v)

    def read(self, phi_q: Tensor, state: Tensor, normaliser: Tensor) -> Tensor:
        """phi(q) S / (phi(q) . z + eps) for phi_q (B, T, H, F) against one S (B, H, F, hd), z (B, H, F)
        -> (B, T, d)."""
        numerator = torch.einsum("bthf,bhfd->bthd", phi_q, state)
        denominator = torch.einsum("bthf,bhf->bth", phi_q, normaliser)[..., None] + self.eps
        return (numerator / denominator).flatten(2)

    def running(self, phi_q: Tensor, phi_k: Tensor, v: Tensor, cache: Cache | None):
        """Causal: frame i reads S_i = S_0 + sum_{j <= i} phi(k_j) v_j^T and z_i likewise (S_0, z_0: the cache, or
        zero). -> (B, T, d) output, and S, z after the last frame. Holds (B, T, H, F, hd) running states."""
        states = torch.einsum("bthf,bthd->bthfd", phi_k, v).cumsum(dim=1)
        normalisers = phi_k.cumsum(dim=1)
        if cache is not None:
            states = states + cache["state"][:, None]
            normalisers = normalisers + cache["normaliser"][:, None]
        numerator = torch.einsum("bthf,bthfd->bthd", phi_q, states)
        denominator = torch.einsum("bthf,bthf->bth", phi_q, normalisers)[..., None] + self.eps
        return (numerator / denominator).flatten(2), states[:, -1], normalisers[:, -1]

    def whole_sequence(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                       self_attention: bool) -> Tensor:
        """Non-causal over all of k, v, keeping nothing: the Triton kernel where it takes the call (fast path:
        inference on CUDA, self-attention), else one dense state for all heads (`dense_heads`)."""
        if self_attention and runs_on(q, k, v) and supported(self.feature_dim, self.head_dim):
            fused = getattr(self.feature_map, "kernel", None)  # elu+1 / relu: applied inside the kernel
            if fused is None:
                q, k = self.feature_map(q), self.feature_map(k)
            return linear_attention(q, k, v, self.eps, key_padding_mask, feature_map=fused).flatten(2)
        phi_q, phi_k = self.feature_map(q), self.feature_map(k)
        if key_padding_mask is not None:
            phi_k = phi_k.masked_fill(key_padding_mask[:, :, None, None], 0.0)
        return self.dense_heads(phi_q, phi_k, v)

    def dense_heads(self, phi_q: Tensor, phi_k: Tensor, v: Tensor) -> Tensor:
        """phi_q: (B, T, H, F); phi_k: (B, S, H, F); v: (B, S, H, hd) -> (B, T, d) attention output before o_proj.

        All heads share one (H*F, d) state phi(K)^T V, masked to its per-head diagonal blocks: H times the
        multiply-adds of per-head states, but plain GEMMs over (B, T, .) with no transposed copies (the per-head
        (B, H, T, hd) form needs strided copies that cost more than the attention). The head normalisers ride
        along as H extra state columns, so one GEMM yields numerator and denominator."""
        b, t, h, f = phi_q.shape
        s, hd = phi_k.shape[1], self.head_dim
        phi_q, phi_k, v = phi_q.reshape(b, t, h * f), phi_k.reshape(b, s, h * f), v.reshape(b, s, h * hd)
        heads = torch.arange(h, device=v.device)
        own_head = heads.repeat_interleave(f)[:, None] == heads[None, :]  # (H*F, H): feature row -> its head
        dense = torch.bmm(phi_k.transpose(1, 2), v)  # (B, H*F, d)
        state = torch.cat((dense * own_head.repeat_interleave(hd, dim=1), phi_k.sum(dim=1)[..., None] * own_head),
                          dim=-1)
        both = torch.bmm(phi_q, state)  # (B, T, d + H): numerators, then denominators
        numerator = both[..., :-h].view(b, t, h, hd)
        return (numerator / (both[..., -h:, None] + self.eps)).reshape(b, t, h * hd)

    # -- fast path: Q, K, V from one GEMM (AttentionVariant.stacked_projection), u folded into Q's bias ----------

    def query_projection(self) -> tuple[Tensor, Tensor | None]:
        """Under xl positions the query reads q + u (content bias): folded into the stacked bias."""
        w, b = self.q_proj.weight, self.q_proj.bias
        if self.xl is None:
            return w, b
        u = self.xl.pos_bias_u.flatten()
        return w, u if b is None else b + u


def _warn_xl_dropped() -> None:
    global _warned_xl
    if not _warned_xl:
        log.warning("linear attention drops the Transformer-XL relative-position term (it needs T x T scores)")
        _warned_xl = True
