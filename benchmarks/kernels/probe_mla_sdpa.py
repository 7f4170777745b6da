"""Probe (H200): where MLA r=d/4's time goes at B16 T1000 bf16, and how SDPA's backends compare there.

Prints CUDA-graph replay times of: SDPA per backend; each GEMM of the MLA layer; whole layers (torch
nn.MultiheadAttention, our MHA, MLA r=d/4) under the default SDPA priority and with cuDNN attention first.
Also the host-side cost of one eager batch-1 call per layer (launch-bound), which drives batch-1 forward rows."""

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from asr_attention.attention import build_attention, random_mha
from asr_attention.bench.layers import time_ms, torch_mha

torch.backends.cuda.matmul.allow_tf32 = True
dev, dt = "cuda", torch.bfloat16
B, T, D, H = 16, 1000, 1024, 16
hd = D // H
print("priority", torch._C._get_sdp_priority_order(), [int(b) for b in SDPBackend.__members__.values()],
      list(SDPBackend.__members__))
q, k, v = (torch.randn(B, T, H, hd, device=dev, dtype=dt).transpose(1, 2) for _ in range(3))
for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
    try:
        with sdpa_kernel(getattr(SDPBackend, name)):
            print("sdpa", name, round(time_ms(lambda: F.scaled_dot_product_attention(q, k, v)) * 1000, 1), "us")
    except Exception as e:
        print("sdpa", name, "error", str(e)[:200])
x = torch.randn(B, T, D, device=dev, dtype=dt)
r = D // 4
for label, n_out, n_in in (("q/o d->d", D, D), ("down d->r", r, D), ("q+down d->d+r", D + r, D),
                           ("up r->2d", 2 * D, r), ("qkv d->3d", 3 * D, D)):
    w = torch.randn(n_out, n_in, device=dev, dtype=dt)
    inp = torch.randn(B, T, n_in, device=dev, dtype=dt)
    print("gemm", label, round(time_ms(lambda: F.linear(inp, w)) * 1000, 1), "us")
mha = random_mha(D, H)
layers = {"torch nn.MHA": None, "mha": {"name": "mha"}, "gqa": {"name": "gqa", "num_kv_heads": 2},
          "mla r=d/4": {"name": "mla", "latent_dim": r}, "linear": {"name": "linear", "feature_map": "elu"}}
built = {}
for label, cfg in layers.items():
    built[label] = torch_mha(D, H, dt) if cfg is None else build_attention(cfg, mha).to(dev, dt).eval()


def call(label, inp):
    layer = built[label]
    return layer(inp, inp, inp, need_weights=False) if label == "torch nn.MHA" else layer(inp)


with torch.no_grad():
    for prio_name, prio in (("default", None), ("cudnn first", [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                                               SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])):
        ctx = sdpa_kernel(prio, set_priority=True) if prio else torch.autocast("cuda", enabled=False)
        with ctx:
            base = None
            for label in layers:
                try:
                    ms = time_ms(lambda: call(label, x))
                except Exception as e:
                    print("layer", prio_name, label, "error", str(e)[:200])
                    continue
                base = base or ms
                print("layer", prio_name, label, round(ms * 1000, 1), "us", "x", round(ms / base, 3))
    # host cost of one eager call at B1 T1000 (autocast bf16 over fp32 weights, as the bench's bf16 rows)
    x1 = torch.randn(1, 1000, D, device=dev)
    for label in layers:
        layer = built[label].float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(20):
                call(label, x1)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                call(label, x1)
            host = (time.perf_counter() - t0) / 200
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / 200
        print("eager B1 T1000 bf16", label, "host us", round(host * 1e6, 1), "wall us", round(wall * 1e6, 1))
