"""A study at a glance: per model and head, one row per variant and one column per site; each cell the cost after
fine-tuning (test WER points against the paired control, mean ± sample std over seeds) and the decode-cache cut
over one window. The control row gives the control's own WER. A cell with fewer seeds than the fullest says so.
Reads the study report's aggregates (`study.aggregate`) at the recipe chosen on val."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

SITE_ORDER = ("decoder_self", "cross", "decoder_self+cross", "all", "encoder")
SITE_NAMES = {"decoder_self": "decoder self", "cross": "cross", "decoder_self+cross": "decoder self + cross",
              "all": "all (encoder too)", "encoder": "encoder"}
FAMILIES = ("mha", "native", "mla", "gqa", "linear")


def points(mean: float | None, sd: float | None) -> str:
    """WER points: '+1.23 ± 0.40' (sd over seeds; none with one seed)."""
    if mean is None:
        return ""
    mean = round(100 * mean, 2) + 0.0  # + 0.0: a mean that rounds to zero reads +0.00, not -0.00
    return f"{mean:+.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def variant_key(label: str) -> tuple:
    """Report labels in reading order: control, MLA activation-aware then plain (rank falling), GQA (KV heads
    falling), linear; 'mla r=192 act' -> (2, 0, -192, ...)."""
    family = label.split()[0]
    number = re.search(r"=(\d+)", label)
    return (FAMILIES.index(family) if family in FAMILIES else len(FAMILIES), "act" not in label,
            -int(number.group(1)) if number else 0, label)


def cell(a: Mapping, full_seeds: int, control: bool) -> str:
    cut = "" if a["reduction_window"] is None else f" ({a['reduction_window']:.1f} %)"  # None: no decode cache
    text = f"WER {100 * a['wer_after']:.2f} %" if control else points(a["cost_after"], a["cost_after_sd"]) + cut
    n = len(a["seeds"])
    return text if n == full_seeds else f"{text}, {n} seed{'s' * (n > 1)}"


def markdown(aggs: Sequence[Mapping], controls: Sequence[str]) -> list[str]:
    """One table per (model, head) that ran more than one site, from the chosen recipe's aggregates; `controls`:
    the variants that are controls (study.CONTROL_ATTENTIONS)."""
    chosen = [a for a in aggs if a["chosen"]]
    lines = []
    for model, head in sorted({(a["model"], a["head"]) for a in chosen}):
        group = [a for a in chosen if (a["model"], a["head"]) == (model, head)]
        sites = sorted({a["sites"] for a in group},
                       key=lambda s: (SITE_ORDER.index(s) if s in SITE_ORDER else len(SITE_ORDER), s))
        if len(sites) < 2:
            continue
        full = max(len(a["seeds"]) for a in group)
        by = {(a["variant"], a["sites"]): a for a in group}
        lines += [f"### Cost matrix: {model} {head}", "",
                  f"Cost after fine-tuning, test WER points against the paired control (mean ± sd over {full} "
                  "seeds), and the decode-cache cut over one window; the control row: its WER.", "",
                  "| variant | " + " | ".join(SITE_NAMES.get(s, s) for s in sites) + " |",
                  "|---|" + "---:|" * len(sites)]
        for variant in sorted({a["variant"] for a in group}, key=variant_key):
            control = variant in controls
            cells = [cell(by[variant, s], full, control) if (variant, s) in by else "not run" for s in sites]
            lines.append(f"| {variant}{' (control)' * control} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
