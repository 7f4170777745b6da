"""The retention study's report (issue 31): does a converted Whisper keep what the original recognised?

    python -m asr_attention.reports.retention SWEEP_DIR [--out DIR]   # report: tables, plots, goal check
    python -m asr_attention.reports.retention SWEEP_DIR --choose      # print the recipe chosen on val only

Every run is tested on AN4 test (the fine-tuning corpus's held-out speakers) and on the out-of-domain set its
model names (model.ood_test: speechocean762, read sentences by non-native speakers; never trained, calibrated or
chosen on). Each run sits beside its paired MHA control (study.py's pairing: same recipe, steps and seed) and
beside the unconverted original (each run's own `unconverted` test, test_unconverted=true).

Goal (per model size, recipe chosen on val): a conversion removing >= 75 % of the whole decode cache (self +
cross, one 30-s window) whose speechocean762 WER after fine-tuning is within +1.0 point of the unconverted
original's, and whose AN4 test WER is within +0.5 of its paired control's: means over seeds.

Recipe choice (--choose and the report's first table): per model and sites, each recipe's runs are scored on AN4
val alone: at the checkpoint the run keeps (lowest val WER after step 0), val WER + val agreement WER (the
converted model's transcripts scored against the unconverted model's, val_agreement_wer: how much of the
original's behaviour is kept). recipe_choice.compare picks the winner head to head over (variant, seed) cells.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import recipe_choice
from .study import CONTROL_ATTENTIONS, WINDOW_S, WINDOW_TOKENS, _mean_sd, _pyplot, _reduction, pair_with_controls
from .study import run_row
from .sweep import read_results, report_rows, table_cell

GOAL_CUT_PCT, GOAL_OOD_PTS, GOAL_TEST_PTS = 75.0, 1.0, 0.5


def retention_score(val_curve: Sequence[Mapping]) -> float | None:
    """val WER + val agreement WER at the kept checkpoint (the lowest val WER after step 0); None without one."""
    points = [p for p in val_curve if p.get("step", 0) > 0 and p.get("val_wer") is not None
              and p.get("val_agreement_wer") is not None]
    if not points:
        return None
    best = min(points, key=lambda p: p["val_wer"])
    return best["val_wer"] + best["val_agreement_wer"]


def _phase_wer(results: Mapping, *keys: str) -> float | None:
    node: Any = results
    for key in keys:
        node = (node or {}).get(key)
    return node


def collect(sweep_dir: str | Path) -> list[dict]:
    """study.py's rows (paired with their controls), each with its out-of-domain and unconverted WERs."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for path, results in read_results(sweep_dir):
        row = run_row(path, sweep_dir, results)
        steps = max_steps(results)  # part of the recipe: 600 and 2,000 steps of it are not seeds of one cell
        row["recipe"] += "" if steps is None else f"; {steps} steps"
        ood = results.get("ood") or {}
        row.update(ood_set=ood.get("set"), ood_normaliser=ood.get("normaliser"), ood_utterances=ood.get("utterances"),
                   wer_original=_phase_wer(results, "unconverted", "test_wer"),
                   ood_wer_original=_phase_wer(ood, "unconverted", "test_wer"),
                   ood_wer_zero_shot=_phase_wer(ood, "before", "test_wer"),
                   ood_wer_after=_phase_wer(ood, "after", "test_wer"),
                   retention_score=retention_score(row["val_curve"]),
                   trained=fine_tuned_to_the_end(results))
        rows.append(row)
    pair_with_controls(rows)
    controls = {r["job"]: r for r in rows}
    for row in rows:
        control = controls.get(row["control_job"] or "")
        row["control_ood_wer_after"] = control["ood_wer_after"] if control else None
        row["ood_vs_original"] = _difference(row["ood_wer_after"], row["ood_wer_original"])
        row["test_vs_control"] = _difference(row["wer_after"], row["control_wer_after"])
        row["cut_window"] = _reduction(row["cache_window"], row["control_cache_window"])
    return rows


def max_steps(results: Mapping) -> int | None:
    return ((results.get("config") or {}).get("trainer") or {}).get("max_steps")


def fine_tuned_to_the_end(results: Mapping) -> bool:
    """Its last val pass came at trainer.max_steps: the fine-tune ran its course (whatever its tests did)."""
    curve, steps = results.get("val_curve") or [], max_steps(results)
    return bool(curve) and steps is not None and curve[-1].get("step", 0) >= steps


