"""Checks a composed config before any heavy work, so a bad value fails in a second with the field named."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, get_args

from ..attention import VARIANTS
from ..attention.build import CALIBRATIONS
from ..attention.canonical import Position
from ..attention.feature_maps import FEATURE_MAPS
from ..backbones import FAMILIES
from ..backbones.sites import model_site_kinds
from ..backbones.whisper.packages import DEFAULT_SIZE, SIZES
from ..config.errors import UserError
from ..runs.identity import setting
from ..data.corpora import OOD_SETS

# The allowed names are the registries' own: a variant, feature map or family added there is allowed here.
ATTENTION_NAMES = ("native", *VARIANTS)  # native: the backbone's own module, left unpatched
HEADS = {"whisper": ("seq2seq", "ctc")}
POSITIONS = get_args(Position)


class ConfigError(UserError, ValueError):
    """A config value that is not allowed (the message names the field, the value and what is allowed)."""


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field}={value!r} is not allowed: {allowed}")


def _choice(cfg: Mapping, group: str, key: str, allowed: Iterable[str]) -> str:
    value = cfg.get(key)
    if value not in allowed:
        _fail(f"{group}.{key}", value, "expected one of " + ", ".join(allowed))
    return value


def _int_at_least(value: Any, field: str, low: int, note: str = "") -> None:
    # bool is an int subclass; `true` in YAML is never a count.
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        _fail(field, value, f"expected an integer >= {low}{note}")


def _positive_int(cfg: Mapping, group: str, key: str) -> int:
    _int_at_least(cfg.get(key), f"{group}.{key}", 1)
    return cfg[key]


def _divisors(n: int) -> str:
    return ", ".join(str(k) for k in range(1, n + 1) if n % k == 0)


def validate_model(model: Mapping) -> None:
    _choice(model, "model", "family", FAMILIES)
    _choice(model, "model", "position", POSITIONS)
    d = _positive_int(model, "model", "d_model")
    h = _positive_int(model, "model", "num_heads")
    for key in ("num_layers", "batch_size"):
        _positive_int(model, "model", key)
    if d % h:
        _fail("model.num_heads", h, f"must divide model.d_model={d} (allowed: {_divisors(d)})")
    if model["family"] in HEADS:
        _choice(model, "model", "head", HEADS[model["family"]])
    ood = model.get("ood_test")
    if ood is not None and ood not in OOD_SETS:
        _fail("model.ood_test", ood, "expected null (no out-of-domain test) or one of " + ", ".join(OOD_SETS))
    if model["family"] == "whisper":
        validate_packaged_size(model)


def validate_packaged_size(model: Mapping) -> None:
    """model.size: which packaged Whisper model.source=null loads (absent: tiny.en); its d_model, heads and layers
    must be the config's, checked here rather than after loading 145 MB (model=whisper_base sets all four)."""
    size = model.get("size", DEFAULT_SIZE)
    if size not in SIZES:
        _fail("model.size", size, "expected one of " + ", ".join(SIZES) + " (the packaged Whisper weights)")
    if model.get("source") is not None or not model.get("pretrained", True):
        return  # another checkpoint's sizes are checked against it once loaded; random weights take the config's
    want = SIZES[size]
    for key, value in (("d_model", want.d_model), ("num_heads", want.num_heads), ("num_layers", want.num_layers)):
        if model[key] != value:
            _fail(f"model.{key}", model[key], f"the packaged Whisper {size} (model.size={size}) has {key} {value}: "
                  "model=whisper is tiny.en, model=whisper_base is base")


