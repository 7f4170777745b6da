"""MLA ranks spread across layers at the cache of one rank everywhere (attention.rank_allocation=spectrum).

Keeping rank r of a layer's K/V map [W_k; W_v] (whitened by its calibration inputs, as activation-aware MLA
factors it) leaves the sum of its dropped squared singular values as error in the layer's K/V. Layers differ in
how fast that spectrum falls, so one r everywhere is not the least error for its cache: keeping the largest
squared singular values across layers is. Sites of different kinds (encoder, decoder self, cross) hold caches
of different lengths, so each kind keeps its own total, latent_dim x its layers: the cache of every kind, and
so the whole cache, stays that of uniform latent_dim (the analytic figure).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .canonical import CanonicalMHA
from .mla import whitening


def kv_spectrum(mha: CanonicalMHA, calibration: Tensor | None = None) -> Tensor:
    """Singular values of [W_k; W_v], whitened by C^1/2 (C the calibration inputs' second moment) when given:
    what MLA's conversion truncates."""
    kv = torch.cat((mha.k_weight, mha.v_weight)).double()
    if calibration is not None:
        kv = kv @ whitening(calibration)[0]
    return torch.linalg.svdvals(kv)


def spread_ranks(spectra: Sequence[Tensor], total: int) -> list[int]:
    """Per layer, how many of its singular values are among the `total` largest squared ones over all layers;
    every layer keeps at least its largest (a latent is never empty)."""
    if not len(spectra) <= total <= sum(len(s) for s in spectra):
        raise ValueError(f"cannot spread {total} ranks over {len(spectra)} layers of "
                         f"{[len(s) for s in spectra]} singular values")
    scores = [torch.cat((s.new_full((1,), float("inf")), s[1:] ** 2)) for s in spectra]
    layer_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    kept = layer_of[torch.cat(scores).argsort(descending=True, stable=True)[:total]]
    return [int((kept == i).sum()) for i in range(len(spectra))]


def ranks_by_kind(kinds: Sequence[str], spectra: Sequence[Tensor], latent_dim: int) -> list[int]:
    """Per site (kinds[i] its kind), its rank: each kind spreads latent_dim x its sites over its own layers."""
    ranks = [0] * len(kinds)
    for kind in dict.fromkeys(kinds):
        sites = [i for i, k in enumerate(kinds) if k == kind]
        for i, r in zip(sites, spread_ranks([spectra[i] for i in sites], latent_dim * len(sites))):
            ranks[i] = r
    return ranks