def _difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def choose(rows: Sequence[dict]) -> dict[tuple, dict]:
    """recipe_choice.compare over the runs' retention scores (val only). A run whose fine-tuning ended but whose
    tests were cut short (status running) counts: the choice reads its val record alone."""
    trained = [r for r in rows if r["status"] == "completed" or r["trained"]]
    return recipe_choice.compare(trained, score=lambda r: r["retention_score"], completed_only=False)


def aggregate(rows: Sequence[dict], choices: Mapping[tuple, Mapping]) -> list[dict]:
    """Per model, sites, recipe and variant: means and sample sds over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] != "failed":  # a run cut short keeps the phases it measured; the others stay blank
            groups.setdefault((r["model"], r["sites"], r["recipe"], r["variant"]), []).append(r)
    out = []
    for (model, sites, recipe, variant), runs in groups.items():
        choice = choices.get((model, runs[0]["head"], sites))
        agg = {"model": model, "sites": sites, "recipe": recipe, "variant": variant,
               "control": runs[0]["attention"] in CONTROL_ATTENTIONS, "seeds": sorted(r["seed"] for r in runs),
               "completed": sum(r["status"] == "completed" for r in runs),
               "chosen": choice is None or choice["chosen"] == recipe, "cut_window": runs[0]["cut_window"],
               "cache_window": runs[0]["cache_window"], "runs": runs}
        for key in ("wer_original", "wer_zero_shot", "wer_after", "test_vs_control", "ood_wer_original",
                    "ood_wer_zero_shot", "ood_wer_after", "ood_vs_original", "retention_score"):
            agg[key], agg[f"{key}_sd"] = _mean_sd([r[key] for r in runs if r[key] is not None])
        agg["goal"] = goal_met(agg)
        out.append(agg)
    return sorted(out, key=lambda a: (a["model"], a["sites"], not a["chosen"], a["recipe"], not a["control"],
                                      -(a["cut_window"] or 0), a["variant"]))


def goal_met(a: Mapping) -> bool | None:
    """None for a control (nothing converted) or where a figure is missing."""
    if a["control"] or None in (a["cut_window"], a["ood_vs_original"], a["test_vs_control"]):
        return None
    return (a["cut_window"] >= GOAL_CUT_PCT and 100 * a["ood_vs_original"] <= GOAL_OOD_PTS
            and 100 * a["test_vs_control"] <= GOAL_TEST_PTS)


def _pct(mean: float | None, sd: float | None = None, sign: bool = False) -> str:
    if mean is None:
        return ""
    text = f"{100 * mean:+.2f}" if sign else f"{100 * mean:.2f}"
    return text + (f" ± {100 * sd:.2f}" if sd is not None else "")


def summary_table(aggs: Sequence[dict]) -> list[str]:
    header = ["model", "recipe", "variant", "seeds (completed)", "cut window %", "AN4 original", "AN4 after", "AN4 vs control",
              "OOD original", "OOD zero-shot", "OOD after", "OOD vs original", "goal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for a in aggs:
        goal = {True: "met", False: "missed", None: "" if a["control"] else "not measured"}[a["goal"]]
        lines.append("| " + " | ".join([
            a["model"], a["recipe"] + (" (chosen)" if a["chosen"] else ""), a["variant"],
            ",".join(map(str, a["seeds"])) + f" ({a['completed']})", table_cell(a["cut_window"], ".1f"),
            _pct(a["wer_original"]), _pct(a["wer_after"], a["wer_after_sd"]),
            _pct(a["test_vs_control"], a["test_vs_control_sd"], sign=True), _pct(a["ood_wer_original"]),
            _pct(a["ood_wer_zero_shot"], a["ood_wer_zero_shot_sd"]), _pct(a["ood_wer_after"], a["ood_wer_after_sd"]),
            _pct(a["ood_vs_original"], a["ood_vs_original_sd"], sign=True), goal]) + " |")
    return lines


def runs_table(rows: Sequence[dict]) -> list[str]:
    header = ["job", "status", "seed", "AN4 zero-shot", "AN4 after", "OOD zero-shot", "OOD after",
              "val score (WER + agreement)", "steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in sorted(rows, key=lambda r: r["job"]):
        lines.append("| " + " | ".join([r["job"], r["status"], str(r["seed"]), _pct(r["wer_zero_shot"]),
                                        _pct(r["wer_after"]), _pct(r["ood_wer_zero_shot"]), _pct(r["ood_wer_after"]),
                                        _pct(r["retention_score"]), str(r["steps"] or "")]) + " |")
    return lines


def plot(aggs: Sequence[dict], path: Path) -> Path:
    """WER after fine-tuning against one window's decode cache, AN4 test and the out-of-domain set side by side,
    one colour per model size; dashed: each size's unconverted original."""
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    chosen = [a for a in aggs if a["chosen"] and a["cache_window"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = dict(zip(sorted({a["model"] for a in chosen}), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, (key, original, title) in zip(axes, (("wer_after", "wer_original", "AN4 test (fine-tuned on AN4 train)"),
                                                 ("ood_wer_after", "ood_wer_original",
                                                  "speechocean762 (never tuned on)"))):
        for a in chosen:
            if a[key] is None:
                continue
            x, y = a["cache_window"] / 2**20, 100 * a[key]
            ax.errorbar(x, y, yerr=100 * (a[f"{key}_sd"] or 0), fmt="s" if a["control"] else "o",
                        color=colors[a["model"]], capsize=3)
            ax.annotate(a["variant"], (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7)
        for model, color in colors.items():
            ref = [a[original] for a in chosen if a["model"] == model and a[original] is not None]
            if ref:
                ax.axhline(100 * statistics.fmean(ref), color=color, linestyle="--", linewidth=1,
                           label=f"{model} unconverted")
            ax.scatter([], [], color=color, label=model)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # plain MiB at 1-2-5 steps, not 3x10^0
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"decode cache per window, MiB ({WINDOW_S} s cross + {WINDOW_TOKENS} tokens self, fp32)")
        ax.set_ylabel("WER % after fine-tuning (mean ± sd over seeds)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Retention: converted Whisper decoders, recipe chosen on AN4 val", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    sweep_dir, out, rows = report_rows(sweep_dir, out_dir, collect)
    choices = choose(rows)
    aggs = aggregate(rows, choices)
    paths = {"md": out / "retention.md", "json": out / "retention.json", "png": out / "retention.png"}
    plot(aggs, paths["png"])
    sets = sorted({f"{r['ood_set']} ({r['ood_utterances']} utterances, normaliser {r['ood_normaliser']})"
                   for r in rows if r["ood_set"]})
    md = [f"# Retention study: {sweep_dir.name}", "",
          f"{len(rows)} runs. WER % (AN4: the project's normaliser; out of domain (OOD): {', '.join(sets)}). "
          "original: the unconverted model; zero-shot: right after conversion; after: the checkpoint with the "
          "best AN4 val WER. Cut: the whole decode cache of one window against the MHA control. Goal: cut >= "
          f"{GOAL_CUT_PCT:.0f} %, OOD after <= original + {GOAL_OOD_PTS} point, AN4 after <= control + "
          f"{GOAL_TEST_PTS} (means over seeds).", "", *summary_table(aggs), "", f"![retention]({paths['png'].name})",
          ""]
    md += recipe_choice.markdown(choices, score_name="val WER + val agreement WER")
    md += ["## Every run", "", *runs_table(rows), ""]
    paths["md"].write_text("\n".join(md))
    keep = [{k: v for k, v in r.items() if k not in ("val_curve", "pair_key", "group_key")} for r in rows]
    paths["json"].write_text(json.dumps({"runs": keep, "aggregates": [
        {k: v for k, v in a.items() if k != "runs"} for a in aggs]}, indent=1, default=str))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr_attention.reports.retention", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--choose", action="store_true", help="print the recipe chosen on val per model and exit")
    args = parser.parse_args(argv)
    if args.choose:
        rows = collect(args.sweep_dir)
        choices = choose(rows)
        for (model, head, sites), c in sorted(choices.items()):  # a run of it names the recipe's config option
            job = next((r["job"] for r in rows if r["recipe"] == c["chosen"] and r["model"] == model), None)
            print(f"{model}\t{sites}\t{c['chosen']}\t{c['rule']}\t{job}")
        return 0 if choices else 1
    paths = write_report(args.sweep_dir, args.out)
    print("\n".join(f"{k}: {p}" for k, p in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
