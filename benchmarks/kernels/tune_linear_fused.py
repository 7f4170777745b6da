"""Probe (GPU): the linear-attention kernel's one-launch path, frames per tile x warps, bf16, F = hd = 64, 16 heads:
CUDA-graph replay time against the two-pass path at the same shape."""

import torch

import asr_attention.attention.kernels.linear_attention as lin
from asr_attention.bench.layers import time_ms

H, HD = 16, 64
default_tiles = lin._tiles
for b, t in ((1, 500), (1, 1000), (1, 2000), (16, 1000)):
    q, k, v = (torch.randn(b, t, H * 3, HD, device="cuda", dtype=torch.bfloat16)[:, :, i * H:(i + 1) * H]
               for i in range(3))
    split = time_ms(lambda: lin.linear_attention(q, k, v, 1e-6, feature_map="elu", fused=False))
    cells = []
    for block in (32, 64, 128, 256):
        for warps in (4, 8):
            lin._tiles = lambda f, hd, exact, fused: (block, block, warps)
            try:
                ms = time_ms(lambda: lin.linear_attention(q, k, v, 1e-6, feature_map="elu", fused=True))
                cells.append(f"{block}/{warps}w {ms * 1000:.1f}")
            except Exception as err:  # noqa: BLE001 - out of registers / shared memory
                cells.append(f"{block}/{warps}w {type(err).__name__}")
            lin._tiles = default_tiles
    print(f"B{b} T{t}: split {split * 1000:.1f} us | fused " + ", ".join(cells))
