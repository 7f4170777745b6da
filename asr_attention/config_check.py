"""Checks a composed config before any heavy work, so a bad value fails in a second with the field named."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ATTENTION_NAMES = ("native", "mha", "mla", "gqa", "linear")
FEATURE_MAPS = ("elu", "relu", "hedgehog")
CALIBRATIONS = ("plain", "activation")
MODEL_FAMILIES = ("hf_wav2vec2", "speechbrain_branchformer", "whisper")
POSITIONS = ("none", "xl", "rotary_input")
SITE_KINDS = {"whisper": ("encoder", "decoder_self", "cross")}  # other families: encoder self-attention only
HEADS = {"whisper": ("seq2seq", "ctc")}


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{field}={value!r} is not allowed: {allowed}")


def _choice(cfg: Mapping, group: str, key: str, allowed: Iterable[str]) -> str:
    value = cfg.get(key)
    if value not in allowed:
        _fail(f"{group}.{key}", value, "expected one of " + ", ".join(allowed))
    return value


def _positive_int(cfg: Mapping, group: str, key: str) -> int:
    value = cfg.get(key)
    # bool is an int subclass; `true` in YAML is never a size.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(f"{group}.{key}", value, "expected an integer >= 1")
    return value


def _divisors(n: int) -> str:
    return ", ".join(str(k) for k in range(1, n + 1) if n % k == 0)


def validate_model(model: Mapping) -> None:
    _choice(model, "model", "family", MODEL_FAMILIES)
    _choice(model, "model", "position", POSITIONS)
    d = _positive_int(model, "model", "d_model")
    h = _positive_int(model, "model", "num_heads")
    for key in ("num_layers", "batch_size"):
        _positive_int(model, "model", key)
    if d % h:
        _fail("model.num_heads", h, f"must divide model.d_model={d} (allowed: {_divisors(d)})")
    if model["family"] in HEADS:
        _choice(model, "model", "head", HEADS[model["family"]])


def validate_sites(attention: Mapping, model: Mapping) -> None:
    """attention.sites (optional): a list of the family's kinds of attention site, or 'all'."""
    sites = attention.get("sites")
    if sites is None or sites == "all":
        return
    kinds = SITE_KINDS.get(model["family"], ("encoder",))
    listed = list(sites) if isinstance(sites, Iterable) and not isinstance(sites, str) else None
    if not listed or any(s not in kinds for s in listed):
        _fail("attention.sites", sites if listed is None else listed,
              f"expected a non-empty list of {list(kinds)} (model.family={model['family']}), or 'all'")


def validate_attention(attention: Mapping, model: Mapping) -> None:
    """Assumes `model` already passed validate_model."""
    name = _choice(attention, "attention", "name", ATTENTION_NAMES)
    d, h = model["d_model"], model["num_heads"]
    if name == "mla":
        r = _positive_int(attention, "attention", "latent_dim")
        if r > 2 * d:
            # [W_k; W_v] is (2d, d): a latent wider than 2d stores more than MHA and adds nothing.
            _fail("attention.latent_dim", r, f"expected 1 <= latent_dim <= 2*model.d_model = {2 * d}")
        _choice(attention, "attention", "calibration", CALIBRATIONS)
    elif name == "gqa":
        g = _positive_int(attention, "attention", "num_kv_heads")
        if h % g:
            _fail("attention.num_kv_heads", g, f"must divide model.num_heads={h} (allowed: {_divisors(h)})")
    elif name == "linear":
        # (under model.position=xl the variant itself warns that it drops the position term)
        _choice(attention, "attention", "feature_map", FEATURE_MAPS)


def validate(cfg: Mapping) -> None:
    """Validate the `model` and `attention` groups of a composed config; raises ValueError naming the field."""
    for group in ("model", "attention"):
        if not isinstance(cfg.get(group), Mapping):
            _fail(group, cfg.get(group), "expected a config group (e.g. model=conformer attention=mha)")
    validate_model(cfg["model"])
    validate_attention(cfg["attention"], cfg["model"])
    validate_sites(cfg["attention"], cfg["model"])
    if cfg.get("export_dir") and cfg["attention"]["name"] != "native":
        # export writes the backbone's own format, which has no place for a converted attention
        _fail("export_dir", cfg["export_dir"], f"needs attention=native, not attention={cfg['attention']['name']}")
