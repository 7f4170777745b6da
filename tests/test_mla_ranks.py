"""MLA ranks spread by spectrum (attention.rank_allocation=spectrum): the allocation drops the least K/V energy of
any allocation at its total, each kind of site keeps the cache of latent_dim everywhere, and a Whisper patched with
it decodes with its cache as without."""

from __future__ import annotations

import itertools

import pytest
import torch

from asr_attention.attention.mla_ranks import kv_spectrum, ranks_by_kind, spread_ranks
from asr_attention.backbones import calibration_batch, capture_attention_calls, patch_attention, patched_variants
from asr_attention.generation.caches import GrowingCache
from asr_attention.generation.decoding import sample
from asr_attention.generation.static_decode import PreallocatedCache

from test_whisper import D, LAYERS, audio, make, tokens


def dropped(spectra, ranks) -> float:
    return sum(float((s[r:] ** 2).sum()) for s, r in zip(spectra, ranks))


def test_spread_keeps_the_largest_squared_values_and_every_layers_first():
    a, b = torch.tensor([10.0, 9, 8, 2]), torch.tensor([5.0, 1.5, 0.5, 0.1])
    assert spread_ranks([a, b], 5) == [4, 1]
    assert spread_ranks([a, torch.tensor([0.1, 0.01, 0.0, 0.0])], 4) == [3, 1]  # never an empty latent
    assert spread_ranks([a, b], 8) == [4, 4]


@pytest.mark.parametrize("seed", range(5))
def test_spread_drops_the_least_energy_of_any_allocation_at_its_total(seed):
    g = torch.Generator().manual_seed(seed)
    spectra = [torch.rand(5, generator=g).sort(descending=True).values * torch.rand(1, generator=g) * 10
               for _ in range(3)]
    for total in range(3, 16):
        best = min(dropped(spectra, r) for r in itertools.product(range(1, 6), repeat=3) if sum(r) == total)
        ranks = spread_ranks(spectra, total)
        assert sum(ranks) == total and min(ranks) >= 1
        assert dropped(spectra, ranks) == pytest.approx(best)


def test_each_kind_of_site_keeps_its_own_total():
    g = torch.Generator().manual_seed(0)
    kinds = ["encoder", "encoder", "decoder_self", "cross", "decoder_self", "cross"]
    spectra = [torch.rand(8, generator=g).sort(descending=True).values * (i + 1) for i in range(6)]
    ranks = ranks_by_kind(kinds, spectra, 3)
    for kind in set(kinds):
        assert sum(r for r, k in zip(ranks, kinds) if k == kind) == 3 * kinds.count(kind)


def test_an_impossible_total_or_an_unknown_allocation_is_an_error():
    with pytest.raises(ValueError, match="cannot spread 1 ranks over 2 layers"):
        spread_ranks([torch.ones(4), torch.ones(4)], 1)
    with pytest.raises(ValueError, match="attention.rank_allocation='energy' is not allowed"):
        patch_attention(make(), {"name": "mla", "latent_dim": D // 4, "rank_allocation": "energy"})


def test_whisper_spread_by_spectrum_keeps_the_cache_and_loses_less_kv():
    """Every kind of site of a tiny random Whisper: per kind, the ranks sum to latent_dim x its layers (the cache of
    uniform, measured); summed K/V activation error below uniform's; cached and static decoding as uncached."""
    waves, lengths = audio()
    uniform, spread = make(), make()
    for model in (uniform, spread):
        model.select_sites("all")
    calibration = calibration_batch(capture_attention_calls(uniform, waves, lengths, tokens()))
    canonicals = [uniform.to_canonical(original) for _, _, original in uniform.attention_sites()]
    kinds = [uniform.site_kind(parent, name) for parent, name, _ in uniform.attention_sites()]
    cfg = {"name": "mla", "latent_dim": D // 4, "calibration": "activation", "sites": "all"}
    uniform_summary = patch_attention(uniform, cfg, calibration)
    summary = patch_attention(spread, {**cfg, "rank_allocation": "spectrum"}, calibration)
    assert "latent_dims" not in uniform_summary
    assert summary["latent_dims"] == ranks_by_kind(kinds, [kv_spectrum(m, c) for m, c in zip(canonicals, calibration)],
                                                   D // 4)
    assert [v.latent_dim for v in patched_variants(spread)] == summary["latent_dims"]
    for kind in ("encoder", "decoder_self", "cross"):
        assert kinds.count(kind) == LAYERS
        assert sum(r for r, k in zip(summary["latent_dims"], kinds) if k == kind) == D // 4 * LAYERS
    assert summary["latent_dims"] != [D // 4] * 3 * LAYERS
    assert summary["cache_mib_per_1000_frames"] == uniform_summary["cache_mib_per_1000_frames"]
    errors = {}  # N ||(W - up down) C^1/2||^2: the dropped whitened energy
    for name, model in (("uniform", uniform), ("spread", spread)):
        with torch.no_grad():
            errors[name] = sum(float(((x @ (v.kv_up.weight @ v.kv_down.weight - torch.cat((m.k_weight, m.v_weight))).T)
                                      ** 2).sum())
                               for v, m, x in zip(patched_variants(model), canonicals, calibration))
    assert errors["spread"] < errors["uniform"], errors
    memory = spread.encode(waves, lengths)
    spread.tokens.suppress_begin = list(range(spread.tokens.eot, 100))  # no early stop: 8 real steps
    cached = [h.tokens for h in sample(spread, memory, GrowingCache(spread), max_tokens=8)]
    assert cached == [h.tokens for h in sample(spread, memory, None, max_tokens=8)]
    static = [h.tokens for h in sample(spread, memory, PreallocatedCache(spread, 3, 2 + 8 - 1), max_tokens=8)]
    assert static == cached  # per-layer preallocated widths
