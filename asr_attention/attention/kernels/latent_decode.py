"""MLA's absorbed attention for one new token (a decode step), reading the latent once.

out[b, h] = softmax_s(scale * q[b, h] . c[b, s]) @ c[b, s]   over the frames s that `keep` keeps,

with q the query already absorbed into latent space (U_k^T q, width r) and c the latent cache (B, S, r): the keys
and the values are the same tensor. The PyTorch path (mla._few_queries_attention) runs it as two batched GEMMs that
each read the whole latent, at well under the card's bandwidth at decode shapes (benchmarks/generate: 17 % of MLA's
HBM-bound limit at large-v3 sizes). Here, FlashDecoding-style, each program takes all H heads of one utterance
over one slice of the frames: it reads its slice of c once, for the scores and the weighted sum both, keeping a
running max and normaliser per head (online softmax); the slices' partial results are then merged in PyTorch
(a few small ops over B x splits x H x r). Splits are chosen to give the card a few programs per SM.

Forward only, for t = 1 (see kernels.runs_on); shapes it does not take (a latent wider than 512, many heads) stay
on the PyTorch path. Not yet run on a GPU: its tests run in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import exact_fp32, multiprocessors, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _latent_decode_kernel(
        Q, C, KEEP, M, L, ACC,
        s_qb, s_qh, s_qr,
        s_cb, s_cs, s_cr,
        s_kb, s_ks,
        s_mb, s_ms,
        s_ab, s_as, s_ah,
        H, S, R, split_len, scale,
        HAS_KEEP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        b = tl.program_id(0)
        split = tl.program_id(1)
        heads = tl.arange(0, BLOCK_H)
        dims = tl.arange(0, BLOCK_R)
        q = tl.load(Q + b * s_qb + heads[:, None] * s_qh + dims[None, :] * s_qr,
                    mask=(heads[:, None] < H) & (dims[None, :] < R), other=0.0)
        m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_R], dtype=tl.float32)
        start = split * split_len
        end = tl.minimum(start + split_len, S)
        for s0 in range(start, end, BLOCK_S):
            frames = s0 + tl.arange(0, BLOCK_S)
            valid = frames < end
            if HAS_KEEP:
                valid = valid & (tl.load(KEEP + b * s_kb + frames * s_ks, mask=frames < end, other=0) != 0)
            c = tl.load(C + b * s_cb + frames[:, None] * s_cs + dims[None, :] * s_cr,
                        mask=(frames[:, None] < end) & (dims[None, :] < R), other=0.0)
            scores = tl.dot(q.to(c.dtype), tl.trans(c), input_precision=PRECISION) * scale
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no frame kept yet: exp(-inf - 0) = 0
            p = tl.exp(scores - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c, input_precision=PRECISION)
            m_i = m_new
        row = b * s_mb + split * s_ms + heads
        tl.store(M + row, m_i, mask=heads < H)
        tl.store(L + row, l_i, mask=heads < H)
        tl.store(ACC + b * s_ab + split * s_as + heads[:, None] * s_ah + dims[None, :], acc,
                 mask=(heads[:, None] < H) & (dims[None, :] < R))


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def supported(heads: int, latent_dim: int) -> bool:
    """Whether one program's H x r fp32 accumulator fits its registers (tl.dot's tiles are >= 16 a side)."""
    return _pow2(heads) * _pow2(latent_dim) <= 16384


def latent_decode(q: Tensor, latent: Tensor, scale: float, keep: Tensor | None = None,
                  splits: int | None = None, block_s: int | None = None) -> Tensor:
    """q: (B, H, r) absorbed queries; latent: (B, S, r), keys and values both; keep: bool broadcastable to (B, S),
    True = attend (None: every frame). -> (B, H, r) in q's dtype. splits: programs per utterance over the frames
    (None: enough for ~4 per SM on CUDA); block_s: frames per tile (None: by tile size). The tests set both."""
    b, h, r = q.shape
    if latent.shape[0] != b or latent.shape[2] != r:
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, latent {tuple(latent.shape)}")
    if not supported(h, r):
        raise ValueError(f"latent_decode takes H x r up to 16384 once padded to powers of two, got H={h}, r={r}")
    s = latent.shape[1]
    block_h, block_r = _pow2(h), _pow2(r)
    big = block_h * block_r >= 8192
    block_s = block_s or (32 if big or exact_fp32(q, latent) else 64)
    if splits is None:
        sms = multiprocessors(latent.device) if latent.is_cuda else 1
        splits = max(1, min(triton.cdiv(4 * sms, b), triton.cdiv(s, block_s)))
    split_len = triton.cdiv(triton.cdiv(s, splits), block_s) * block_s
    splits = triton.cdiv(s, split_len)
    m = torch.empty(b, splits, h, device=q.device, dtype=torch.float32)
    l_sum = torch.empty_like(m)
    acc = torch.empty(b, splits, h, r, device=q.device, dtype=torch.float32)
    if keep is None:
        keep_arg, keep_strides = m, (0, 0)  # never read (HAS_KEEP=False)
    else:
        if keep.dtype != torch.bool:
            raise TypeError(f"keep must be a bool tensor (True = attend), got {keep.dtype}")
        keep = keep.reshape(-1, keep.shape[-1]).expand(b, s)
        keep_arg, keep_strides = keep.view(torch.uint8), keep.stride()
    precision = "ieee" if exact_fp32(q, latent) else "tf32"
    _latent_decode_kernel[(b, splits)](
        q, latent, keep_arg, m, l_sum, acc,
        *q.stride(), *latent.stride(), *keep_strides, *m.stride()[:2], *acc.stride()[:3],
        h, s, r, split_len, scale,
        HAS_KEEP=keep is not None, BLOCK_H=block_h, BLOCK_S=block_s, BLOCK_R=block_r, PRECISION=precision,
        num_warps=8 if big else 4,
    )
    # merge the slices: each rescaled to the overall max (a slice that kept nothing has m = -inf: weight 0)
    top = m.amax(1, keepdim=True)
    weight = torch.exp(m - top.masked_fill(top == float("-inf"), 0.0))
    out = (acc * weight[..., None]).sum(1) / (l_sum * weight).sum(1)[..., None]
    return out.to(q.dtype)
