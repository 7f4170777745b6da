"""A few queries against one latent cache in one pass: MLA's absorbed decode step (flash-decoding over frames).

A decode step of MLA folds its H heads into H queries of width r against the latent (B, S, r), which serves as
both K and V. The PyTorch path runs two batched GEMMs around an fp32 softmax: it reads the latent twice, writes
and re-reads the scores, and the GEMMs' generic tiles suit 20 query rows badly. Here a program loads a block of
latent frames once, scores it for every query and adds the same block, weighted, to its running sum (online
softmax in fp32). The frames are split over programs so that small batches fill the card; a second pass merges
the splits' partial sums. Forward only, one bool keep-mask per key (padding, unwritten cache slots).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import exact_fp32, runs_on, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _latent_attention_split(
        Q, K, V, KEEP, O, M, L,
        sqb, sqq, skb, sks, svb, svs, skeepb, skeeps, sob, sos, soq, smb, sms,
        QN, S, R, frames_per_split, qk_scale,
        BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr, HAS_KEEP: tl.constexpr,
        SAME_KV: tl.constexpr, PRECISION: tl.constexpr,
    ):
        b = tl.program_id(0)
        split = tl.program_id(1)
        queries = tl.arange(0, BLOCK_Q)
        dims = tl.arange(0, BLOCK_R)
        in_r = dims < R
        q = tl.load(Q + b * sqb + queries[:, None] * sqq + dims[None, :],
                    mask=(queries < QN)[:, None] & in_r[None, :], other=0.0)
        # scale and log2(e) folded into the queries once, so the softmax can use exp2
        q = (q.to(tl.float32) * qk_scale).to(Q.dtype.element_ty)
        m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_Q,), tl.float32)
        acc = tl.zeros((BLOCK_Q, BLOCK_R), tl.float32)
        start = split * frames_per_split
        stop = tl.minimum(start + frames_per_split, S)
        for s0 in range(start, stop, BLOCK_S):
            frames = s0 + tl.arange(0, BLOCK_S)
            valid = frames < stop
            k = tl.load(K + b * skb + frames[:, None] * sks + dims[None, :], mask=valid[:, None] & in_r[None, :],
                        other=0.0)
            if SAME_KV:  # one latent for K and V: the block is read once
                v = k
            else:
                v = tl.load(V + b * svb + frames[:, None] * svs + dims[None, :],
                            mask=valid[:, None] & in_r[None, :], other=0.0)
            if HAS_KEEP:
                valid &= tl.load(KEEP + b * skeepb + frames * skeeps, mask=valid, other=0) != 0
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid frame yet
            weights = tl.exp2(s - m_safe[:, None])
            correction = tl.exp2(m_i - m_safe)
            l_i = l_i * correction + tl.sum(weights, axis=1)
            acc = acc * correction[:, None] + tl.dot(weights.to(V.dtype.element_ty), v, input_precision=PRECISION)
            m_i = m_new
        rows = queries < QN
        tl.store(O + b * sob + split * sos + queries[:, None] * soq + dims[None, :], acc,
                 mask=rows[:, None] & in_r[None, :])
        tl.store(M + b * smb + split * sms + queries, m_i, mask=rows)
        tl.store(L + b * smb + split * sms + queries, l_i, mask=rows)


# Exact fp32 runs tl.dot without tensor cores: fp32 calls keep the PyTorch path (tests add float32 for wiring).
DTYPES = {torch.bfloat16, torch.float16}
MAX_QUERIES = 64  # every query's running sum stays in registers: (queries, r) in fp32
MAX_LATENT = 512


def keep_per_key(mask: Tensor | None, batch: int, frames: int) -> Tensor | None | bool:
    """An SDPA bool keep-mask that is one row per key, (B or 1, 1, 1, S), as (B or 1, S); None for no mask;
    False where the mask varies by query or is additive (the kernel cannot take it)."""
    if mask is None:
        return None
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[0] not in (1, batch):
        return False
    return mask[:, 0, 0, :].expand(mask.shape[0], frames)


def fused_latent_fits(q: Tensor, k: Tensor, v: Tensor, keep) -> bool:
    """Whether an absorbed call takes the kernel: inference on CUDA, in DTYPES, few queries, a per-key mask."""
    return (runs_on(q, k, v) and q.dtype in DTYPES and keep is not False and q.shape[-2] <= MAX_QUERIES
            and q.shape[-1] <= MAX_LATENT)


def splits_for(batch: int, frames: int, block: int, device: torch.device) -> int:
    """Frame splits per utterance: about two programs per SM, each split at least one block of frames."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(2 * sms, batch), triton.cdiv(frames, block)))


def latent_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, scale: float, splits: int | None = None,
                     block: int = 32, num_warps: int = 8, num_stages: int = 2) -> Tensor:
    """q: (B, Q, r); k, v: (B, S, r) latents (the same tensor twice when they are one); keep: (B or 1, S) bool,
    True = attend, or None. Unit stride along r. -> (B, Q, r) in q's dtype."""
    b, nq, r = q.shape
    s = k.shape[1]
    if nq > MAX_QUERIES or r > MAX_LATENT:
        raise ValueError(f"latent_attention takes <= {MAX_QUERIES} queries of width <= {MAX_LATENT}, got {nq} x {r}")
    if any(x.stride(-1) != 1 for x in (q, k, v)):
        raise ValueError("latent_attention needs unit stride along the latent")
    splits = splits or splits_for(b, s, block, q.device)
    per_split = triton.cdiv(triton.cdiv(s, splits), block) * block
    splits = triton.cdiv(s, per_split)
    partial = q.new_empty(b, splits, nq, r, dtype=torch.float32)
    m, l = (q.new_empty(b, splits, nq, dtype=torch.float32) for _ in range(2))
    if keep is None:
        keep_arg, keep_strides = q, (0, 0)  # never read (HAS_KEEP=False)
    else:
        keep_arg = keep.view(torch.uint8)
        keep_strides = (keep.stride(0) if keep.shape[0] > 1 else 0, keep.stride(1))
    _latent_attention_split[(b, splits)](
        q, k, v, keep_arg, partial, m, l,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), *keep_strides,
        partial.stride(0), partial.stride(1), partial.stride(2), m.stride(0), m.stride(1),
        nq, s, r, per_split, scale * 1.4426950408889634,
        BLOCK_Q=max(16, triton.next_power_of_2(nq)), BLOCK_S=block, BLOCK_R=max(16, triton.next_power_of_2(r)),
        HAS_KEEP=keep is not None, SAME_KV=k is v, PRECISION="ieee" if exact_fp32(q) else None,
        num_warps=num_warps, num_stages=num_stages,
    )
    # merge the splits: each holds sum_j 2^(s_j - m) c_j and sum_j 2^(s_j - m) over its frames
    top = m.amax(1, keepdim=True)
    rescale = torch.exp2(m - torch.where(top == float("-inf"), 0.0, top))
    out = (partial * rescale[..., None]).sum(1) / (l * rescale).sum(1)[..., None]
    return out.to(q.dtype)
