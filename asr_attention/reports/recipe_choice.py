"""Choosing the fine-tuning recipe on validation only: which parameters train, for how long, at which lr.

A recipe is the part of a run's config that says how it fine-tunes (`recipe_label`). Runs that differ only in
recipe and variant are compared by their best val WER over the fine-tune (the checkpoint the test then reads;
step 0, the converted model before any step, is not a checkpoint and does not count), cell by cell: a cell is a
(variant, seed, batch order), controls and conversions alike, so a recipe that only suits the unconverted model
does not win. The chosen recipe is the one that beats every other recipe head to head, on the mean over the cells
the two both ran; the cells every recipe ran shrink as recipes are added, a pair's shared cells do not. Where no
recipe beats all others (a cycle), the lowest mean over the cells every recipe ran decides. Test WER plays no part.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from ..config.recipe import retention, spec_augment, what_trains


def recipe_label(config: Mapping) -> str:
    """'lr 0.0003, attention only; encoder frozen', 'lr 0.0001, attention 500 steps, then all', 'lr 3e-05, head
    lr 0.001, all from step 0; encoder trained; distilled x 1.0', '...; kl_weight 1.0; ce_weight 0.0;
    distill_text teacher; calibration.text teacher' (the retention knobs away from their defaults)..."""
    optim, trainer, model = (config.get(k) or {} for k in ("optim", "trainer", "model"))
    first = optim.get("attention_only_steps")
    train = {"all": "all from step 0", "attention_only": "attention only",
             "attention_then_all": f"attention {first} steps, then all"}[what_trains(first, trainer.get("max_steps"))]
    frozen = model.get("freeze_encoder")  # Whisper only: its original encoder can stay fixed
    encoder = "" if frozen is None else "; encoder frozen" if frozen else "; encoder trained"
    head = "" if optim.get("head_lr") is None else f", head lr {optim['head_lr']}"
    distill = "" if optim.get("distill_weight") is None else f"; distilled x {optim['distill_weight']}"
    kept = "".join(f"; {key} {value}" for key, value in retention(optim, config.get("calibration")).items())
    return (f"lr {optim.get('lr')}{head}, {train}{encoder}{spec_augment_label(model.get('arch') or {})}{distill}"
            f"{kept}")


def spec_augment_label(arch: Mapping) -> str:
    """'; SpecAugment time 0.05 x 10, mel 0.1 x 10', or ''."""
    axes = spec_augment(arch)
    return "; SpecAugment " + ", ".join(f"{a} {p} x {n}" for a, (p, n) in axes.items()) if axes else ""


def best_val_wer(val_curve: Sequence[Mapping]) -> float | None:
    """The lowest val WER after at least one fine-tune step; None when the run never validated after step 0."""
    values = [p["val_wer"] for p in val_curve if p.get("step", 0) > 0 and p.get("val_wer") is not None]
    return min(values) if values else None


def compare(rows: Sequence[Mapping], score=lambda r: best_val_wer(r.get("val_curve") or []),
            completed_only: bool = True) -> dict[tuple, dict]:
    """{(model, head, sites): {"table": {recipe: {variant: mean best val WER}}, "common": [variants], "seeds":
    [seeds], "mean": {recipe: mean over the common cells}, "chosen": recipe, "rule": "head to head" or "common
    cells" or "none", "versus": {other recipe: {"cells": n, "mean": its mean, "chosen_mean": the chosen's
    mean}}}} for every group that ran > 1 recipe ("common": the cells every recipe ran, the table's; it may be
    empty). "chosen" is None where no recipe wins every head to head and no cell is common: nothing is chosen."""
    cells: dict[tuple, dict[str, dict[tuple, float]]] = {}
    for r in rows:
        best = score(r)  # lower is better: by default the best val WER
        if (r.get("status") == "completed" or not completed_only) and best is not None:
            group = cells.setdefault((r["model"], r["head"], r["sites"]), {})
            # the batch order is part of the cell: a seed re-run with its own order is not the shared-order run
            group.setdefault(r["recipe"], {})[(r["variant"], r["seed"], r.get("data_seed", 0))] = best
    out = {}
    for key, by_recipe in cells.items():
        if len(by_recipe) < 2:
            continue
        common = sorted(set.intersection(*(set(c) for c in by_recipe.values())), key=str)
        variants = sorted({v for v, *_ in common})
        table = {rec: {v: statistics.fmean(c[cell] for cell in common if cell[0] == v) for v in variants}
                 for rec, c in by_recipe.items()} if common else {}
        mean = {rec: statistics.fmean(c[cell] for cell in common) for rec, c in by_recipe.items()} if common else {}
        winner = head_to_head_winner(by_recipe)
        chosen = winner or (min(mean, key=mean.get) if mean else None)
        out[key] = {"table": table, "common": variants, "seeds": sorted({s for _, s, _ in common}, key=str),
                    "mean": mean, "chosen": chosen,
                    "rule": "head to head" if winner else "common cells" if chosen else "none",
                    "versus": {} if chosen is None else {rec: head_to_head(c, by_recipe[chosen])
                                                          for rec, c in by_recipe.items() if rec != chosen}}
    return out