def validate_sites(attention: Mapping, model: Mapping) -> None:
    """attention.sites (optional): a list of the model's kinds of attention site, or 'all'."""
    sites = attention.get("sites")
    if sites is None or sites == "all":
        return
    kinds = model_site_kinds(model["family"], model.get("head"))
    listed = list(sites) if isinstance(sites, Iterable) and not isinstance(sites, str) else None
    if not listed or any(s not in kinds for s in listed):
        head = f", model.head={model['head']}" if model.get("head") == "ctc" else ""
        _fail("attention.sites", sites if listed is None else listed,
              f"expected a non-empty list of {list(kinds)} (model.family={model['family']}{head}), or 'all'")


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
        allocation = attention.get("rank_allocation")
        if allocation not in (None, "spectrum"):
            _fail("attention.rank_allocation", allocation, "expected null (latent_dim at every layer) or spectrum")
        if allocation is not None and r > d:  # at d every layer is exact already; a wider latent adds nothing
            _fail("attention.latent_dim", r, f"rank_allocation=spectrum needs latent_dim <= model.d_model = {d}")
        cross_latent = attention.get("cross_latent")
        if cross_latent not in (None, "memory"):
            _fail("attention.cross_latent", cross_latent, "expected null (a latent per cross layer) or memory (the "
                  "encoder output, shared by every cross layer)")
        sites = attention.get("sites")
        if cross_latent == "memory" and not _seq2seq(model):
            _fail("attention.cross_latent", cross_latent, "needs cross-attention: Whisper's decoder "
                  "(model=whisper, model.head=seq2seq)")
        if cross_latent == "memory" and sites is not None and not isinstance(sites, str) and "cross" not in sites:
            _fail("attention.cross_latent", cross_latent, f"needs cross among attention.sites (here {list(sites)})")
    elif name == "gqa":
        g = _positive_int(attention, "attention", "num_kv_heads")
        if h % g:
            _fail("attention.num_kv_heads", g, f"must divide model.num_heads={h} (allowed: {_divisors(h)})")
    elif name == "linear":
        # (under model.position=xl the variant itself warns that it drops the position term)
        _choice(attention, "attention", "feature_map", FEATURE_MAPS)


def _number_at_least(value: Any, field: str, low: float, strict: bool = False) -> None:
    # inf and nan pass a bare comparison (lr=inf made every weight nan after one step, and the run "completed")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= low if strict else value < low):
        _fail(field, value, f"expected a finite number {'>' if strict else '>='} {low}")


def validate_training(cfg: Mapping) -> None:
    """The trainer's, optimiser's and checkpointing numbers, checked before the model loads (Lightning takes
    trainer.max_epochs=-1 as "endless", and the cosine schedule over the whole run then fails with an
    OverflowError after loading; max_epochs=null is a step-bounded run and needs max_steps)."""
    trainer, optim = cfg.get("trainer") or {}, cfg.get("optim") or {}
    step_bounded = trainer.get("max_epochs") is None and trainer.get("max_steps", -1) != -1
    if not step_bounded:
        _int_at_least(trainer.get("max_epochs"), "trainer.max_epochs", 1, " (or null with trainer.max_steps set)")
    for key in ("accumulate_grad_batches", "log_every_n_steps", "num_nodes"):
        if key in trainer:
            _int_at_least(trainer[key], f"trainer.{key}", 1)
    if trainer.get("check_val_every_n_epoch") is not None:  # null: val_check_interval counts steps across epochs
        _int_at_least(trainer["check_val_every_n_epoch"], "trainer.check_val_every_n_epoch", 1, " (or null)")
    if trainer.get("max_steps", -1) != -1:
        _int_at_least(trainer["max_steps"], "trainer.max_steps", 1, " (or -1: no step limit)")
    devices = trainer.get("devices")
    if isinstance(devices, int) and devices != -1:
        _int_at_least(devices, "trainer.devices", 1, ' (or -1: every device; or "auto", a list of ids)')
    if trainer.get("gradient_clip_val") is not None:
        _number_at_least(trainer["gradient_clip_val"], "trainer.gradient_clip_val", 0)
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
                                  or (isinstance(value, float) and value > 1)):
            _fail(f"trainer.{key}", value, "expected a batch count >= 0 or a fraction 0.0 ... 1.0")
    _number_at_least(optim.get("lr"), "optim.lr", 0, strict=True)
    _number_at_least(optim.get("weight_decay"), "optim.weight_decay", 0)
    for key in ("warmup_steps", "attention_only_steps"):
        _int_at_least(optim.get(key), f"optim.{key}", 0)
    if optim.get("head_lr") is not None:
        _number_at_least(optim["head_lr"], "optim.head_lr", 0, strict=True)
        if (cfg.get("model") or {}).get("head") == "seq2seq":  # Whisper's decoder: no CTC head to set apart
            _fail("optim.head_lr", optim["head_lr"], "needs a CTC head (model.head=ctc), or null")
    if optim.get("distill_weight") is not None:
        _number_at_least(optim["distill_weight"], "optim.distill_weight", 0, strict=True)
    validate_retention(optim, cfg.get("model") or {})
    if cfg.get("checkpoint_every_n_steps") is not None:
        _int_at_least(cfg["checkpoint_every_n_steps"], "checkpoint_every_n_steps", 1, " (or null: epoch ends only)")


