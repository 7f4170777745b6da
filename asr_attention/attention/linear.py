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
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, Cache | None]:
        qk_in = self.query_input(x, pos)
        q = self.split_heads(self.q_proj(qk_in))
        if self.xl is not None:
            q = self.xl.content_query(q)
        phi_q = self.feature_map(q)
        phi_k = self.feature_map(self.split_heads(self.k_proj(qk_in)))
        v = self.v_proj(x)
        if key_padding_mask is not None:
            phi_k = phi_k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        if cache is None and not use_cache:
            if runs_on(phi_q, phi_k, v) and supported(self.feature_dim, self.head_dim):
                b, t, _ = v.shape
                heads = linear_attention(phi_q.transpose(1, 2), phi_k.transpose(1, 2),
                                         v.view(b, t, self.num_heads, self.head_dim), self.eps)
                return self.o_proj(heads.view(b, t, self.d_model)), None
            return self.o_proj(self._whole_sequence(phi_q, phi_k, v)), None
        v = self.split_heads(v)
        state = torch.einsum("bhtf,bhtd->bhfd", phi_k, v)
        normaliser = phi_k.sum(dim=2)
        if cache is not None:
            state, normaliser = state + cache["state"], normaliser + cache["normaliser"]
        numerator = torch.einsum("bhtf,bhfd->bhtd", phi_q, state)
        denominator = torch.einsum("bhtf,bhf->bht", phi_q, normaliser)[..., None] + self.eps
        out = self.o_proj(self.merge_heads(numerator / denominator))
        return out, {"state": state, "normaliser": normaliser}

    def _whole_sequence(self, phi_q: Tensor, phi_k: Tensor, v: Tensor) -> Tensor:
        """phi_q, phi_k: (B, H, T, F) views; v: (B, T, d) -> (B, T, d) attention output before o_proj.

        All heads share one (H*F, d) state phi(K)^T V, masked to its per-head diagonal blocks: H times the
        multiply-adds of per-head states, but plain GEMMs over (B, T, .) with no transposed copies. The head
        normalisers ride along as H extra state columns, so one GEMM yields numerator and denominator."""
        b, h, t, f = phi_q.shape
        hd = self.head_dim
        phi_q, phi_k = (p.transpose(1, 2).reshape(b, t, h * f) for p in (phi_q, phi_k))
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
