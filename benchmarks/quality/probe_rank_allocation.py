"""Probe (CPU, a few minutes): would MLA ranks allocated across layers beat one rank for every layer, at the same
total cache? Zero-shot WER of Whisper tiny.en on AN4 test with its encoder's attention converted to
activation-aware MLA (goal 2 of issue 16 misses at r = d/4 on the encoder).

Each layer's K/V map W = [W_k; W_v] has, whitened by its calibration inputs' second moment C, singular values s;
keeping rank r leaves sum_{i>r} s_i^2 of error in the layer's K/V activations. Same total rank as uniform r = d/4:
- "absolute": keep the largest s_i^2 over all layers (least summed activation error);
- "relative": keep the largest s_i^2 / sum_j s_j^2 (least summed fraction of each layer's energy).
The conversion is the framework's own (`ZeroShot.run`: calibration on AN4 val, then greedy decoding); only the
per-layer latent_dim differs.
    python benchmarks/quality/probe_rank_allocation.py [--limit N]"""

import argparse
from unittest import mock

import torch

from asr_attention.attention import build_attention
from asr_attention.attention.mla import whitening
from asr_attention.backbones import patch
from asr_attention.zero_shot import ZeroShot, wer

SITES = ["encoder"]


def whitened_spectrum(mha, calibration: torch.Tensor) -> torch.Tensor:
    """Singular values of [W_k; W_v] C^1/2, C the inputs' second moment (as MLA whitens): the K/V activations'
    error per rank."""
    sqrt_c, _ = whitening(calibration.reshape(-1, mha.d_model))
    return torch.linalg.svdvals(torch.cat((mha.k_weight, mha.v_weight)).double() @ sqrt_c)


def allocate(spectra: list[torch.Tensor], total: int, relative: bool) -> list[int]:
    """Per layer, how many of its singular values are among the `total` largest scores."""
    scores = [s**2 / (s**2).sum() if relative else s**2 for s in spectra]
    layer_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    kept = layer_of[torch.cat(scores).argsort(descending=True)[:total]]
    return [int((kept == i).sum()) for i in range(len(spectra))]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="first N AN4 test utterances")
    args = p.parse_args()
    zs = ZeroShot(args.limit, 16, "cpu")
    d = zs.model_cfg.d_model
    uniform = {"name": "mla", "latent_dim": d // 4, "calibration": "activation"}
    spectra, ranks = [], []

    def build(cfg, mha, calibration=None):  # patch_attention's per-layer call, in layer order
        spectra.append(whitened_spectrum(mha, calibration))
        return build_attention({**cfg, "latent_dim": ranks[len(spectra) - 1]} if ranks else cfg, mha, calibration)

    rows = {"unconverted": zs.run(None, [])}
    with mock.patch.object(patch, "build_attention", build):
        rows["uniform r=d/4"] = zs.run(uniform, SITES)
        layer_spectra = list(spectra)
        print("uniform", [d // 4] * len(layer_spectra), f"{100 * wer(rows['uniform r=d/4']['predictions'], True):.2f} %")
        for name, relative in (("absolute", False), ("relative", True)):
            ranks[:] = allocate(layer_spectra, d // 4 * len(layer_spectra), relative)
            spectra.clear()
            rows[name] = zs.run(uniform, SITES)
            bytes_ = rows[name]["measured_cache_bytes"]
            print(name, ranks, f"{100 * wer(rows[name]['predictions'], True):.2f} %", "cache bytes", bytes_,
                  "uniform's", rows["uniform r=d/4"]["measured_cache_bytes"])
    print("unconverted", f"{100 * wer(rows['unconverted']['predictions'], True):.2f} %")


if __name__ == "__main__":
    main()
