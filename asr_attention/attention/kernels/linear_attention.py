"""Non-causal linear attention per head, in two memory-bound passes over the (B, T, H, .) layout.

out[b, t, h] = phi_q[b, t, h] @ S[b, h] / (phi_q[b, t, h] . z[b, h] + eps),
S[b, h] = sum_t phi_k[b, t, h]^T v[b, t, h]   (F x hd),   z[b, h] = sum_t phi_k[b, t, h]   (F)

LinearAttention's PyTorch whole-sequence path keeps every head in one dense (H*F, d) state masked to its
diagonal blocks, so it does H times the multiply-adds of per-head states (at T=1000 about as many as softmax
attention), because per-head GEMMs would need transposed copies of q/k/v. Here each program reads its head's
columns in place through strides: pass 1 reads phi_k and v once and sums S and z in fp32; pass 2 reads phi_q
once, S and z from L2, and writes the output in the (B, T, H, hd) layout the output projection reads. Short
sequences (and batches whose (b, h) programs fill the GPU) run both passes in one program per head instead: one
launch, the state kept in registers. Used for whole-sequence inference on CUDA (see `runs_on`). The elementwise
feature maps (elu+1, relu) and the key padding are applied as q and k are loaded, so a batch-1 forward, which is
bound by the host's time per launch, pays no launches for them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import exact_fp32, key_padding_arg, multiprocessors, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _feature(x, FEATURE: tl.constexpr):
        """phi in fp32: 0 = none (already applied), 1 = elu(x) + 1, 2 = relu(x)."""
        x = x.to(tl.float32)
        if FEATURE == 1:
            x = tl.where(x > 0, x + 1.0, tl.exp(x))
        elif FEATURE == 2:
            x = tl.maximum(x, 0.0)
        return x

    @triton.jit
    def _sums(
        k_head, v_head, pad_row, skt, skf, svt, svd, spt, start, stop, T,
        F: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr,
        FEATURE: tl.constexpr, HAS_PAD: tl.constexpr,
    ):
        """S = sum phi(k)^T v (F x hd) and z = sum phi(k) over frames [start, stop) of one head, in fp32."""
        feats = tl.arange(0, F)
        dims = tl.arange(0, HD)
        state = tl.zeros((F, HD), tl.float32)
        z = tl.zeros((F,), tl.float32)
        for t0 in range(start, stop, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            inside = t < T
            if HAS_PAD:
                inside = inside & (tl.load(pad_row + t * spt, mask=inside, other=1) == 0)
            k = tl.load(k_head + t[:, None] * skt + feats[None, :] * skf, mask=inside[:, None], other=0.0)
            v = tl.load(v_head + t[:, None] * svt + dims[None, :] * svd, mask=inside[:, None], other=0.0)
            # phi(k) zeroed on rows past T and on padded frames: they add nothing to S or z
            k = tl.where(inside[:, None], _feature(k, FEATURE), 0.0)
            state = tl.dot(tl.trans(k.to(v.dtype)), v, state, input_precision=PRECISION)
            z += tl.sum(k, axis=0)
        return state, z

    @triton.jit
    def _emit(
        q_head, o_head, sqt, sqf, sot, state, z, t0, T, eps,
        F: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr, FEATURE: tl.constexpr,
    ):
        """Outputs of frames [t0, t0 + BLOCK_T) of one head from its S and z."""
        feats = tl.arange(0, F)
        dims = tl.arange(0, HD)
        t = t0 + tl.arange(0, BLOCK_T)
        inside = t[:, None] < T
        raw = tl.load(q_head + t[:, None] * sqt + feats[None, :] * sqf, mask=inside, other=0.0)
        q = _feature(raw, FEATURE)
        # the state meets 16-bit queries in their own dtype (as the PyTorch path's bf16 state does); the
        # normaliser stays fp32
        numerator = tl.dot(q.to(raw.dtype), state.to(raw.dtype), input_precision=PRECISION)
        denominator = tl.sum(q * z[None, :], axis=1) + eps
        out = numerator / denominator[:, None]
        tl.store(o_head + t[:, None] * sot + dims[None, :], out.to(o_head.dtype.element_ty), mask=inside)

    @triton.jit
    def _state_kernel(
        K, V, PAD, S, Z,
        skb, skt, skh, skf, svb, svt, svh, svd, spb, spt, ssbh,
        T, H, split_len,
        F: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr, ATOMIC: tl.constexpr,
        PRECISION: tl.constexpr, FEATURE: tl.constexpr, HAS_PAD: tl.constexpr,
    ):
        bh = tl.program_id(0)
        b = (bh // H).to(tl.int64)  # int64: B*T*H*F can pass 2**31 elements at long T
        h = bh % H
        start = tl.program_id(1) * split_len
        state, z = _sums(K + b * skb + h * skh, V + b * svb + h * svh, PAD + b * spb, skt, skf, svt, svd, spt,
                         start, tl.minimum(start + split_len, T), T,
                         F, HD, BLOCK_T, PRECISION, FEATURE, HAS_PAD)
        feats = tl.arange(0, F)
        s_ptrs = S + bh * ssbh + feats[:, None] * HD + tl.arange(0, HD)[None, :]
        if ATOMIC:  # T split over several programs (few heads x batch items): partial sums meet in L2
            tl.atomic_add(s_ptrs, state, sem="relaxed")
            tl.atomic_add(Z + bh * ssbh + feats, z, sem="relaxed")
        else:
            tl.store(s_ptrs, state)
            tl.store(Z + bh * ssbh + feats, z)

    @triton.jit
    def _output_kernel(
        Q, S, Z, O,
        sqb, sqt, sqh, sqf, sob, sot, soh, ssbh,
        T, H, eps,
        F: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr, FEATURE: tl.constexpr,
    ):
        bh = tl.program_id(0)  # fastest-varying: programs of one head run together and share S in L2
        b = (bh // H).to(tl.int64)
        h = bh % H
        feats = tl.arange(0, F)
        state = tl.load(S + bh * ssbh + feats[:, None] * HD + tl.arange(0, HD)[None, :])
        z = tl.load(Z + bh * ssbh + feats)
        _emit(Q + b * sqb + h * sqh, O + b * sob + h * soh, sqt, sqf, sot, state, z, tl.program_id(1) * BLOCK_T, T,
              eps, F, HD, BLOCK_T, PRECISION, FEATURE)

    @triton.jit
    def _fused_kernel(
        Q, K, V, PAD, O,
        sqb, sqt, sqh, sqf, skb, skt, skh, skf, svb, svt, svh, svd, spb, spt, sob, sot, soh,
        T, H, eps,
        F: tl.constexpr, HD: tl.constexpr, STATE_BLOCK: tl.constexpr, OUT_BLOCK: tl.constexpr,
        PRECISION: tl.constexpr, FEATURE: tl.constexpr, HAS_PAD: tl.constexpr,
    ):
        """Both passes for one head in one program: the state never leaves registers, and one launch instead of
        two (plus the zeroing): what counts where a forward is bound by launches."""
        bh = tl.program_id(0)
        b = (bh // H).to(tl.int64)
        h = bh % H
        state, z = _sums(K + b * skb + h * skh, V + b * svb + h * svh, PAD + b * spb, skt, skf, svt, svd, spt,
                         0, T, T, F, HD, STATE_BLOCK, PRECISION, FEATURE, HAS_PAD)
        for t0 in range(0, T, OUT_BLOCK):
            _emit(Q + b * sqb + h * sqh, O + b * sob + h * soh, sqt, sqf, sot, state, z, t0, T, eps,
                  F, HD, OUT_BLOCK, PRECISION, FEATURE)


def supported(feature_dim: int, head_dim: int) -> bool:
    """Shapes the kernels take: power-of-two sizes >= 16 (tl.arange and tl.dot minimums), and an fp32 F x hd
    state that fits one program's registers (hedgehog at hd=128, F=256, does not: the caller falls back)."""
    return all(n >= 16 and n & (n - 1) == 0 for n in (feature_dim, head_dim)) and feature_dim * head_dim <= 16384


