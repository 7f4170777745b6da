"""Triton kernels for the inference paths SDPA cannot express: the Transformer-XL position term fused into
flash-style attention, and linear attention computed per head without a T x T matrix.

They run forward only (no autograd): the variants call them when nothing needs gradients and the tensors are on
a CUDA device, and use their plain PyTorch paths otherwise. The tests run them on CPU through Triton's
interpreter (TRITON_INTERPRET=1, set in tests/conftest.py before Triton is imported).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

try:
    import triton  # noqa: F401  (bundled with Linux torch wheels; absent on macOS/Windows)
except ImportError:  # pragma: no cover - depends on the platform
    triton = None

# Devices whose inference calls the variants hand to the kernels. The tests add "cpu", where Triton's
# interpreter runs them, to check the variants' wiring as well as the kernels.
DEVICES = {"cuda"}


def runs_on(*tensors: Tensor) -> bool:
    """Whether the kernels take this call: Triton is installed, no gradient is needed (they have no backward),
    and every tensor is on one of DEVICES."""
    if triton is None or torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.device.type in DEVICES for t in tensors)


def exact_fp32(*tensors: Tensor) -> bool:
    """Whether tl.dot must run in exact fp32 ("ieee"): an fp32 operand while torch keeps TF32 matmuls off."""
    return any(t.dtype == torch.float32 for t in tensors) and not torch.backends.cuda.matmul.allow_tf32


def key_padding_arg(mask: Tensor | None, placeholder: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """A (B, T) bool key-padding mask as the kernels read it: its bytes as uint8 (a view, no copy) and its two
    strides. Without a mask, a placeholder pointer the kernels never read (HAS_PAD=False) and zero strides.
    Another dtype would be read byte by byte as if it were bool: refused."""
    if mask is None:
        return placeholder, (0, 0)
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor (True = padding), got {mask.dtype}")
    return mask.view(torch.uint8), mask.stride()


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The card's SM count, looked up once: every layer of every batch-1 forward asks (to split work until each SM
    has a few programs), and that forward is bound by the host's time per call."""
    return torch.cuda.get_device_properties(device).multi_processor_count
