"""KV-cache report: bytes each attention variant keeps per encoder, from the variants' own `cache_bytes`.

    python -m asr_attention.reports.kv_cache model=branchformer frames=2000 dtype=bfloat16
    python -m asr_attention.reports.kv_cache -m model=conformer,branchformer

One row per variant at its conf/attention/ preset (MLA's latent_dim follows the model's d_model); the composed
`attention` (with any overrides, e.g. attention=gqa attention.num_kv_heads=4) replaces its own row and is
marked with `*`. Linear attention's figure is its state plus normaliser, constant in the number of frames.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from asr_attention.attention import VARIANTS, build_attention, random_mha
from asr_attention.training.config_check import validate

CONF = Path(__file__).resolve().parents[2] / "conf"
MIB = 2**20


@dataclass(frozen=True)
class CacheRow:
    attention: str
    options: str
    layer_bytes: int
    num_layers: int
    chosen: bool = False

    @property
    def total_bytes(self) -> int:
        return self.layer_bytes * self.num_layers

    @property
    def mib(self) -> float:
        return self.total_bytes / MIB


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={name!r} is not allowed: expected a torch floating dtype such as float32, bfloat16")
    return dtype


def attention_presets(model: Mapping) -> dict[str, dict]:
    """conf/attention/<name>.yaml of every variant, resolved against `model` (latent_dim: ${model.d_model})."""
    presets = {}
    for name in VARIANTS:  # not `native`: the original module, which caches what MHA does
        node = OmegaConf.create({"model": OmegaConf.to_container(OmegaConf.create(model), resolve=True)})
        node.attention = OmegaConf.load(CONF / "attention" / f"{name}.yaml")
        presets[name] = OmegaConf.to_container(node.attention, resolve=True)
    return presets


def cache_rows(model: Mapping, chosen: Mapping | None, frames: int, batch: int, dtype: torch.dtype,
               cross: bool = False) -> list[CacheRow]:
    """One row per attention variant for this model; `chosen` (an attention config) replaces its preset. cross:
    the rows of cross-attention sites, where MLA's cross_latent=memory keeps one tensor for every layer."""
    mha = random_mha(model["d_model"], model["num_heads"], position=model["position"])
    attentions = attention_presets(model)
    if chosen is not None and chosen["name"] == "native":
        chosen = attentions["mha"]  # the unpatched module caches exactly what MHA does
    if chosen is not None:
        attentions[chosen["name"]] = dict(chosen)
    rows = []
    for name, att in attentions.items():
        with _quiet("asr_attention.attention"):  # build-time notes (e.g. linear drops xl) are noise in a report
            # a cache's size follows the shapes alone: plain SVD stands in for an activation-aware conversion,
            # whose calibration data a table of sizes does not have
            over_memory = cross and att["name"] == "mla" and att.get("cross_latent") == "memory"
            built = {**att, "calibration": "plain", "latent": "input" if over_memory else None} \
                if att["name"] == "mla" else att
            variant = build_attention(built, mha)
        # what shapes one layer's cache; `sites` only says which layers convert; a null option is its default
        options = " ".join(f"{k}={v}" for k, v in att.items() if k not in ("name", "sites") and v is not None)
        rows.append(CacheRow(name, options, variant.cache_bytes(frames, batch, dtype),
                             1 if over_memory else model["num_layers"], chosen is not None and chosen["name"] == name))
    return rows


@contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def format_table(rows: list[CacheRow], title: str) -> str:
    mha = next(r for r in rows if r.attention == "mha")
    lines = [title, f"{'attention':<10} {'options':<34} {'bytes/layer':>12} {'MiB total':>12} {'vs MHA':>8}"]
    for r in rows:
        name = ("*" if r.chosen else "") + r.attention
        # repr of a float is exact for these binary fractions (17.578125, 0.03515625): no rounding
        lines.append(f"{name:<10} {r.options:<34} {r.layer_bytes:>12} {r.mib!r:>12} {r.total_bytes / mha.total_bytes:>8.4f}")
    lines.append("(* = the composed attention; linear keeps a state plus normaliser, constant in frames; MiB = 2^20 B)")
    return "\n".join(lines)


def whisper_sites(model: Mapping, chosen: Mapping | None, frames: int, batch: int,
                  dtype: torch.dtype) -> dict[str, list[CacheRow]]:
    """Whisper's decoder caches as columns of rows (all layers): decoder self-attention per token, cross-attention
    per second of audio and over `frames` encoder frames (a 30-s window is 1500; an encoder self-attention site
    caching while streaming would hold the same)."""
    per_second = round(1000 / model["frame_ms"])
    return {"decoder self /token": cache_rows(model, chosen, 1, batch, dtype),
            "cross /s of audio": cache_rows(model, chosen, per_second, batch, dtype, cross=True),
            f"cross /{frames} frames": cache_rows(model, chosen, frames, batch, dtype, cross=True)}


def format_sites(columns: dict[str, list[CacheRow]], title: str) -> str:
    first = next(iter(columns.values()))
    lines = [title, f"{'attention':<10} {'options':<34}" + "".join(f" {c:>22}" for c in columns)]
    for i, row in enumerate(first):
        cells = ""
        for col in columns.values():
            mha = next(r for r in col if r.attention == "mha")
            cells += f" {col[i].total_bytes:>14} ({col[i].total_bytes / mha.total_bytes:.3f})"
        lines.append(f"{('*' if row.chosen else '') + row.attention:<10} {row.options:<34}{cells}")
    lines.append("(bytes, all layers; in brackets: vs MHA. * = the composed attention; linear keeps a fixed state per "
                 "layer whatever the tokens or frames)")
    return "\n".join(lines)


def report(cfg: DictConfig) -> list[CacheRow]:
    validate(cfg)
    for key in ("frames", "batch"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"{key}={cfg[key]!r} is not allowed: expected an integer >= 1")
    return cache_rows(cfg.model, cfg.attention, cfg.frames, cfg.batch, torch_dtype(cfg.dtype))


@hydra.main(version_base="1.3", config_path="../../conf", config_name="kv_cache")
def main(cfg: DictConfig) -> None:
    rows = report(cfg)
    m = cfg.model
    if m.family == "whisper":
        print(format_sites(whisper_sites(m, cfg.attention, cfg.frames, cfg.batch, torch_dtype(cfg.dtype)),
                           f"KV cache per kind of site, model={m.name}: {m.num_layers} + {m.num_layers} layers, "
                           f"d_model={m.d_model}, {m.num_heads} heads; batch={cfg.batch} dtype={cfg.dtype}"))
        return
    print(format_table(rows, f"KV cache, model={m.name} ({m.source}): {m.num_layers} layers, d_model={m.d_model}, "
                             f"{m.num_heads} heads; frames={cfg.frames} ({cfg.frames * m.frame_ms / 1000:g} s) "
                             f"batch={cfg.batch} dtype={cfg.dtype}"))


if __name__ == "__main__":
    main()