def _tiles(f: int, hd: int, exact_fp32: bool, fused: bool) -> tuple[int, int, int]:
    """(frames per tile in pass 1, frames per tile in pass 2, warps). The two-pass tiles are untimed: picked so
    that ptxas for sm_90 reports no register spills at F x hd in {64x64, 128x64, 128x128}; exact fp32 (no tensor
    cores) needs smaller ones. The one-launch tiles for 16-bit inputs at F x hd <= 4096 were chosen by timing
    (benchmarks/kernels/tune_linear_fused.py; the figures are in the README)."""
    warps = 8 if f * hd >= 8192 else 4
    if exact_fp32:
        return (32 if f * hd >= 16384 else 64), (32 if f * hd >= 16384 else 16), warps
    if fused and f * hd <= 4096:
        return 128, 128, 8
    return 64, 64, warps


FEATURES = {None: 0, "elu": 1, "relu": 2}
# Up to this many frames one launch (both passes per head) beats two launches that fill the GPU: a batch-1 forward
# is bound by launches there, not by the few programs working.
FUSED_FRAMES = 2048


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, eps: float, key_padding_mask: Tensor | None = None,
    feature_map: str | None = None, block_t: int | None = None, splits: int | None = None,
    fused: bool | None = None,
) -> Tensor:
    """q, k: (B, T, H, F); v: (B, T, H, hd); any strides. -> (B, T, H, hd) contiguous, in v's dtype.

    key_padding_mask: (B, T), True = padding (those frames' keys are left out); feature_map: None when q and k
    are phi(q), phi(k) already, or "elu" (elu+1) / "relu" to apply it here. block_t: frames per tile in both
    passes (None: per dtype and size); splits: programs per (b, h) in pass 1 (None: enough to fill the GPU);
    fused: both passes in one program per (b, h) (None: where that program count fills the GPU, or T is short
    enough that one launch costs less than the idle SMs). The tests set all three to cover every path."""
    b, t, h, f = q.shape
    hd = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != (b, t, h):
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not supported(f, hd):
        raise ValueError(f"linear_attention needs power-of-two F, hd >= 16 with F*hd <= 16384, got F={f}, hd={hd}")
    if feature_map not in FEATURES:
        raise ValueError(f"feature_map={feature_map!r} is not one of {list(FEATURES)}")
    if key_padding_mask is not None and key_padding_mask.shape != (b, t):
        raise ValueError(f"key_padding_mask must be (B, T) = {(b, t)}, got {tuple(key_padding_mask.shape)}")
    out = torch.empty(b, t, h, hd, device=v.device, dtype=v.dtype)
    if t == 0:
        return out
    exact = exact_fp32(q, v)
    precision = "ieee" if exact else "tf32"  # 16-bit operands ignore it
    if splits is None:
        # one program per (b, h) leaves most SMs idle at B=1 (16 programs for 16 heads); split T until ~4 per SM
        sms = multiprocessors(v.device) if v.is_cuda else 1
        splits = 1 if b * h >= sms else triton.cdiv(4 * sms, b * h)
    if fused is None:
        fused = splits == 1 or t <= FUSED_FRAMES
    tiles = _tiles(f, hd, exact, fused and block_t is None)
    state_block, out_block, warps = tiles if block_t is None else (block_t, block_t, tiles[2])
    pad, pad_strides = key_padding_arg(key_padding_mask, out)
    meta = dict(F=f, HD=hd, PRECISION=precision, FEATURE=FEATURES[feature_map], num_warps=warps)
    if fused:
        _fused_kernel[(b * h,)](
            q, k, v, pad, out,
            *q.stride(), *k.stride(), *v.stride(), *pad_strides, *out.stride()[:3],
            t, h, eps,
            STATE_BLOCK=state_block, OUT_BLOCK=out_block, HAS_PAD=key_padding_mask is not None, **meta,
        )
        return out
    blocks = triton.cdiv(t, state_block)
    split_len = triton.cdiv(blocks, max(1, min(splits, blocks))) * state_block
    splits = triton.cdiv(t, split_len)
    # one fp32 buffer per (b, h): the F x hd state, then the F normaliser; zeroed only when split programs add
    # into it
    sums = (torch.zeros if splits > 1 else torch.empty)(b * h, f * (hd + 1), device=v.device, dtype=torch.float32)
    state, z = sums[:, : f * hd], sums[:, f * hd:]
    _state_kernel[(b * h, splits)](
        k, v, pad, state, z,
        *k.stride(), *v.stride(), *pad_strides, sums.stride(0),
        t, h, split_len,
        BLOCK_T=state_block, ATOMIC=splits > 1, HAS_PAD=key_padding_mask is not None, **meta,
    )
    _output_kernel[(b * h, triton.cdiv(t, out_block))](
        q, state, z, out,
        *q.stride(), *out.stride()[:3], sums.stride(0),
        t, h, eps,
        BLOCK_T=out_block, **meta,
    )
    return out
