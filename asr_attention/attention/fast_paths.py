"""Performance machinery, kept apart from the maths in base.py: which kernel takes a call, and how weights are
stacked for one GEMM. Every choice here gives the same result as the plain path (the tests check each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels.xl_attention import fused_xl_fits


def stack_linear(*layers: tuple[Tensor, Tensor | None]) -> tuple[tuple[Tensor, Tensor | None], list[int]]:
    """Several (weight, bias) maps of the same input as one; a missing bias counts as zeros."""
    weight = torch.cat([w for w, _ in layers])
    bias = None
    if any(b is not None for _, b in layers):
        bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in layers])
    return (weight, bias), [w.shape[0] for w, _ in layers]


def flash_takes(q: Tensor, mask: Tensor | None) -> bool:
    """Whether SDPA's flash kernel can take this call: CUDA, 16-bit, no attn_mask, head_dim <= 256."""
    return q.is_cuda and mask is None and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, scale: float,
         dropout_p: float) -> Tensor:
    """F.scaled_dot_product_attention for q (B, H, T, hd) against K/V with H or fewer (grouped) heads.

    SDPA shares grouped K/V heads (enable_gqa) only in its flash and math kernels; the math kernel would build
    the (B, H, T, S) scores, so where flash cannot take the call K/V are copied per head (MHA's size) for the
    memory-efficient kernel instead."""
    grouped = k.shape[1] != q.shape[1]
    if grouped and not flash_takes(q, mask):
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        grouped = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale, enable_gqa=grouped)


def fused_xl_takes(q: Tensor, k: Tensor, v: Tensor, causal: bool, dropout_p: float) -> bool:
    """Whether the fused Transformer-XL kernel takes this call: an inference call it can tile (fused_xl_fits),
    without the causal mask or attention dropout, which it does not implement."""
    return not causal and dropout_p == 0.0 and fused_xl_fits(q, k, v)
