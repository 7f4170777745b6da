"""Probe (GPU): a batch-1 eager forward, native vs patched MHA, in alternation: synchronised time per call, host
time per call (10 calls unsynchronised), and every host-device synchronisation torch reports in one forward."""

import statistics
import sys
import time
import traceback
import warnings

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from asr_attention.backbones import build_backbone
from asr_attention.bench import measure
from asr_attention.reports.kv_cache import attention_presets

dev = torch.device("cuda")
for overrides, dtype in ((["model=branchformer"], "fp32"), (["model=branchformer"], "bf16")):
    with initialize_config_dir(f"{sys.path[0]}/../../conf", version_base="1.3"):
        cfg = compose("bench", overrides=overrides)
    with open_dict(cfg):
        cfg.model.pretrained = False
    native_cpu = build_backbone(cfg.model).eval()
    models = {"native": measure.build_variant(native_cpu, None, dev)[0],
              "mha": measure.build_variant(native_cpu, attention_presets(cfg.model)["mha"], dev)[0]}
    waves, lengths = measure.make_batch(1, 20.0, dev)
    synced = {k: [] for k in models}
    host = {k: [] for k in models}
    with torch.no_grad(), measure.autocast(dev, dtype):
        for _ in range(3):
            for m in models.values():
                m(waves, lengths)
        for _ in range(15):
            for name, m in models.items():
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                m(waves, lengths)
                torch.cuda.synchronize()
                synced[name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for _ in range(10):
                    m(waves, lengths)
                host[name].append((time.perf_counter() - t0) / 10)
                torch.cuda.synchronize()
        for name, m in models.items():
            print(f"{overrides[0]} {dtype} {name}: synced {statistics.median(synced[name]) * 1e3:.2f} ms, "
                  f"host {statistics.median(host[name]) * 1e3:.2f} ms")
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                m(waves, lengths)
            torch.cuda.set_sync_debug_mode(0)
            print(f"  syncs in one forward: {len(caught)}")
            for w in caught[:3]:
                print("   ", str(w.message)[:120], "@", w.filename, w.lineno)
        # where the sync is, with a stack: raise on the first one
        torch.cuda.set_sync_debug_mode("error")
        try:
            models["mha"](waves, lengths)
        except RuntimeError:
            print("".join(traceback.format_exc().splitlines(True)[-14:]))
        torch.cuda.set_sync_debug_mode(0)