def _seq2seq(model: Mapping) -> bool:
    return model.get("family") == "whisper" and model.get("head") == "seq2seq"


def validate_retention(optim: Mapping, model: Mapping) -> None:
    """optim.kl_weight / kl_temperature / ce_weight / distill_text (seq2seq_module.py); a key absent (a config
    written before it) has the default that reproduces the behaviour before it."""
    kl = optim.get("kl_weight")
    knob = {key: setting({"optim": optim}, f"optim.{key}") for key in ("kl_temperature", "ce_weight", "distill_text")}
    if kl is not None:
        _number_at_least(kl, "optim.kl_weight", 0)
    _number_at_least(knob["kl_temperature"], "optim.kl_temperature", 0, strict=True)
    _number_at_least(knob["ce_weight"], "optim.ce_weight", 0)
    text = _choice({"distill_text": knob["distill_text"]}, "optim", "distill_text",
                   ("reference", "teacher"))
    if kl and not _seq2seq(model):
        _fail("optim.kl_weight", kl, "KL at the decoder output needs Whisper's decoder (model.head=seq2seq); "
              "null or 0 for a CTC head")
    if text == "teacher" and not _seq2seq(model):
        _fail("optim.distill_text", text, "the teacher's transcripts need Whisper's decoder (model.head=seq2seq); "
              "reference for a CTC head")
    if knob["ce_weight"] == 0 and not kl and optim.get("distill_weight") is None:
        _fail("optim.ce_weight", 0, "with no optim.kl_weight or optim.distill_weight there is nothing to train: "
              "set one of them, or ce_weight > 0")


def validate_data_and_calibration(cfg: Mapping) -> None:
    """data.limit_* (an empty split trained 0 steps and the run "completed") and calibration.frames."""
    data = cfg.get("data") or {}
    for part in ("train", "val", "test"):
        if data.get(f"limit_{part}") is not None:
            _int_at_least(data[f"limit_{part}"], f"data.limit_{part}", 1,
                          f" (or null: the whole split); the {part} split must not be empty")
    if data.get("limit_ood") is not None:
        _int_at_least(data["limit_ood"], "data.limit_ood", 1,
                      " (or null: the whole set); model.ood_test=null tests on no out-of-domain set")
    if "calibration" in cfg:
        calibration = cfg["calibration"] or {}
        _int_at_least(calibration.get("frames"), "calibration.frames", 1,
                      " (encoder frames of audio that conversion calibrates on)")
        _choice({"split": setting(cfg, "calibration.split")}, "calibration", "split", ("val", "train"))
        text = _choice({"text": setting(cfg, "calibration.text")}, "calibration", "text",
                       ("reference", "teacher"))
        if text == "teacher" and not _seq2seq(cfg.get("model") or {}):
            _fail("calibration.text", text, "the teacher's transcripts need Whisper's decoder (model.head=seq2seq); "
                  "reference otherwise")
        if calibration.get("utterances") is not None:
            _int_at_least(calibration["utterances"], "calibration.utterances", 1,
                          " (or null: as many as calibration.frames asks)")


def validate(cfg: Mapping) -> None:
    """Validate the `model` and `attention` groups of a composed config (and a training config's numbers); raises
    ConfigError (a ValueError) naming the field."""
    for group in ("model", "attention"):
        if not isinstance(cfg.get(group), Mapping):
            _fail(group, cfg.get(group), "expected a config group (e.g. model=conformer attention=mha)")
    validate_model(cfg["model"])
    validate_attention(cfg["attention"], cfg["model"])
    validate_sites(cfg["attention"], cfg["model"])
    steps = (cfg.get("optim") or {}).get("attention_only_steps") or 0
    if steps and cfg["attention"]["name"] == "native":
        # the first steps would train nothing: no layer is converted
        _fail("optim.attention_only_steps", steps, "needs a converted attention, not attention=native")
    if "trainer" in cfg:  # a training config (kv_cache and bench compose model and attention only)
        validate_training(cfg)
        validate_data_and_calibration(cfg)
