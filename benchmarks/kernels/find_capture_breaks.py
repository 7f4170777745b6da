"""One-off GPU probe: which op breaks CUDA-graph capture of the patched wav2vec2 forward. It found the HF mask
check (torch.equal, a host read), since skipped during capture. Run as `python3 benchmarks/kernels/find_capture_breaks.py`."""
# Where does the patched wav2vec2 forward break CUDA-graph capture? Eager forward with sync debug "error", then
# a capture with the full traceback.
import traceback, torch
from asr_attention.backbones import build_backbone
from asr_attention.backbones.patch import patch_attention
from asr_attention.bench.layers import graphed
arch = dict(intermediate_size=4096, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            feat_proj_dropout=0.0, final_dropout=0.0, mask_time_prob=0.0)
cfg = dict(family="hf_wav2vec2", source="unused", pretrained=False, d_model=1024, num_heads=16, num_layers=2, arch=arch)
for att in (None, {"name": "mha"}, {"name": "linear", "feature_map": "elu"}):
    torch.manual_seed(0)
    bb = build_backbone(cfg, 32).cuda().eval()
    if att: patch_attention(bb, att)
    waves = torch.randn(1, 320000, device="cuda"); lengths = torch.full((1,), 320000, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        try:
            torch.cuda.set_sync_debug_mode("error")
            bb(waves, lengths)
            print(att, "eager: no sync", flush=True)
        except Exception:
            print(att, "eager sync:", traceback.format_exc()[-3000:], flush=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        try:
            replay = graphed(lambda: bb(waves, lengths))
            replay(); torch.cuda.synchronize()
            print(att, "capture OK", flush=True)
        except Exception:
            print(att, "capture failed:", traceback.format_exc()[-4000:], flush=True)
            torch.cuda.synchronize()
