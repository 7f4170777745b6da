"""Linear attention: softmax(q·k) replaced by phi(q)·phi(k), computed in O(T) as phi(Q) (phi(K)^T V).

Same Q/K/V/O weights as the MHA it comes from. Offline encoding is non-causal (every frame sees every frame);
streaming keeps a running state S = sum phi(k) v^T and normaliser z = sum phi(k), constant in size.
A whole sequence is computed in the (B, T, d) layout the projections produce, with all heads in one dense state
(`_whole_sequence`); the per-head (B, H, T, hd) form needs strided copies that cost more than the attention.
Inference on CUDA instead runs a Triton kernel (kernels/linear_attention.py) that keeps per-head states and reads
the heads in place through strides, so it does 1/H of the dense path's multiply-adds.
The Transformer-XL position term needs the full T x T score matrix, so under xl positions it is dropped (the
content bias u is kept); rotary-on-inputs is kept as is.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import AttentionVariant, Cache, linear_from, stacked_kv
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

    def kv_input_projection(self, tokens: int | None):
        return (*stacked_kv(self.k_proj, self.v_proj), lambda kv: kv.chunk(2, dim=-1))

    def query_projection(self) -> tuple[Tensor, Tensor | None]:
        """Under xl positions the query reads q + u (content bias): folded into the stacked bias."""
        w, b = self.q_proj.weight, self.q_proj.bias
        if self.xl is None:
            return w, b
        u = self.xl.pos_bias_u.flatten()
        return w, u if b is None else b + u

    def _heads(self, x: Tensor, pos: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """q (u added under xl), k, v as (B, T, H, hd) views: one stacked GEMM unless rotary rotates Q/K inputs."""
        b, t, _ = x.shape
        if self.position == "rotary_input":  # q and k read rotated inputs, v plain ones
            qk_in = self.query_input(x, pos)
            q, k, v = self.q_proj(qk_in), self.k_proj(qk_in), self.v_proj(x)
        else:
            weight, bias, sizes, to_kv = self.input_projection(x)
            q, kv = F.linear(x, weight, bias).split(sizes, dim=-1)
            k, v = to_kv(kv)
        return tuple(y.view(b, t, self.num_heads, self.head_dim) for y in (q, k, v))

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
        if causal:
            return self.causal(x, cache, use_cache)
        b, t, _ = x.shape
        q, k, v = self._heads(x, pos)
        if cache is None and not use_cache and runs_on(q, k, v) and supported(self.feature_dim, self.head_dim):
            fused = getattr(self.feature_map, "kernel", None)  # elu+1 / relu: applied inside the kernel
            if fused is None:
                q, k = self.feature_map(q), self.feature_map(k)
            heads = linear_attention(q, k, v, self.eps, key_padding_mask, feature_map=fused)
            return self.o_proj(heads.view(b, t, self.d_model)), None
        phi_q, phi_k = self.feature_map(q), self.feature_map(k)
        if key_padding_mask is not None:
            phi_k = phi_k.masked_fill(key_padding_mask[:, :, None, None], 0.0)
        if cache is None and not use_cache:
            return self.o_proj(self._whole_sequence(phi_q, phi_k, v)), None
        state = torch.einsum("bthf,bthd->bhfd", phi_k, v)
        normaliser = phi_k.sum(dim=1)
        if cache is not None:
            state, normaliser = state + cache["state"], normaliser + cache["normaliser"]
        return self._read(phi_q, state, normaliser), {"state": state, "normaliser": normaliser}

    def _read(self, phi_q: Tensor, state: Tensor, normaliser: Tensor) -> Tensor:
        """phi(q) (B, T, H, F) against a state (B, H, F, hd) and normaliser (B, H, F), one shared by all queries;
        or per query, (B, T, H, F, hd) and (B, T, H, F) (causal prefixes) -> o_proj of the attention output."""
        per_query = state.dim() == 5
        numerator = torch.einsum("bthf,bthfd->bthd" if per_query else "bthf,bhfd->bthd", phi_q, state)
        denominator = torch.einsum("bthf,bthf->bth" if per_query else "bthf,bhf->bth", phi_q, normaliser)
        b, t = phi_q.shape[:2]
        return self.o_proj((numerator / (denominator[..., None] + self.eps)).reshape(b, t, self.d_model))

    def causal(self, x: Tensor, cache: Cache | None, use_cache: bool) -> tuple[Tensor, Cache | None]:
        """Decoder self-attention: position t reads the state of the cached tokens plus x's first t (prefix sums)."""
        q, k, v = self._heads(x, None)
        phi_q, phi_k = self.feature_map(q), self.feature_map(k)
        state = torch.einsum("bthf,bthd->bthfd", phi_k, v).cumsum(dim=1)
        normaliser = phi_k.cumsum(dim=1)
        if cache is not None:
            state, normaliser = state + cache["state"][:, None], normaliser + cache["normaliser"][:, None]
        new = {"state": state[:, -1], "normaliser": normaliser[:, -1]} if use_cache else None
        return self._read(phi_q, state, normaliser), new

    def cross_attention(self, x: Tensor, memory: Tensor | Cache, key_padding_mask: Tensor | None, use_cache: bool):
        """The cache is the memory's state and normaliser (fixed size whatever its frames), built once."""
        b = x.shape[0]
        if not isinstance(memory, dict):
            k = self.k_proj(memory).view(b, -1, self.num_heads, self.head_dim)
            v = self.v_proj(memory).view(b, -1, self.num_heads, self.head_dim)
            phi_k = self.feature_map(k)
            if key_padding_mask is not None:
                phi_k = phi_k.masked_fill(key_padding_mask[:, :, None, None], 0.0)
            memory = {"state": torch.einsum("bshf,bshd->bhfd", phi_k, v), "normaliser": phi_k.sum(dim=1)}
        q = self.q_proj(x).view(b, x.shape[1], self.num_heads, self.head_dim)
        return self._read(self.feature_map(q), memory["state"], memory["normaliser"]), memory if use_cache else None

    def _whole_sequence(self, phi_q: Tensor, phi_k: Tensor, v: Tensor) -> Tensor:
        """phi_q, phi_k: (B, T, H, F); v: (B, T, H, hd) -> (B, T, d) attention output before o_proj.

        All heads share one (H*F, d) state phi(K)^T V, masked to its per-head diagonal blocks: H times the
        multiply-adds of per-head states, but plain GEMMs over (B, T, .) with no transposed copies. The head
        normalisers ride along as H extra state columns, so one GEMM yields numerator and denominator."""
        b, t, h, f = phi_q.shape
        hd = self.head_dim
        phi_q, phi_k, v = phi_q.reshape(b, t, h * f), phi_k.reshape(b, t, h * f), v.reshape(b, t, h * hd)
        heads = torch.arange(h, device=v.device)
        own_head = heads.repeat_interleave(f)[:, None] == heads[None, :]  # (H*F, H): feature row -> its head
        dense = torch.bmm(phi_k.transpose(1, 2), v)  # (B, H*F, d)
        state = torch.cat((dense * own_head.repeat_interleave(hd, dim=1), phi_k.sum(dim=1)[..., None] * own_head),
                          dim=-1)
        both = torch.bmm(phi_q, state)  # (B, T, d + H): numerators, then denominators
        numerator = both[..., :-h].view(b, t, h, hd)
        return (numerator / (both[..., -h:, None] + self.eps)).reshape(b, t, h * hd)


def _warn_xl_dropped() -> None:
    global _warned_xl
    if not _warned_xl:
        log.warning("linear attention drops the Transformer-XL relative-position term (it needs T x T scores)")
        _warned_xl = True
