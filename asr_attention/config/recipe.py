"""How a config's fine-tuning recipe reads: which parameters train when, and where SpecAugment masks. Run names
(config/resolvers.py's ${recipe_tag:...}) and the recipe report (reports/recipe_choice.py) both ask here."""

from __future__ import annotations

from collections.abc import Mapping


def what_trains(attention_only_steps: int | None, max_steps: int | None) -> str:
    """'all' (from step 0), 'attention_only' (for every step) or 'attention_then_all'."""
    if attention_only_steps is None or attention_only_steps <= 0:
        return "all"
    return "attention_only" if max_steps is not None and attention_only_steps >= max_steps else "attention_then_all"


def spec_augment(arch: Mapping) -> dict[str, tuple[float, int]]:
    """{"time": (prob, length), "mel": (prob, length)} for the axes SpecAugment masks where model.arch turns it on
    (Whisper), else {}. A field model.arch leaves out has WhisperConfig's default."""
    if not arch.get("apply_spec_augment"):
        return {}
    from transformers import WhisperConfig

    field = {**WhisperConfig().to_dict(), **arch}
    return {name: (field[f"mask_{axis}_prob"], field[f"mask_{axis}_length"])
            for name, axis in (("time", "time"), ("mel", "feature")) if field[f"mask_{axis}_prob"]}


# The retention knobs (docs/whisper.md) are the keys added to optim and calibration after the first runs, each
# with the default those runs had (runs/identity.ADDED_DEFAULTS): only a value away from it names a recipe, so
# earlier runs keep their labels and names.
RECIPE_GROUPS = ("optim", "calibration")


def retention(optim: Mapping | None, calibration: Mapping | None) -> dict[str, object]:
    """{"kl_weight": 1.0, "calibration.text": "teacher", ...}: the retention knobs a config sets away from their
    defaults (a kl_temperature only where the KL is on)."""
    from ..runs.identity import ADDED_DEFAULTS

    groups = {"optim": optim or {}, "calibration": calibration or {}}
    out = {}
    for dotted, default in ADDED_DEFAULTS.items():
        group, key = dotted.split(".")
        if group not in RECIPE_GROUPS:
            continue
        value = groups[group].get(key, default)
        if value != default and not (key == "kl_weight" and value == 0):
            out[key if group == "optim" else dotted] = value
    if "kl_weight" not in out:
        out.pop("kl_temperature", None)
    return out
