"""Family-agnostic patching: replace every encoder self-attention of a backbone by the configured variant.

Also: capture each attention layer's real inputs and outputs from the unpatched model (MLA's activation-aware
conversion reads the inputs; the fidelity table compares each converted layer with the original's outputs), and the
original layers as MHA variants (the benchmarks' reference).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from asr_attention.attention import AttentionVariant, CanonicalMHA, build_attention, relative_error
from asr_attention.attention.mla_ranks import kv_spectrum, ranks_by_kind
from asr_attention.attention.mha import MultiHeadAttention

from .base import Backbone
from .eval_mode import eval_mode

log = logging.getLogger(__name__)
MIB = 2**20


def count_parameters(*modules: nn.Module) -> int:
    """Parameters of the modules together (each module's parameters() yields a tied tensor once)."""
    return sum(p.numel() for m in modules for p in m.parameters())


def patch_attention(
    backbone: Backbone, attention_cfg: Mapping, calibration: Sequence[Tensor | None] | None = None,
    latent_dims: Sequence[int] | None = None,
) -> dict:
    """Swap every attention site for `build_attention(attention_cfg, canonical)` wrapped in the backbone's call.

    calibration: per layer, the K/V projection inputs (N, d) for activation-aware MLA (see `calibration_batch`), or
    any rows with their second moment (`SecondMoment.rows`: what `convert` passes);
    attention.calibration=activation without it is an error (build_attention).
    latent_dims: per layer, MLA's rank as an earlier conversion chose it (rebuilding a converted model whose
    weights are then loaded: run_model.py, converted_model.py); None: attention.rank_allocation decides.
    attention_cfg.sites (optional) picks the kinds of site (encoder, decoder_self, cross); absent: the family's
    default. Returns (and logs) a summary: layers replaced, parameters before/after, analytic cache MiB per 1000 frames.
    """
    backbone.select_sites(attention_cfg.get("sites"))
    sites = list(backbone.attention_sites())
    if not sites:
        raise ValueError(f"{type(backbone).__name__}: no attention layers found to patch")
    if calibration is not None and len(calibration) != len(sites):
        raise ValueError(f"calibration has {len(calibration)} layers, the backbone {len(sites)}")
    before = count_parameters(backbone)
    canonicals = [backbone.to_canonical(original) for _, _, original in sites]
    calibration = calibration or [None] * len(sites)
    if latent_dims is None:
        latent_dims = spread_latent_dims(backbone, sites, canonicals, attention_cfg, calibration)
    elif len(latent_dims) != len(sites):
        raise ValueError(f"latent_dims has {len(latent_dims)} layers, the backbone {len(sites)}")
    shared = memory_latent_sites(backbone, sites, attention_cfg)
    variants: list[AttentionVariant] = []
    for i, (parent, name, original) in enumerate(sites):
        cfg = attention_cfg if latent_dims is None else {**attention_cfg, "latent_dim": latent_dims[i]}
        if i in shared:
            cfg = {**cfg, "latent": "input", "owns_cache": i == shared[0]}
        variant = build_attention(cfg, canonicals[i], calibration=calibration[i])
        ref = next(original.parameters())
        variant.to(device=ref.device, dtype=ref.dtype).train(original.training)
        setattr(parent, name, backbone.wrap_site(parent, name, variant))
        variants.append(variant)
    cache = sum(v.cache_bytes(1000, 1, torch.float32) for v in variants)
    summary = {
        "attention": attention_cfg["name"],
        "layers_replaced": len(variants),
        "params_before": before,
        "params_after": count_parameters(backbone),
        "cache_mib_per_1000_frames": cache / MIB,  # fp32, batch 1
    }
    if latent_dims is not None:
        summary["latent_dims"] = latent_dims
        log.info("MLA ranks spread by spectrum, per layer: %s", latent_dims)
    log.info(
        "patched %d attention layers with %s: parameters %s -> %s, cache %.4g MiB per 1000 frames (fp32, batch 1)",
        summary["layers_replaced"], summary["attention"], f"{before:,}", f"{summary['params_after']:,}",
        summary["cache_mib_per_1000_frames"],
    )
    return summary


def memory_latent_sites(backbone: Backbone, sites: list, attention_cfg: Mapping) -> list[int]:
    """The cross-attention sites that attend over the encoder output itself under attention.cross_latent=memory
    (MLA): their K/V maps absorbed (exact), one shared cache, held by the first. [] where it is null."""
    how = attention_cfg.get("cross_latent")
    if how is None:
        return []
    if how != "memory" or attention_cfg["name"] != "mla":
        raise ValueError(f"attention.cross_latent={how!r} is not allowed: expected null, or memory with "
                         f"attention=mla (here {attention_cfg['name']})")
    cross = [i for i, (parent, name, _) in enumerate(sites) if backbone.site_kind(parent, name) == "cross"]
    if not cross:
        raise ValueError("attention.cross_latent=memory: no cross-attention site among the converted ones "
                         "(attention.sites must include cross, on a model with a decoder)")
    return cross


def spread_latent_dims(backbone: Backbone, sites: list, canonicals: Sequence[CanonicalMHA], attention_cfg: Mapping,
                       calibration: Sequence[Tensor | None]) -> list[int] | None:
    """Per site, MLA's rank under attention.rank_allocation=spectrum (see mla_ranks); None: latent_dim everywhere."""
    allocation = attention_cfg.get("rank_allocation")
    if attention_cfg["name"] != "mla" or allocation is None:
        return None
    if allocation != "spectrum":
        raise ValueError(f"attention.rank_allocation={allocation!r} is not allowed: expected null or spectrum")
    kinds = [backbone.site_kind(parent, name) for parent, name, _ in sites]
    spectra = [kv_spectrum(mha, c) for mha, c in zip(canonicals, calibration)]
    return ranks_by_kind(kinds, spectra, int(attention_cfg["latent_dim"]))


def patched_variants(backbone: Backbone) -> list[AttentionVariant]:
    """The variants inside a patched backbone, in layer order."""
    return [site.variant for _, _, site in backbone.attention_sites()]


@torch.no_grad()
def original_variants(backbone: Backbone) -> list[MultiHeadAttention]:
    """Each original attention as an MHA variant (same weights). Call on the unpatched backbone."""
    out = []
    for _, _, original in backbone.attention_sites():
        ref = next(original.parameters())
        out.append(MultiHeadAttention(backbone.to_canonical(original)).to(device=ref.device, dtype=ref.dtype).eval())
    return out


class Capture(NamedTuple):
    """What `capture_attention_calls` records of one batch, per attention site in site order."""

    inputs: list[dict]  # the variant-call inputs the site received
    outputs: list[Tensor]  # (B, T, d): what the site's module returned for them
    padding: list[Tensor | None]  # (B, T), True where a row of x and of the output is padding (site_padding)


@torch.no_grad()
def capture_attention_calls(backbone: Backbone, waves: Tensor, wave_lengths: Tensor,
                            targets: Tensor | None = None) -> Capture:
    """Run the backbone once (eval mode) and record, per attention layer, the variant-call inputs it really received,
    {"x": (B, T, d), "key_padding_mask": (B, T) or None, "pos": ... or None} (cross-attention: also "memory"), the
    output (B, T, d) the layer's module returned for them (on the unpatched backbone, the original module's, the
    reference of `fidelity`), and which rows are padding (Whisper's decoder: teacher forcing's padded positions).
    targets: the batch's token ids, for decoder sites (teacher forcing)."""
    inputs: list[dict | None] = []
    outputs: list[Tensor | None] = []
    padding: list[Tensor | None] = []
    handles = []
    for i, (_, _, module) in enumerate(backbone.attention_sites()):
        inputs.append(None)
        outputs.append(None)
        padding.append(None)

        def hook(mod, args, kwargs, output, i=i):
            inputs[i] = {k: (v.detach() if isinstance(v, Tensor) else v)
                         for k, v in backbone.site_inputs(mod, args, kwargs).items()}
            outputs[i] = output[0].detach()  # every attention module here returns (output, weights or cache)
            padding[i] = backbone.site_padding(mod, args, kwargs)

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    device = next(backbone.parameters()).device  # the batch goes where the weights are (a loader yields on CPU)
    waves, wave_lengths = waves.to(device), wave_lengths.to(device)
    targets = None if targets is None else targets.to(device)
    try:
        with eval_mode(backbone):
            backbone.calibration_pass(waves, wave_lengths, targets)
    finally:
        for h in handles:
            h.remove()
    missing = [i for i, c in enumerate(inputs) if c is None]
    if missing:
        raise RuntimeError(f"attention layers {missing} were not called during the forward pass")
    return Capture(inputs, outputs, padding)  # type: ignore[arg-type]


def valid_frames(t: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """(B, T, d) -> (N, d): the frames that are not padding (all of them without a mask)."""
    return t[~key_padding_mask] if key_padding_mask is not None else t.reshape(-1, t.shape[-1])


def calibration_batch(capture: Capture) -> list[Tensor]:
    """Per layer, the K/V projection inputs over the non-padded frames, (N, d): MLA's calibration data
    (self-attention's K/V read x, whose padded rows the capture names; cross-attention's read the memory, which
    its key-padding mask covers)."""
    return [valid_frames(kv_input(kw), pad if kw.get("memory") is None else kw.get("key_padding_mask"))
            for kw, pad in zip(capture.inputs, capture.padding)]


def kv_input(kw: dict) -> Tensor:
    """What a layer's K/V are made from: the memory for cross-attention, else x."""
    return kw["x"] if kw.get("memory") is None else kw["memory"]


@torch.no_grad()
def fidelity(variants: Sequence[AttentionVariant], captured: Sequence[Capture]) -> list[dict]:
    """One row per layer: ||variant - original|| / ||original|| over the non-padded rows of every captured batch
    (`capture_attention_calls` on the unpatched backbone), against what the original module itself returned."""
    rows = []
    for i, variant in enumerate(variants):
        reference, converted = [], []
        for capture in captured:
            out, _ = variant(**capture.inputs[i])
            reference.append(valid_frames(capture.outputs[i], capture.padding[i]))
            converted.append(valid_frames(out, capture.padding[i]))
        rows.append({"layer": i, "relative_error": relative_error(torch.cat(reference), torch.cat(converted))})
    return rows

