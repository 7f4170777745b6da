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
