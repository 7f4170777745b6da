"""Where one batch's time goes, kernel by kernel: the end-to-end benchmark's pipelines under torch.profiler.

    python -m asr_attention.bench.profile_end_to_end --model whisper_base --set an4 --batch 64 \
        --decoders hf-static mha --out benchmarks/end_to_end/profile_H100_<commit>

For each decoder (hf-static / hf-dynamic: transformers' generate; a variant preset name: ours, as
bench.end_to_end builds it) the first --batch utterances of the set are transcribed twice untimed (compile,
graph capture), then once under the profiler. Reported per decoder: the profiled call's wall time, the GPU's
busy time (kernels' own time summed; with overlapping streams it can exceed the time they span), the kernels
launched, and the kernels and host-side ops that take the most time. Busy time well under wall time means the
host (Python, launches, host reads) sets the pace, not the GPU. The profiler's own overhead slows the host side, so
wall times here run over the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .e2e_pipelines import HFPipeline, OursPipeline
from .end_to_end import DTYPES, SPEECHOCEAN, free, ours, read_set, reference, reference_token_limit, sync
from asr_attention.generation.token_limit import token_limit


def pipeline_for(model: str, decoder: str, device: torch.device, dtype: torch.dtype):
    if decoder.startswith("hf-"):
        hf, tokens = reference(model, device, dtype)
        return HFPipeline(hf, tokens, reference_token_limit(hf, tokens), decoder[3:])
    backbone, _ = ours(model, decoder, device, dtype)
    return OursPipeline(backbone, token_limit(backbone, None))


def profiled(pipeline, waves: list[torch.Tensor], device: torch.device, top: int) -> dict:
    for _ in range(2):
        pipeline(waves)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        began = time.perf_counter()
        out = pipeline(waves)
        sync(device)
        wall = time.perf_counter() - began
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    return {
        "wall_s": wall, "gpu_busy_s": busy, "kernel_launches": sum(e.count for e in kernels),
        "tokens": sum(n for _, n, _ in out),
        "top_kernels": [{"name": e.key[:120], "calls": e.count, "s": e.self_device_time_total / 1e6}
                        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]],
        "top_host_ops": [{"name": e.key[:120], "calls": e.count, "s": e.self_cpu_time_total / 1e6}
                         for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:top]],
    }


def markdown(data: dict) -> str:
    m = data["meta"]
    lines = [f"# Profile: {m['model']}, {m['set']}, batch {m['batch']} ({m['card']}, {m['dtype']}, commit "
             f"{m['commit']})", "", f"Command: `{m['command']}`", "",
             "| decoder | wall s (profiled) | GPU busy s | busy / wall | kernels launched | tokens |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in data["decoders"].items():
        lines.append(f"| {name} | {r['wall_s']:.3f} | {r['gpu_busy_s']:.3f} | {r['gpu_busy_s'] / r['wall_s']:.2f} | "
                     f"{r['kernel_launches']:,} | {r['tokens']:,} |")
    for name, r in data["decoders"].items():
        for what, key in (("kernels (GPU time)", "top_kernels"), ("host ops (CPU self time)", "top_host_ops")):
            lines += ["", f"## {name}: top {what}", "", "| name | calls | s | share of wall |", "|---|---:|---:|---:|"]
            lines += [f"| `{e['name']}` | {e['calls']:,} | {e['s']:.4f} | {e['s'] / r['wall_s']:.1%} |"
                      for e in r[key]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m asr_attention.bench.profile_end_to_end",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="whisper", help="conf/model name (whisper: tiny.en; whisper_base)")
    p.add_argument("--set", default="an4", choices=["an4", "speechocean762"])
    p.add_argument("--manifest", default=str(SPEECHOCEAN), help="speechocean762's manifest (default: vendored)")
    p.add_argument("--batch", type=int, default=64, help="the first N utterances, one batch")
    p.add_argument("--decoders", nargs="+", default=["hf-static", "mha"],
                   help="hf-static, hf-dynamic, or ours: a variant (mha, mla, gqa) or conf/study/variant preset")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--commit", default="", help="recorded (the device copy may have no .git)")
    p.add_argument("--out", required=True, help="path without suffix: writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    waves = read_set(args.set, Path(args.manifest), args.batch).waves
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    data = {"meta": {"model": args.model, "set": args.set, "batch": len(waves), "dtype": args.dtype, "card": card,
                     "commit": args.commit, "torch": torch.__version__,
                     "command": "python -m asr_attention.bench.profile_end_to_end " + " ".join(sys.argv[1:] if argv is None else argv)},
            "decoders": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for decoder in args.decoders:
        pipeline = pipeline_for(args.model, decoder, device, dtype)
        data["decoders"][decoder] = profiled(pipeline, waves, device, args.top)
        r = data["decoders"][decoder]
        print(f"{decoder}: wall {r['wall_s']:.3f} s, GPU busy {r['gpu_busy_s']:.3f} s, "
              f"{r['kernel_launches']:,} kernels, {r['tokens']:,} tokens", flush=True)
        del pipeline
        free(device)
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))
        out.with_suffix(".md").write_text(markdown(data))
    return data


if __name__ == "__main__":
    main()
