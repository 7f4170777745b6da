"""Probe (GPU): the fused latent-attention kernel (MLA's absorbed decode step) at large-v3's decode shapes, 20
heads folded into 20 queries of width r = d/4 = 320, bf16: CUDA-graph replay time per call against the PyTorch
path (two batched GEMMs and an fp32 softmax), frames per block x warps x stages, and the HBM bandwidth each
reaches reading the latent once."""

import torch

from asr_attention.attention import relative_error
from asr_attention.attention.kernels.latent_attention import latent_attention
from asr_attention.attention.mla import _few_queries_attention
from asr_attention.bench_layers import time_ms

Q, R = 20, 320
for b, s in ((64, 1500), (16, 1500), (1, 1500), (64, 131)):
    q = torch.randn(b, Q, R, device="cuda", dtype=torch.bfloat16)
    latent = torch.randn(b, s, R, device="cuda", dtype=torch.bfloat16)
    scale = 64 ** -0.5
    gb = latent.numel() * latent.element_size() / 1e9
    ref = _few_queries_attention(q[:, None], latent, latent, None, scale, 0.0)[:, 0]
    torch_ms = time_ms(lambda: _few_queries_attention(q[:, None], latent, latent, None, scale, 0.0))
    cells = [f"torch {torch_ms * 1000:.1f} us ({gb / torch_ms * 1e3:.0f} GB/s)"]
    for block in (16, 32, 64):
        for warps in (4, 8):
            for stages in (1, 2, 3):
                try:
                    out = latent_attention(q, latent, latent, None, scale, block=block, num_warps=warps,
                                           num_stages=stages)
                    err = relative_error(ref.float(), out.float())
                    ms = time_ms(lambda: latent_attention(q, latent, latent, None, scale, block=block,
                                                          num_warps=warps, num_stages=stages))
                    cells.append(f"{block}/{warps}w/{stages}s {ms * 1000:.1f} us ({gb / ms * 1e3:.0f} GB/s, "
                                 f"err {err:.1e})")
                except Exception as e:  # noqa: BLE001 - out of registers / shared memory
                    cells.append(f"{block}/{warps}w/{stages}s {type(e).__name__}")
    print(f"B{b} S{s} ({gb * 1e3:.1f} MB): " + " | ".join(cells), flush=True)
