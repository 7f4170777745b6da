"""Probe (GPU): the linear-attention kernel's one-launch (fused) and two-pass (split) paths, per shape: CUDA-graph
replay time (GPU work) and the host time of one eager call (what a launch-bound batch-1 forward pays)."""

import time

import torch

from asr_attention.attention.kernels.linear_attention import linear_attention
from asr_attention.bench.layers import time_ms

H, HD = 16, 64
for b, t in ((1, 500), (1, 1000), (1, 2000), (1, 4000), (16, 1000), (1, 15000)):
    q, k, v = (torch.randn(b, t, H * 3, HD, device="cuda", dtype=torch.bfloat16)[:, :, i * H:(i + 1) * H]
               for i in range(3))
    for fused in (True, False):
        run = lambda: linear_attention(q, k, v, 1e-6, feature_map="elu", fused=fused)  # noqa: E731
        gpu = time_ms(run)
        for _ in range(10):
            run()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(100):
            run()
        host = (time.perf_counter() - t0) / 100
        torch.cuda.synchronize()
        print(f"B{b} T{t} {'fused' if fused else 'split'}: gpu {gpu * 1000:.1f} us, host {host * 1e6:.1f} us")
