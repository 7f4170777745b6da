"""Probe (CPU, a few minutes): would MLA ranks allocated across layers beat one rank for every layer, at the same
total cache? Zero-shot WER of Whisper tiny.en on AN4 test with its encoder's attention converted to
activation-aware MLA (goal 2 of issue 16 misses at r = d/4 on the encoder).

Each layer's K/V map W = [W_k; W_v] has, whitened by its calibration inputs' second moment C, singular values s;
keeping rank r leaves sum_{i>r} s_i^2 of error in the layer's K/V activations. Same total rank as uniform r = d/4:
- "absolute": keep the largest s_i^2 over all layers (least summed activation error): the framework's
  attention.rank_allocation=spectrum (attention/mla_ranks.py);
- "relative": keep the largest s_i^2 / sum_j s_j^2 (least summed fraction of each layer's energy), this probe's own.
The conversion is the framework's own (`ZeroShot.run`: calibration on AN4 val, then greedy decoding); only the
per-layer latent_dim differs.
    python benchmarks/quality/probe_rank_allocation.py [--limit N]"""

import argparse
from unittest import mock

import torch

from asr_attention.attention import build_attention
from asr_attention.attention.mla_ranks import kv_spectrum, spread_ranks
from asr_attention.backbones import patch
from asr_attention.reports.zero_shot import ZeroShot, wer

SITES = ["encoder"]


def relative_ranks(spectra: list[torch.Tensor], total: int) -> list[int]:
    """spread_ranks on each layer's spectrum scaled to unit energy."""
    return spread_ranks([s / (s**2).sum().sqrt() for s in spectra], total)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="first N AN4 test utterances")
    args = p.parse_args()
    zs = ZeroShot(args.limit, 16, "cpu")
    d = zs.model_cfg.d_model
    uniform = {"name": "mla", "latent_dim": d // 4, "calibration": "activation"}
    spectra = []

    def collect(cfg, mha, calibration=None):  # patch_attention's per-layer call, in layer order
        spectra.append(kv_spectrum(mha, calibration))
        return build_attention(cfg, mha, calibration)

    rows = {"unconverted": zs.run(None, [])}
    with mock.patch.object(patch, "build_attention", collect):
        rows["uniform"] = zs.run(uniform, SITES)
    rows["absolute"] = zs.run({**uniform, "rank_allocation": "spectrum"}, SITES)
    ranks = relative_ranks(spectra, d // 4 * len(spectra))
    layer = iter(ranks)
    with mock.patch.object(patch, "build_attention",
                           lambda cfg, mha, calibration=None: build_attention({**cfg, "latent_dim": next(layer)}, mha,
                                                                              calibration)):
        rows["relative"] = zs.run(uniform, SITES)
    rows["uniform"]["latent_dims"], rows["relative"]["latent_dims"] = [d // 4] * len(spectra), ranks
    for name, row in rows.items():
        cache = row["measured_cache_bytes"]
        print(name, row["latent_dims"] or "",
              f"{100 * wer(row['predictions'], True):.2f} %", "" if cache is None else f"cache bytes {cache}")


if __name__ == "__main__":
    main()
