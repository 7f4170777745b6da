"""Where a decode step's time goes: the kernels of our static decoder's steps, grouped, beside the wall clock.

    python -m asr_attention.bench.step_profile --size large-v3 --batch 64 --out $OUT/step_profile_b64.json

Each decoder runs eagerly (no CUDA graph, so every kernel shows in the trace) under torch.profiler, after a
warm-up, twice: asked for one token, then for `--steps` + 1. The second call's kernels minus the first's are the
decode steps' alone: the prompt step, which builds every cross cache from the encoder output (at batch 64 a
larger GEMM load than many decode steps), is in both and cancels. Kernel time is grouped by kernel name --
GEMMs (projections, and the two batched GEMMs of MLA's latent-space decode step), fused attention (SDPA's
kernels and softmax), the rest (elementwise, copies, reductions) -- and host time is the wall clock the GPU
spends idle between kernels, which the CUDA graph of the benchmark's "-graph" rows removes. The ten longest
kernels are kept by name.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from asr_attention.generation.whisper_sizes import ENCODER_FRAMES, SIZES, random_whisper

from .generate import build_decoder

GROUPS = {  # first match wins; names as cuBLAS / cuDNN / PyTorch / inductor kernels spell them
    "attention": ("flash", "fmha", "sdpa", "attention", "softmax", "efficient"),
    # triton_tem_: inductor's template kernels (mm / addmm / bmm under max-autotune; flex attention is caught above)
    "gemm": ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "sm80_", "triton_tem_"),
}


def group(kernel: str) -> str:
    name = kernel.lower()
    return next((g for g, keys in GROUPS.items() if any(k in name for k in keys)), "other")


def kernel_ms(decoder, memory: torch.Tensor, tokens: int) -> tuple[Counter, float]:
    """ms per CUDA kernel name over one call for `tokens` tokens, and the call's wall clock in ms."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        decoder(memory, tokens)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] += event.device_time_total / 1000  # us -> ms
    return kernels, 1000 * wall


def per_decode_step(long: Counter, short: Counter, steps: int) -> dict[str, float]:
    """ms per kernel name per decode step: a call of `steps` more decode steps minus the shorter call. A kernel
    of the prompt alone cancels (a small negative remainder is timing noise, clipped to zero)."""
    return {k: max(long[k] - short[k], 0.0) / steps for k in long}


def profile_decoder(name: str, model, memory: torch.Tensor, steps: int) -> dict:
    decoder = build_decoder(name, model, steps + 1)
    if hasattr(decoder, "graph"):
        decoder.graph = False  # eager: the profiler sees every kernel
    decoder(memory, steps + 1)  # warm-up (and, for "-compiled", the compile)
    short, short_wall = kernel_ms(decoder, memory, 1)
    long, long_wall = kernel_ms(decoder, memory, steps + 1)
    kernels = per_decode_step(long, short, steps)
    groups = Counter()
    for kernel, ms in kernels.items():
        groups[group(kernel)] += ms
    wall = (long_wall - short_wall) / steps
    return {"decoder": name, "steps": steps, "wall_ms_per_step": wall,
            "kernel_ms_per_step": dict(groups), "host_idle_ms_per_step": max(wall - sum(groups.values()), 0.0),
            "top_kernels_ms_per_step": {k[:120]: ms for k, ms in Counter(kernels).most_common(10)}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="large-v3", choices=list(SIZES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--decoders", nargs="+", default=["mha-graph", "mla-graph", "gqa-graph"])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("step_profile times CUDA kernels: it needs a GPU")
    device = torch.device("cuda")
    model = random_whisper(args.size, device, torch.bfloat16)
    memory = torch.randn(args.batch, ENCODER_FRAMES, model.config.d_model, device=device, dtype=torch.bfloat16)
    rows = []
    for name in args.decoders:
        rows.append(profile_decoder(name, model, memory, args.steps))
        torch.cuda.empty_cache()
        r = rows[-1]
        print(f"{name}: {r['wall_ms_per_step']:.2f} ms/step wall, kernels "
              + ", ".join(f"{g} {ms:.2f}" for g, ms in r["kernel_ms_per_step"].items())
              + f", host idle {r['host_idle_ms_per_step']:.2f}", flush=True)
    meta = {"card": torch.cuda.get_device_name(device), "torch": torch.__version__, "size": args.size,
            "batch": args.batch, "dtype": "bf16"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
