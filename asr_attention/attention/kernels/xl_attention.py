"""Transformer-XL relative-position attention in one flash-style pass, the position term never in memory.

score[i, j] = scale * ((q_i + u) . k_j + (q_i + v) . p[T-1-i+j])   (SpeechBrain RelPosMHAXL, HF conformer "relative")

The SDPA path materialises the position scores as a (B, H, T, T) additive mask (1 GiB in bf16 at 16 x 1000
frames, 16 heads) and reads it back: memory traffic, not FLOPs, sets its time. Here each (query block, key
block) tile computes its own position scores: the relative offsets j - i of an M x N tile span M + N - 1
consecutive rows of p, so one (M, M+N) product of the (q + v) block against that window holds every score the
tile needs, and row a of the tile reads it shifted by -a (tl.gather). Twice the FLOPs of the content scores,
no T x T tensor. Forward only: training takes the SDPA path, whose autograd is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import exact_fp32, key_padding_arg, runs_on, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _xl_attention_kernel(
        Q, K, V, P, U, VB, PAD, O,
        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, spt, sph, spadb, spadt, sob, soh, sot,
        T, heads_per_kv, qk_scale,
        HD: tl.constexpr, BLOCK: tl.constexpr, HAS_PAD: tl.constexpr, PRECISION: tl.constexpr,
    ):
        i0 = tl.program_id(0) * BLOCK
        b = tl.program_id(1)
        h = tl.program_id(2)
        hk = h // heads_per_kv
        rows = i0 + tl.arange(0, BLOCK)
        cols = tl.arange(0, BLOCK)
        dims = tl.arange(0, HD)
        window = tl.arange(0, 2 * BLOCK)
        # scale and log2(e) folded into the queries once, so the softmax can use exp2
        q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + dims[None, :], mask=rows[:, None] < T, other=0.0)
        q = q.to(tl.float32)
        q_content = ((q + tl.load(U + h * HD + dims)[None, :]) * qk_scale).to(Q.dtype.element_ty)
        q_position = ((q + tl.load(VB + h * HD + dims)[None, :]) * qk_scale).to(Q.dtype.element_ty)
        # column c of row a in the tile reads window column c - a + BLOCK - 1
        shift = cols[None, :] - tl.arange(0, BLOCK)[:, None] + BLOCK - 1

        m_i = tl.full((BLOCK,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK,), tl.float32)
        acc = tl.zeros((BLOCK, HD), tl.float32)
        for j0 in range(0, T, BLOCK):
            keys = j0 + cols
            k = tl.load(K + b * skb + hk * skh + keys[:, None] * skt + dims[None, :], mask=keys[:, None] < T,
                        other=0.0)
            v = tl.load(V + b * svb + hk * svh + keys[:, None] * svt + dims[None, :], mask=keys[:, None] < T,
                        other=0.0)
            s = tl.dot(q_content, tl.trans(k), input_precision=PRECISION)
            # p rows T-1-i+j for this tile start at T - i0 - BLOCK + j0
            p_rows = T - i0 - BLOCK + j0 + window
            p = tl.load(P + h * sph + p_rows[:, None] * spt + dims[None, :],
                        mask=(p_rows[:, None] >= 0) & (p_rows[:, None] < 2 * T - 1), other=0.0)
            # skewed in the input dtype, as the SDPA path's bias is: half the bytes through the shuffle
            window_scores = tl.dot(q_position, tl.trans(p), input_precision=PRECISION).to(Q.dtype.element_ty)
            s += tl.gather(window_scores, shift, axis=1).to(tl.float32)
            valid = keys < T
            if HAS_PAD:
                valid &= tl.load(PAD + b * spadb + keys * spadt, mask=keys < T, other=1) == 0
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no valid key yet
            weights = tl.exp2(s - m_safe[:, None])
            correction = tl.exp2(m_i - m_safe)
            l_i = l_i * correction + tl.sum(weights, axis=1)
            acc = acc * correction[:, None] + tl.dot(weights.to(V.dtype.element_ty), v, input_precision=PRECISION)
            m_i = m_new
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(O + b * sob + h * soh + rows[:, None] * sot + dims[None, :], out.to(O.dtype.element_ty),
                 mask=rows[:, None] < T)


# Exact fp32 runs tl.dot without tensor cores, slower than the SDPA path (figures in the README), so fp32 calls
# keep the SDPA path. The tests add float32 to check the variants' wiring at fp32 tolerances.
DTYPES = {torch.bfloat16, torch.float16}
HEAD_DIMS = (16, 32, 64, 128)  # tl.dot tiles powers of two from 16; the tiles were tuned at 64 (both seed models)


def fused_xl_fits(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether this call takes the kernel: an inference call on CUDA, in one of DTYPES, with a head_dim tl.dot can
    tile."""
    return runs_on(q, k, v) and q.dtype in DTYPES and q.shape[-1] in HEAD_DIMS


def xl_attention(
    q: Tensor, k: Tensor, v: Tensor, positions: Tensor, pos_bias_u: Tensor, pos_bias_v: Tensor,
    key_padding_mask: Tensor | None, scale: float, block: int = 64, num_warps: int = 4, num_stages: int = 2,
) -> Tensor:
    """q: (B, H, T, hd); k, v: (B, KV, T, hd) with KV dividing H (GQA reads its shared heads in place);
    positions: (2T-1, H, hd), the projected relative embeddings ordered T-1 ... -(T-1); pos_bias_u/v: (H, hd);
    key_padding_mask: (B, T), True = pad. Any strides with a contiguous last dim.
    -> (B, T, H, hd), the layout the output projection reads."""
    b, h, t, hd = q.shape
    if hd not in HEAD_DIMS:
        raise ValueError(f"xl_attention needs head_dim in {HEAD_DIMS}, got {hd}")
    if positions.shape != (2 * t - 1, h, hd):
        raise ValueError(f"positions must be (2T-1, H, hd) = {(2 * t - 1, h, hd)}, got {tuple(positions.shape)}")
    if any(x.stride(-1) != 1 for x in (q, k, v, positions)):
        raise ValueError("xl_attention needs unit stride along head_dim")
    out = q.new_empty(b, t, h, hd)
    pad, pad_strides = key_padding_arg(key_padding_mask, q)
    grid = (triton.cdiv(t, block), b, h)
    _xl_attention_kernel[grid](
        q, k, v, positions, pos_bias_u.contiguous(), pos_bias_v.contiguous(), pad, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), positions.stride(0), positions.stride(1),
        *pad_strides, out.stride(0), out.stride(2), out.stride(1),
        t, h // k.shape[1], scale * 1.4426950408889634,
        HD=hd, BLOCK=block, HAS_PAD=key_padding_mask is not None, PRECISION="ieee" if exact_fp32(q) else None,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
