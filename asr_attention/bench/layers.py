"""Micro-benchmark of one whole attention layer (projections included) per variant, against torch's own
nn.MultiheadAttention (SDPA fast path) timed in the same process.

    python -m asr_attention.bench.layers --out benchmarks/attention_layers

Writes <out>.json and <out>.md with the card, date and commit. Times are CUDA-graph replays (median of
repeats), so they measure GPU work rather than Python launch overhead; FLOPs are counted analytically.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess

import torch
from torch import nn

from ..attention import build_attention, random_mha

VARIANTS = {
    "mha": {"name": "mha"},
    "gqa (2 kv heads)": {"name": "gqa", "num_kv_heads": 2},
    "mla r=d": {"name": "mla", "latent_dim": 1.0},
    "mla r=d/4": {"name": "mla", "latent_dim": 0.25},
    "linear elu+1": {"name": "linear", "feature_map": "elu"},
}


def resolve(cfg: dict, d: int) -> dict:
    cfg = dict(cfg)
    if "latent_dim" in cfg:
        cfg["latent_dim"] = int(cfg["latent_dim"] * d)
    return cfg


def layer_flops(cfg: dict, b: int, t: int, d: int, h: int, s: int | None = None, absorbed: bool = False) -> float:
    """Multiply-adds x2 for one forward: t query frames against s key frames (s = t when not cached);
    absorbed: an MLA cached step that runs in latent space (the path MultiHeadLatentAttention picked)."""
    s = t if s is None else s
    hd = d // h
    new_kv = t  # frames whose K/V (or latent) are computed in this call
    q_o = 2 * b * t * d * d * 2
    name = cfg["name"]
    if name == "linear":  # elu/relu feature maps (feature dim = hd)
        proj = q_o + 2 * b * new_kv * d * d * 2
        # per-head (hd, hd) states: the Triton kernel's whole sequence on CUDA, and the cached step
        return proj + 2 * b * h * (new_kv + t) * hd * hd * 2
    attn = 2 * b * h * t * s * hd * 2
    if name == "mha":
        return q_o + 2 * b * new_kv * d * d * 2 + attn
    if name == "gqa":
        return q_o + 2 * b * new_kv * d * cfg["num_kv_heads"] * hd * 2 + attn
    r = cfg["latent_dim"]
    if s == t and 3 * r > 2 * d:  # merged (2d, d) projection, as MultiHeadLatentAttention does without a cache
        return q_o + 2 * b * t * d * d * 2 + attn  # the merged map is built once for inference
    if s != t and absorbed:  # cached step in latent space: absorb W_uk into q, attend over r, then W_uv
        return q_o + b * new_kv * d * r * 2 + 2 * b * t * h * hd * r * 2 + 2 * b * h * t * s * r * 2
    return q_o + b * new_kv * d * r * 2 + b * s * r * 2 * d * 2 + attn


def graphed(fn, warmup: int = 3):
    """Capture fn in a CUDA graph; returns a replay callable."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_ms(fn, repeats: int = 7, inner: int = 20) -> float:
    replay = graphed(fn)
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            replay()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return statistics.median(samples)


def torch_mha(d: int, h: int, dtype) -> nn.Module:
    return nn.MultiheadAttention(d, h, batch_first=True).cuda().to(dtype).eval()


@torch.no_grad()
def full_sequence(b: int, t: int, d: int, h: int, dtype) -> list[dict]:
    x = torch.randn(b, t, d, device="cuda", dtype=dtype)
    base = torch_mha(d, h, dtype)
    base_ms = time_ms(lambda: base(x, x, x, need_weights=False))
    rows = [{"shape": f"B{b} T{t}", "layer": "torch nn.MultiheadAttention (baseline)", "ms": base_ms,
             "gflop": layer_flops({"name": "mha"}, b, t, d, h) / 1e9, "x_baseline": 1.0}]
    mha = random_mha(d, h)
    for label, cfg in VARIANTS.items():
        cfg = resolve(cfg, d)
        layer = build_attention(cfg, mha).cuda().to(dtype).eval()
        ms = time_ms(lambda: layer(x))
        rows.append({"shape": f"B{b} T{t}", "layer": label, "ms": ms,
                     "gflop": layer_flops(cfg, b, t, d, h) / 1e9, "x_baseline": ms / base_ms})
    return rows


@torch.no_grad()
def cached_step(b: int, chunk: int, frames: int, d: int, h: int, dtype) -> list[dict]:
    """A chunk attending to a cache of `frames` earlier frames plus itself."""
    x_cache = torch.randn(b, frames, d, device="cuda", dtype=dtype)
    x = torch.randn(b, chunk, d, device="cuda", dtype=dtype)
    mha = random_mha(d, h)
    rows, base_ms = [], None
    for label, cfg in VARIANTS.items():
        cfg = resolve(cfg, d)
        layer = build_attention(cfg, mha).cuda().to(dtype).eval()
        _, cache = layer(x_cache, use_cache=True)
        ms = time_ms(lambda: layer(x, cache=cache))
        base_ms = base_ms or ms
        absorbed = cfg["name"] == "mla" and layer._should_absorb(chunk, frames + chunk)
        rows.append({"shape": f"B{b} chunk{chunk} cache{frames}", "layer": label, "ms": ms,
                     "gflop": layer_flops(cfg, b, chunk, d, h, s=frames + chunk, absorbed=absorbed) / 1e9,
                     "cache_MiB": layer.cache_bytes(frames, b, dtype) / 2**20, "x_baseline": ms / base_ms})
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = ["# Attention layer micro-benchmark\n", f"{meta['card']}, torch {meta['torch']}, {meta['dtype']}, "
             f"{meta['date']}, commit {meta['commit']}. d=1024, 16 heads. Times: median CUDA-graph replay.\n",
             "Full sequences: `x_baseline` = time / torch nn.MultiheadAttention's time. Cached steps: "
             "time / our MHA layer's cached step.\n",
             "| shape | layer | ms | GFLOP | x baseline | cache MiB |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        cache = f"{r['cache_MiB']:.2f}" if "cache_MiB" in r else ""
        lines.append(f"| {r['shape']} | {r['layer']} | {r['ms']:.3f} | {r['gflop']:.1f} | "
                     f"{r['x_baseline']:.2f} | {cache} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/attention_layers")
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--commit", default="", help="commit the code came from (the device copy has no .git)")
    args = parser.parse_args()
    dtype = torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = full_sequence(16, 1000, args.d, args.heads, dtype)
    rows += full_sequence(1, 16000, args.d, args.heads, dtype)
    rows += cached_step(16, 40, 1000, args.d, args.heads, dtype)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = args.commit or git.stdout.strip()
    meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "bf16",
            "date": datetime.date.today().isoformat(), "commit": commit or "unknown"}
    with open(f"{args.out}.json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    table = markdown(meta, rows)
    with open(f"{args.out}.md", "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
