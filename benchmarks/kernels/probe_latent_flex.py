"""Probe (H200): FlexAttention's decoding kernel against our latent attention for MLA's decode step (issue 15).

MLA r = d/4 at large-v3 sizes attends 20 heads folded into the query axis against one shared latent of width 320
(1500 cross frames). Our path (`mla._few_queries_attention`) is two batched GEMMs and a softmax: it reads the
latent twice. A fused kernel reads it once; the home-made Triton one was no faster (tune_latent_kernel_H200.log).
This times, per call, CUDA-graph replay: ours eager and compiled, and torch.compile'd `flex_attention` with its
default and a few tile choices (the head width is padded to 512 inside it). GB/s counts the latent once.
    PYTHONPATH=. python benchmarks/kernels/probe_latent_flex.py"""

import torch
from torch.nn.attention.flex_attention import flex_attention

from asr_attention.attention.mla import _few_queries_attention
from asr_attention.bench.layers import time_ms

HEADS, LATENT, SCALE = 20, 320, 64 ** -0.5
torch._dynamo.config.recompile_limit = 64  # every candidate x shape compiles the same `call` anew
TILES = [None, {"BLOCK_N": 32, "num_warps": 4, "num_stages": 3}, {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
         {"BLOCK_N": 128, "num_warps": 8, "num_stages": 2}]


def ours(q, latent):
    return _few_queries_attention(q, latent, latent, None, HEADS, SCALE, 0.0)


def flex(options):
    def call(q, latent):
        kv = latent[:, None]
        return flex_attention(q, kv, kv, scale=SCALE, kernel_options=options)
    return torch.compile(call, fullgraph=True, dynamic=False)


@torch.no_grad()
def main():
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; per call, CUDA-graph replay")
    for batch, frames in ((64, 1500), (1, 1500), (64, 131)):
        q = torch.randn(batch, 1, HEADS, LATENT, device="cuda", dtype=torch.bfloat16)
        latent = torch.randn(batch, frames, LATENT, device="cuda", dtype=torch.bfloat16)
        want = ours(q.double(), latent.double())
        gb = latent.numel() * latent.element_size() / 1e9
        row = [f"B{batch} S{frames} ({gb * 1e3:.1f} MB)"]
        candidates = {"ours": ours, "ours compiled": torch.compile(ours, fullgraph=True, dynamic=False)}
        candidates.update({f"flex {o or 'default'}": flex(o) for o in TILES})
        for name, fn in candidates.items():
            try:
                err = (fn(q, latent).double() - want).abs().max().item()
                us = time_ms(lambda: fn(q, latent)) * 1e3
                row.append(f"{name} {us:.1f} us ({gb / us * 1e6:.0f} GB/s, err {err:.1e})")
            except Exception as e:  # a tile that does not fit is a result too
                row.append(f"{name} error {type(e).__name__}: {str(e)[:120]}")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