def head_to_head(other: Mapping[tuple, float], chosen: Mapping[tuple, float]) -> dict:
    """Both recipes' mean best val WER over the cells both ran (None where they share none)."""
    shared = set(other) & set(chosen)
    if not shared:
        return {"cells": 0, "mean": None, "chosen_mean": None}
    return {"cells": len(shared), "mean": statistics.fmean(other[cell] for cell in shared),
            "chosen_mean": statistics.fmean(chosen[cell] for cell in shared)}


def head_to_head_winner(by_recipe: Mapping[str, Mapping[tuple, float]]) -> str | None:
    """The recipe whose mean is lower than every other recipe's on the cells the two share; None if none is (a
    recipe that shares no cell with another cannot beat it)."""
    for recipe, cells in by_recipe.items():
        duels = [head_to_head(other, cells) for name, other in by_recipe.items() if name != recipe]
        if all(d["cells"] and d["chosen_mean"] < d["mean"] for d in duels):
            return recipe
    return None


def markdown(choices: Mapping[tuple, Mapping], score_name: str = "Best val WER") -> list[str]:
    """The val-only comparison as markdown lines (empty when no group ran more than one recipe)."""
    if not choices:
        return []
    lines = ["## Recipe choice (validation only)", "",
             f"{score_name} % over the fine-tune (mean over seeds), per recipe and variant, on the variants and "
             "seeds that every recipe ran. The chosen recipe beats every other one head to head, on the cells the "
             "two ran (second table); where none does, it has the lowest mean in the first. Test WER is not used.",
             ""]
    for (model, head, sites), c in sorted(choices.items()):
        if c["chosen"] is None:
            lines += [f"### {model} {head}: {sites}", "", "No recipe chosen: none beats every other head to head, and "
                      "no (variant, seed, batch order) cell was run by every recipe.", ""]
            continue
        header = ["recipe"] + c["common"] + ["mean"]
        lines += [f"### {model} {head}: {sites} (seeds {', '.join(map(str, c['seeds'])) or 'none common'}; chosen "
                  f"{c['rule']})", ""]
        if c["common"]:
            lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for recipe in sorted(c["mean"], key=c["mean"].get):
            cells = [f"{100 * c['table'][recipe][v]:.2f}" for v in c["common"]]
            mark = " (chosen)" if recipe == c["chosen"] else ""
            lines.append(f"| {recipe}{mark} | " + " | ".join(cells) + f" | {100 * c['mean'][recipe]:.2f} |")
        lines += ["", "Each other recipe against the chosen one, on every (variant, seed, batch order) cell the two "
                  "ran:", "", "| recipe | cells | its mean | chosen's mean |", "|---|---:|---:|---:|"]
        for recipe, v in sorted(c["versus"].items(), key=lambda item: item[1]["mean"] - item[1]["chosen_mean"]):
            lines.append(f"| {recipe} | {v['cells']} | {100 * v['mean']:.2f} | {100 * v['chosen_mean']:.2f} |")
        lines.append("")
    return lines
