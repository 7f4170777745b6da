"""The quality study's report: `python -m asr_attention.reports.study <sweep dir> [--out DIR] [--wandb]`.

Every run is paired with its control: the run whose config is the same but for the attention variant (same
model and head, sites, seed, data, recipe and steps) and whose attention is MHA (the original weights
re-expressed; attention=native where the sweep has no MHA run). Conversion cost = run WER - control WER on the
test split (a fraction; Whisper's WER is on normalised text), right after conversion (zero-shot) and after
fine-tuning. Writes into --out (default: the sweep dir):
  study_runs.csv        one row per run: its control, WERs, costs, decode cache, steps, commit
  study.md              per model, head, sites and variant: mean and spread (sample std) of the costs over seeds,
                        whether those seeds had their own batch order, the decode cache and its reduction, the goal
                        check, the runs' commits, the plots
  pareto_<model>.png    cost after fine-tuning against decode cache per second of audio, per generated token and
                        per window
  recovery_<model>.png  val WER against fine-tune steps (each run's results.json val_curve), mean over seeds

A seed re-run with its own batch order (data.seed = seed) supersedes the same run with a shared order (data.seed
stayed 0 whatever the seed before 2026-12-01): the report pools the re-run, and study_runs.csv names it in the old
run's `superseded_by`.

Decode cache (fp32, batch 1, all layers, bytes): what inference keeps while decoding. Whisper with its decoder:
cross-attention K/V per second of audio and decoder self-attention per generated token (results' cache_per_site);
the whole window = 30 s of cross cache + 448 tokens of self cache (Whisper's window and its most tokens). A CTC
encoder: its self-attention cache per second of audio if it streamed (window: 30 s); no token cache. Linear
attention's state does not grow: its sites count as fixed bytes in the window, with no rate.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..backbones.sites import site_kinds
from ..runs.identity import identity
from . import cost_matrix, recipe_choice
from .sweep import analytic_cache_mib, log_to_wandb, read_results, report_rows, pareto_front, report_cli, table_cell, variant_label

log = logging.getLogger(__name__)

CONTROL_ATTENTIONS = ("mha", "native")  # in order of preference
WINDOW_S, WINDOW_TOKENS = 30, 448  # Whisper: one window's audio and its most tokens
COLUMNS = [
    "job", "status", "model", "head", "sites", "variant", "recipe", "seed", "data_seed", "superseded_by",
    "control_job", "wer_zero_shot", "wer_after", "control_wer_zero_shot", "control_wer_after", "cost_zero_shot",
    "cost_after", "cache_per_second", "cache_per_token", "cache_fixed", "control_cache_per_second",
    "control_cache_per_token", "cache_window", "control_cache_window", "steps", "commit", "dirty", "error",
]


def sites_label(attention: Mapping, model: Mapping) -> str:
    sites = attention.get("sites")
    return sites if isinstance(sites, str) else "+".join(site_kinds(sites, model.get("family"), model.get("head")))


def recipe_key(config: Mapping, with_seed: bool) -> str:
    """A run's identity (run_identity: its config minus names, logging and loader workers) but the attention
    variant (its sites stay), and the seeds (`seed` and the batch order's `data.seed`) unless asked for: runs with
    equal keys differ only in the variant, so one is the other's paired control. A null option counts as absent:
    options added later default to null meaning the earlier behaviour (e.g. optim.head_lr), so runs from before
    and after still pair."""
    rest = _without_nulls(identity(dict(config)))
    if with_seed:  # a run from before data.seed existed shuffled as data seed 0 does: they pair
        rest.setdefault("data", {})["seed"] = data_seed(config)
    else:
        rest.pop("seed", None)
        (rest.get("data") or {}).pop("seed", None)
    rest["attention"] = {"sites": (config.get("attention") or {}).get("sites")}
    return json.dumps(rest, sort_keys=True, default=str)


def data_seed(config: Mapping) -> int:
    """The batch order's seed; absent (runs from before conf/train.yaml set it) is the sampler's default, 0."""
    seed = (config.get("data") or {}).get("seed")
    return 0 if seed is None else seed


def _without_nulls(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    return {k: _without_nulls(v) for k, v in tree.items() if v is not None}


def decode_cache(results: Mapping) -> tuple[float | None, float | None, float]:
    """(bytes per second of audio, bytes per generated token, fixed bytes) that decoding keeps; see the module
    doc. Linear attention keeps a state whose size does not grow: its sites' bytes count as fixed, not as a rate."""
    config = results.get("config") or {}
    model, attention = config.get("model") or {}, config.get("attention") or {}
    sites = site_kinds(attention.get("sites"), model.get("family"), model.get("head"))
    linear = attention.get("name") == "linear"
    per_site = results.get("cache_per_site")
    if per_site and model.get("head", "seq2seq") == "seq2seq":
        cross, self_ = float(per_site["cross_per_second"]), float(per_site["decoder_self_per_token"])
        fixed_cross, fixed_self = linear and "cross" in sites, linear and "decoder_self" in sites
        return (None if fixed_cross else cross, None if fixed_self else self_,
                cross * fixed_cross + self_ * fixed_self)
    mib = (results.get("conversion") or {}).get("cache_mib_per_1000_frames")
    if mib is None and model and attention:
        mib = analytic_cache_mib(model, attention)  # attention=native: no conversion summary
    if mib is None or not model.get("frame_ms"):
        return None, None, 0.0
    if linear:
        return None, None, mib * 2**20
    return mib * 2**20 / model["frame_ms"], None, 0.0  # 1000 frames last frame_ms seconds


def window_cache(per_second: float | None, per_token: float | None, fixed: float) -> float | None:
    """One window's decode cache: WINDOW_S seconds of audio, WINDOW_TOKENS tokens (a decoder's), fixed states."""
    if per_second is None and per_token is None and not fixed:
        return None
    return (per_second or 0.0) * WINDOW_S + (per_token or 0.0) * WINDOW_TOKENS + fixed


def run_row(path: Path, sweep_dir: Path, results: Mapping) -> dict[str, Any]:
    config = results.get("config") or {}
    model, attention = config.get("model") or {}, config.get("attention") or {}
    per_second, per_token, fixed = decode_cache(results)
    code, error = results.get("code") or {}, results.get("error")
    return {
        "job": str(path.parent.relative_to(sweep_dir)) or ".", "status": results.get("status", "?"),
        "model": model.get("name", "?"), "head": model.get("head", "ctc"),
        "sites": sites_label(attention, model),
        "variant": variant_label(attention), "attention": attention.get("name"),
        "recipe": recipe_choice.recipe_label(config), "seed": config.get("seed"),
        "data_seed": data_seed(config),
        "wer_zero_shot": (results.get("before") or {}).get("test_wer"),
        "wer_after": (results.get("after") or {}).get("test_wer"),
        "cache_per_second": per_second, "cache_per_token": per_token, "cache_fixed": fixed,
        "cache_window": window_cache(per_second, per_token, fixed),
        "steps": results.get("global_step"), "val_curve": results.get("val_curve") or [],
        "commit": code.get("commit"), "dirty": code.get("dirty"),
        "error": error.splitlines()[0] if error else None,
        "pair_key": recipe_key(config, with_seed=True), "group_key": recipe_key(config, with_seed=False),
        "superseded_by": None,
    }


def pair_with_controls(rows: list[dict]) -> None:
    """Fill each row's control_* and cost_* fields from its control (see the module doc); None without one."""
    controls: dict[str, dict] = {}
    for name in reversed(CONTROL_ATTENTIONS):  # mha overwrites native
        controls.update({r["pair_key"]: r for r in rows if r["attention"] == name and r["status"] == "completed"})
    for row in rows:
        control = controls.get(row["pair_key"])
        row["control_job"] = control["job"] if control else None
        for key in ("wer_zero_shot", "wer_after", "cache_per_second", "cache_per_token", "cache_window"):
            row[f"control_{key}"] = control[key] if control else None
        for phase in ("zero_shot", "after"):
            run, ref = row[f"wer_{phase}"], row[f"control_wer_{phase}"]
            row[f"cost_{phase}"] = run - ref if run is not None and ref is not None else None


def supersede_shared_order(rows: list[dict]) -> None:
    """Mark each completed run whose seed was re-run with its own batch order (data_seed == seed, same config
    otherwise) as superseded by that re-run: its seeds shared one batch order, so they understate the spread."""
    own = {(r["group_key"], r["variant"], r["seed"]): r["job"] for r in rows
           if r["status"] == "completed" and r["data_seed"] == r["seed"]}
    for row in rows:
        if row["data_seed"] != row["seed"]:
            row["superseded_by"] = own.get((row["group_key"], row["variant"], row["seed"]))


def collect(sweep_dir: str | Path) -> list[dict]:
    sweep_dir = Path(sweep_dir)
    rows = [run_row(path, sweep_dir, results) for path, results in read_results(sweep_dir)]
    pair_with_controls(rows)
    supersede_shared_order(rows)
    return rows


def batch_order(runs: Sequence[dict]) -> str:
    """'per seed' when each seed shuffled with its own data seed, 'data seed N for all' when they shared one, ''
    for a single run."""
    if len(runs) < 2:
        return ""
    if all(r["data_seed"] == r["seed"] for r in runs):
        return "per seed"
    shared = {r["data_seed"] for r in runs}
    return f"data seed {shared.pop()} for all" if len(shared) == 1 else "mixed"


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _reduction(value: float | None, reference: float | None) -> float | None:
    return 100.0 * (1.0 - value / reference) if value is not None and reference else None


def aggregate(rows: Sequence[dict], choices: Mapping[tuple, Mapping] | None = None) -> list[dict]:
    """One row per model, head, sites, variant and recipe: mean and sample std over its completed, paired seeds.
    `chosen`: the recipe is the one picked on val for its model, head and sites (recipe_choice), or the only one;
    where val could pick none (recipe_choice says None), no recipe of that group is."""
    choices = choices or {}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "completed" and r["cost_after"] is not None and not r["superseded_by"]:
            groups.setdefault((r["model"], r["head"], r["sites"], r["variant"], r["group_key"]), []).append(r)
    out = []
    for (model, head, sites, variant, _), runs in groups.items():
        first = runs[0]
        choice = choices.get((model, head, sites))
        agg = {"model": model, "head": head, "sites": sites, "variant": variant, "attention": first["attention"],
               "recipe": first["recipe"], "compared": choice is not None,
               "chosen": choice is None or choice["chosen"] == first["recipe"],
               "seeds": sorted(r["seed"] for r in runs), "batch_order": batch_order(runs), "runs": runs,
               "cache_per_second": first["cache_per_second"], "cache_per_token": first["cache_per_token"],
               "cache_fixed": first["cache_fixed"], "cache_window": first["cache_window"],
               "reduction_per_second": _reduction(first["cache_per_second"], first["control_cache_per_second"]),
               "reduction_per_token": _reduction(first["cache_per_token"], first["control_cache_per_token"]),
               "reduction_window": _reduction(first["cache_window"], first["control_cache_window"])}
        for key in ("wer_after", "control_wer_after", "cost_zero_shot", "cost_after"):
            agg[key], agg[f"{key}_sd"] = _mean_sd([r[key] for r in runs if r[key] is not None])
        out.append(agg)
    return sorted(out, key=lambda a: (a["model"], a["head"], a["sites"], not a["chosen"], a["recipe"],
                                      a["attention"] not in CONTROL_ATTENTIONS, a["variant"]))


# --- outputs -------------------------------------------------------------------------------------------------------

def write_csv(rows: Sequence[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})


def summary_table(aggs: Sequence[dict]) -> str:
    header = ["head", "sites", "variant", "recipe", "seeds", "batch order", "WER after %", "control WER after %",
              "cost zero-shot (pts)", "cost after FT (pts)", "cache B/s", "cut /s %", "cache B/token", "cut /token %",
              "fixed state B", "cut window %", "steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for a in aggs:
        steps = sorted({r["steps"] for r in a["runs"]} - {None})
        cells = [a["head"], a["sites"], a["variant"] + (" (control)" if a["attention"] in CONTROL_ATTENTIONS else ""),
                 a["recipe"] + (" (chosen on val)" if a["chosen"] and a["compared"] else ""),
                 ",".join(map(str, a["seeds"])), a["batch_order"],
                 table_cell(a["wer_after"] and 100 * a["wer_after"], ".2f"),
                 table_cell(a["control_wer_after"] and 100 * a["control_wer_after"], ".2f"),
                 cost_matrix.points(a["cost_zero_shot"], a["cost_zero_shot_sd"]),
                 cost_matrix.points(a["cost_after"], a["cost_after_sd"]),
                 table_cell(a["cache_per_second"], ",.0f"), table_cell(a["reduction_per_second"], ".1f"),
                 table_cell(a["cache_per_token"], ",.0f"), table_cell(a["reduction_per_token"], ".1f"),
                 table_cell(a["cache_fixed"] or None, ",.0f"),
                 table_cell(a["reduction_window"], ".1f"), ",".join(map(str, steps))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def goal_met(a: Mapping, cut_pct: float = 75.0, cost_pts: float = 1.0, cost: float | None = None) -> bool:
    """>= cut_pct of one window's decode cache removed for a cost after fine-tuning <= cost_pts WER points: the
    mean over seeds, or `cost` (one seed's)."""
    cut, cost = a["reduction_window"], a["cost_after"] if cost is None else cost
    return cut is not None and cut >= cut_pct and cost is not None and 100 * cost <= cost_pts


def goal_name(a: Mapping) -> str:
    return f"{a['head']}:{a['sites']} {a['variant']}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(aggs: Sequence[dict], model: str, path: Path) -> Path:
    """Cost after fine-tuning (mean, bars: sd over seeds) against decode cache per second, per token and per window
    (the one panel where linear attention's fixed state shows); the Pareto front (no other point has both less
    cache and a lower cost) dashed, and only its points named (study.md's table names every point)."""
    plt = _pyplot()
    panels = [(key, unit) for key, unit in (("cache_per_second", "per second of audio"),
                                            ("cache_per_token", "per generated token"),
                                            ("cache_window", f"per window ({WINDOW_S} s, {WINDOW_TOKENS} tokens)"))
              if any(a[key] is not None for a in aggs)] or [("cache_per_second", "per second of audio")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    sites = sorted({a["sites"] for a in aggs})
    colors = dict(zip(sites, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, (key, unit) in zip(axes[0], panels):
        points = [a for a in aggs if a[key] is not None and a["cost_after"] is not None]
        on_front = pareto_front([(a[key], a["cost_after"]) for a in points])
        for a, named in zip(points, on_front):
            x, y = a[key], 100 * a["cost_after"]
            ax.errorbar(x, y, yerr=100 * (a["cost_after_sd"] or 0), fmt="o", color=colors[a["sites"]], capsize=3)
            if named:
                ax.annotate(f"{a['head']}:{a['sites']}\n{a['variant']}", (x, y), textcoords="offset points",
                            xytext=(5, 3), fontsize=6)
        front = sorted((a[key], 100 * a["cost_after"]) for a, keep in zip(points, on_front) if keep)
        if front:
            ax.step(*zip(*front), where="post", color="red", linestyle="--", linewidth=1, label="Pareto front")
        for s in sites:
            ax.scatter([], [], color=colors[s], label=s)
        xs = [a[key] for a in points]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 50:
            ax.set_xscale("log")
        if points and max(abs(100 * a["cost_after"]) for a in points) > 10:
            ax.set_yscale("symlog", linthresh=1)  # costs of tens of points beside the sub-point ones the goal reads
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xlabel(f"decode cache, bytes {unit} (fp32, batch 1, all layers)")
        ax.set_ylabel("conversion cost after fine-tuning, WER points vs control")
        ax.grid(True, alpha=0.3)
        if points:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no cache {unit}", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{model}: conversion cost vs decode cache (lower-left is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def recovery_curves(aggs: Sequence[dict]) -> dict[tuple[str, str], dict[str, list[tuple[int, float]]]]:
    """{(head, sites): {variant: [(step, mean val WER over the seeds measured at that step)]}}."""
    curves: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = {}
    for a in aggs:
        by_step: dict[int, list[float]] = {}
        for r in a["runs"]:
            for p in r["val_curve"]:
                if "val_wer" in p:
                    by_step.setdefault(p["step"], []).append(p["val_wer"])
        if by_step:
            curves.setdefault((a["head"], a["sites"]), {})[a["variant"]] = [
                (s, statistics.fmean(v)) for s, v in sorted(by_step.items())]
    return curves


def plot_recovery(aggs: Sequence[dict], model: str, path: Path) -> Path:
    plt = _pyplot()
    curves = recovery_curves(aggs)
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(5.5 * max(1, len(curves)), 4.5), squeeze=False)
    for ax, ((head, sites), variants) in zip(axes[0], sorted(curves.items())):
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # > 10 variants: no colour twice
        for variant, points in sorted(variants.items()):
            ax.plot(*zip(*[(s, 100 * w) for s, w in points]), marker=".", label=variant)
        ax.set_title(f"{head}: {sites}", fontsize=9)
        ax.set_xlabel("fine-tune steps")
        ax.set_ylabel("val WER %, mean over seeds")
        if max(100 * w for points in variants.values() for _, w in points) > 50:
            ax.set_yscale("symlog", linthresh=1)  # zero-shot loops (> 100 %) beside fine-tuned WERs under 1 %
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{model}: val WER during fine-tuning (step 0: converted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def batch_order_note(rows: Sequence[dict]) -> list[str]:
    """A warning when runs' batch order did not follow their seed (data.seed stayed 0 before 2026-12-01), and how
    many of them a re-run with its own batch order superseded."""
    shared = [r for r in rows if r["status"] == "completed" and r["data_seed"] != r["seed"]]
    if not shared:
        return []
    superseded = sum(bool(r["superseded_by"]) for r in shared)
    return [f"**Batch order.** {len(shared)} of {len(rows)} runs shuffled their training batches with data seed "
            f"{', '.join(sorted({str(r['data_seed']) for r in shared}))} whatever their `seed` (the run's seed "
            "reached the sampler only from 2026-12-01). Their seeds differ only in what conversion calibrates on "
            "(activation-aware MLA), a new head's initialisation (CTC), dropout and GPU non-determinism: where "
            "none of these applies, a variant's seeds are near-repeats of one run and its spread understates "
            f"the seed-to-seed variance. {superseded} of them were re-run with their own batch order and are "
            "superseded (study_runs.csv: `superseded_by`); the table pools the re-runs. Its `batch order` column "
            "says which rows still rest on a shared order.", ""]


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    sweep_dir, out, rows = report_rows(sweep_dir, out_dir, collect)
    choices = recipe_choice.compare(rows)
    aggs = aggregate(rows, choices)
    paths = {"csv": out / "study_runs.csv", "md": out / "study.md"}
    write_csv(rows, paths["csv"])
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    unpaired = [r["job"] for r in rows if r["status"] == "completed" and r["control_job"] is None]
    md = [f"# Quality study: {sweep_dir}", "",
          f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "."
          + (f" Completed without a completed control (no cost): {', '.join(unpaired)}." if unpaired else ""), "",
          "Cost: test WER minus the paired control's (the same config with MHA on the same sites: same recipe, "
          "steps and seed), in WER points, mean ± sample std over seeds; zero-shot = right after conversion. "
          f"Decode cache: bytes, fp32, batch 1, all layers; cut = reduction against the control; window = "
          f"{WINDOW_S} s of cross cache + {WINDOW_TOKENS} tokens of self cache.", ""]
    md += batch_order_note(rows)
    for model in sorted({a["model"] for a in aggs}):
        model_aggs = [a for a in aggs if a["model"] == model]
        chosen = [a for a in model_aggs if a["chosen"]]  # plots and goal: the recipe picked on val, never on test
        paths[f"pareto_{model}"] = plot_pareto(chosen, model, out / f"pareto_{model}.png")
        paths[f"recovery_{model}"] = plot_recovery(chosen, model, out / f"recovery_{model}.png")
        met = [a for a in chosen if a["attention"] not in CONTROL_ATTENTIONS and goal_met(a)]
        every_seed = [a for a in met if all(goal_met(a, cost=r["cost_after"]) for r in a["runs"])]
        md += [f"## {model}", "", summary_table(model_aggs), "",
               "≥ 75 % of the decode cache removed for ≤ +1.0 WER point after fine-tuning"
               + (" (the recipe chosen on val)" if len(chosen) < len(model_aggs) else "") + ": "
               + (", ".join(map(goal_name, met)) or "none")
               + (f". On every one of their seeds: {', '.join(map(goal_name, every_seed)) or 'none'}" if met else ""),
               "",
               f"![Pareto]({paths[f'pareto_{model}'].name})", "", f"![Recovery]({paths[f'recovery_{model}'].name})", ""]
    md += cost_matrix.markdown(aggs, CONTROL_ATTENTIONS)
    md += recipe_choice.markdown(choices)
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        md += ["## Runs that did not complete", ""] + [f"- {r['job']} ({r['model']} {r['sites']} {r['variant']} "
                                                       f"seed {r['seed']}): {r['status']}: {r['error']}"
                                                       for r in failed] + [""]
    commits: dict[str, list[str]] = {}
    for r in rows:
        commits.setdefault(f"{r['commit'] or 'unknown'}{' (dirty)' if r['dirty'] else ''}", []).append(r["job"])
    md += ["## Code", ""] + [f"- {c}: {len(jobs)} runs ({', '.join(jobs[:8])}{', …' if len(jobs) > 8 else ''})"
                             for c, jobs in commits.items()] + [""]
    paths["md"].write_text("\n".join(md))
    log_to_wandb("study", COLUMNS, rows, paths)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    return report_cli(argv, "python -m asr_attention.reports.study", __doc__.split("\n\n")[0], write_report, "study")


if __name__ == "__main__":
    sys.exit(main())
