"""Probe (GPU): why a batch-1 eager forward of a patched model is slower or faster than native. For each
(model, dtype, variant): median eager ms, CUDA kernels launched, summed GPU kernel time, and the aten ops whose
host time differs most from native's."""

import statistics
import sys

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from asr_attention.backbones import build_backbone
from asr_attention.bench import measure
from asr_attention.reports.kv_cache import attention_presets

CASES = [("branchformer", ["model=branchformer"], "fp32", ["native", "mha", "gqa"]),
         ("conformer", ["++model.arch.intermediate_size=4096"], "bf16", ["native", "mha", "linear"])]
dev = torch.device("cuda")
for name, overrides, dtype, variants in CASES:
    with initialize_config_dir(f"{sys.path[0]}/../../conf", version_base="1.3"):
        cfg = compose("bench", overrides=overrides)
    with open_dict(cfg):
        cfg.model.pretrained = False
    native_cpu = build_backbone(cfg.model).eval()
    presets = attention_presets(cfg.model)
    waves, lengths = measure.make_batch(1, 20.0, dev)
    host = {}
    for variant in variants:
        model, _ = measure.build_variant(native_cpu, None if variant == "native" else presets[variant], dev)
        with torch.no_grad(), measure.autocast(dev, dtype):
            for _ in range(5):
                model(waves, lengths)
            torch.cuda.synchronize()
            times = []
            for _ in range(40):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record(); model(waves, lengths); e.record(); torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                model(waves, lengths)
                torch.cuda.synchronize()
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        n_kernels = sum(e.count for e in kernels)
        gpu_ms = sum(e.self_device_time_total for e in kernels) / 1000
        host[variant] = {e.key: e.self_cpu_time_total for e in events if e.device_type == torch.autograd.DeviceType.CPU}
        print(f"{name} {dtype} {variant}: eager median {statistics.median(times):.2f} ms, min {min(times):.2f}, "
              f"kernels {n_kernels}, gpu {gpu_ms:.2f} ms, host self total {sum(host[variant].values()) / 1000:.2f} ms")
        del model
    for variant in variants[1:]:
        keys = set(host[variant]) | set(host["native"])
        diff = sorted(((host[variant].get(k, 0) - host["native"].get(k, 0)) / 1000, k) for k in keys)
        print(f"  {variant} - native host ms, most added:", [(k, round(d, 2)) for d, k in diff[::-1][:8]])
        print(f"  {variant} - native host ms, most saved:", [(k, round(d, 2)) for d, k in diff[:5]])
