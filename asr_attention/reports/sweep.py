"""The comparison report of a sweep: `python -m asr_attention.reports.sweep <sweep dir> [--out DIR] [--wandb]`.

Reads every results.json below the directory and writes, next to them (or into --out):
  report.csv          one row per job, raw values (WER/CER as fractions)
  report.md           the same table for people (WER/CER in %), the Pareto front, the plots
  wer_vs_cache.png    WER after fine-tuning against KV-cache MiB at 1000 frames; the Pareto front (lower-left is
                      better: no other job has both less cache and a lower WER) marked
  throughput.png      RTFx (seconds of audio encoded per second) per model x attention

Cache MiB is per 1000 encoder frames, fp32, batch 1, all layers (results' conversion summary); attention=native
(unpatched) caches what MHA does. The reduction is against the MHA job of the same model in the sweep (native when
the sweep has no MHA job). With --wandb (or when a W&B run is already active) the table and plots go to W&B too.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COLUMNS = [
    "job", "model", "attention", "variant", "status", "wer_before", "cer_before", "wer_after", "cer_after",
    "cache_mib_1000", "cache_reduction_pct", "parameters", "rtfx", "error",
]
REFERENCE_ATTENTIONS = ("mha", "native")  # the cache reference of a model, in order of preference


def find_results(sweep_dir: str | Path) -> list[Path]:
    """Every results.json below the directory, jobs in numeric order (0, 1, ..., 10) where they are numbered."""
    def key(p: Path):
        return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(p.relative_to(sweep_dir)))]

    return sorted(Path(sweep_dir).rglob("results.json"), key=key)


def read_results(sweep_dir: str | Path) -> list[tuple[Path, dict]]:
    """(path, results) of every results.json below the directory (find_results' order); an unreadable one raises
    ValueError naming it (the sweep table instead lists it as a row of its own)."""
    out = []
    for path in find_results(sweep_dir):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable results.json ({type(err).__name__}: {err})") from err
    return out


def report_rows(sweep_dir: str | Path, out_dir: str | Path | None, collect) -> tuple[Path, Path, list[dict]]:
    """(sweep dir, the report's folder, made; default the sweep dir) and collect(sweep dir)'s rows, none raising
    FileNotFoundError: what every report of a sweep starts with."""
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"no results.json below {sweep_dir}")
    return sweep_dir, out, rows


def variant_label(attention: Mapping) -> str:
    """The attention with the knob that sets its cache: 'mla r=144', 'mla r=96 act spread', 'mla r=192 act
    cross-memory' (cross sites over the encoder output: attention.cross_latent), 'gqa kv=2', 'mha'."""
    name = attention.get("name", "?")
    if name == "mla":
        label = f"mla r={attention.get('latent_dim')}"
        label += " act" if attention.get("calibration") == "activation" else ""
        label += " spread" if attention.get("rank_allocation") == "spectrum" else ""
        return label + (" cross-memory" if attention.get("cross_latent") == "memory" else "")
    if name == "gqa":
        return f"gqa kv={attention.get('num_kv_heads')}"
    if name == "linear":
        return f"linear {attention.get('feature_map', '')}".strip()
    return name


def analytic_cache_mib(model: Mapping, attention: Mapping) -> float | None:
    """Cache MiB per 1000 frames (fp32, batch 1) from the configs alone: for jobs whose conversion never ran
    (attention=native, or a job that failed before it)."""
    try:
        import torch

        from .kv_cache import cache_rows

        rows = cache_rows(model, attention, 1000, 1, torch.float32)
        return next(r.mib for r in rows if r.chosen)
    except Exception:  # noqa: BLE001  (an invalid config, e.g. the one that failed the job)
        return None


def job_row(path: Path, sweep_dir: Path, results: Mapping) -> dict[str, Any]:
    config = results.get("config") or {}
    model, attention = config.get("model") or {}, config.get("attention") or {}
    before, after = results.get("before") or {}, results.get("after") or {}
    cache = (results.get("conversion") or {}).get("cache_mib_per_1000_frames")
    if cache is None and model and attention:
        cache = analytic_cache_mib(model, attention)
    error = results.get("error")
    return {
        "job": str(path.parent.relative_to(sweep_dir)) or ".",
        "model": model.get("name", "?"),
        "attention": attention.get("name", "?"),
        "variant": variant_label(attention),
        "status": results.get("status", "?"),
        "wer_before": before.get("test_wer"),
        "cer_before": before.get("test_cer"),
        "wer_after": after.get("test_wer"),
        "cer_after": after.get("test_cer"),
        "cache_mib_1000": cache,
        "cache_reduction_pct": None,
        "parameters": results.get("parameters"),
        "rtfx": (results.get("throughput") or {}).get("rtfx"),
        "error": error.splitlines()[0] if error else None,
    }


def add_cache_reduction(rows: list[dict]) -> None:
    """cache_reduction_pct = 100 * (1 - cache / the reference's cache), the reference being the model's MHA job."""
    for row in rows:
        for ref_name in REFERENCE_ATTENTIONS:
            refs = [r for r in rows if r["model"] == row["model"] and r["attention"] == ref_name
                    and r["cache_mib_1000"]]
            if refs:
                if row["cache_mib_1000"] is not None:
                    row["cache_reduction_pct"] = 100.0 * (1.0 - row["cache_mib_1000"] / refs[0]["cache_mib_1000"])
                break


def collect(sweep_dir: str | Path) -> list[dict]:
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in find_results(sweep_dir):
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            rows.append({**{c: None for c in COLUMNS}, "job": str(path.parent.relative_to(sweep_dir)),
                         "model": "?", "attention": "?", "variant": "?", "status": "unreadable",
                         "error": f"{type(err).__name__}: {err}"})
            continue
        rows.append(job_row(path, sweep_dir, results))
    add_cache_reduction(rows)
    return rows


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For points (cost, error), both minimised: whether each is on the Pareto front, i.e. no other point is at
    least as good in both and strictly better in one. Equal points are all on it."""
    def dominated(i: int) -> bool:
        x, y = points[i]
        return any(xj <= x and yj <= y and (xj < x or yj < y) for j, (xj, yj) in enumerate(points) if j != i)

    return [not dominated(i) for i in range(len(points))]


def plottable(rows: Sequence[dict]) -> list[dict]:
    """Completed jobs with both a WER after fine-tuning and a cache figure."""
    return [r for r in rows if r["status"] == "completed" and r["wer_after"] is not None
            and r["cache_mib_1000"] is not None]


def front_rows(rows: Sequence[dict]) -> list[dict]:
    points = plottable(rows)
    on_front = pareto_front([(r["cache_mib_1000"], r["wer_after"]) for r in points])
    return [r for r, keep in zip(points, on_front) if keep]


# --- outputs -------------------------------------------------------------------------------------------------------

def write_csv(rows: Sequence[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def table_cell(value: float | None, fmt: str) -> str:
    """A markdown table cell: blank for a missing (None or NaN) value."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def markdown_table(rows: Sequence[dict], front: Sequence[dict] = ()) -> str:
    front_jobs = {r["job"] for r in front}
    header = ["job", "model", "attention", "status", "WER before %", "CER before %", "WER after %", "CER after %",
              "cache MiB / 1000 frames", "cache reduction %", "parameters", "RTFx", "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        error = (r["error"] or "").replace("|", "\\|")
        cells = [
            r["job"], r["model"], r["variant"] + (" ★" if r["job"] in front_jobs else ""), r["status"],
            _pct(r["wer_before"]), _pct(r["cer_before"]), _pct(r["wer_after"]), _pct(r["cer_after"]),
            table_cell(r["cache_mib_1000"], ".3f"), table_cell(r["cache_reduction_pct"], ".1f"),
            table_cell(r["parameters"], ","), table_cell(r["rtfx"], ".1f"),
            error[:160] + ("…" if len(error) > 160 else ""),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot_wer_vs_cache(rows: Sequence[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = plottable(rows)
    front = {r["job"] for r in front_rows(rows)}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    models = sorted({r["model"] for r in points})
    markers = dict(zip(sorted({r["attention"] for r in points}), "os^Dvp*hX"))
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in points:
        x, y = r["cache_mib_1000"], 100 * r["wer_after"]
        ax.scatter(x, y, marker=markers[r["attention"]], color=colors[r["model"]], s=60, zorder=3,
                   edgecolors="red" if r["job"] in front else "none", linewidths=2)
        ax.annotate(f"{r['model']}\n{r['variant']}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
    on_front = sorted((r["cache_mib_1000"], 100 * r["wer_after"]) for r in points if r["job"] in front)
    if on_front:
        xs, ys = zip(*on_front)
        ax.step(xs, ys, where="post", color="red", linestyle="--", linewidth=1, zorder=2, label="Pareto front")
    for model in models:
        ax.scatter([], [], color=colors[model], marker="o", label=model)
    xs = [r["cache_mib_1000"] for r in points]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 50:
        ax.set_xscale("log")  # linear attention's fixed state is orders of magnitude below the KV caches
    ax.set_xlabel("KV cache, MiB per 1000 frames (fp32, batch 1, all layers)")
    ax.set_ylabel("test WER after fine-tuning, %")
    ax.set_title("WER vs KV cache (lower-left is better; red: Pareto front)")
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no completed job", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_throughput(rows: Sequence[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2), 4.5))
    labels = [f"{r['model']}\n{r['variant']}" for r in rows]
    values = [r["rtfx"] or 0.0 for r in rows]
    bars = ax.bar(range(len(rows)), values, color=["tab:blue" if r["rtfx"] else "lightgray" for r in rows])
    for bar, r in zip(bars, rows):
        text = f"{r['rtfx']:.1f}" if r["rtfx"] else r["status"]
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=7, textcoords="offset points", xytext=(0, 2))
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("RTFx (audio seconds / compute second)")
    ax.set_title("Encoder throughput per model x attention (one test batch)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.csv, report.md and the two PNGs; returns their paths (and logs to W&B if a run is active)."""
    sweep_dir, out, rows = report_rows(sweep_dir, out_dir, collect)
    front = front_rows(rows)
    paths = {"csv": out / "report.csv", "md": out / "report.md",
             "wer_vs_cache": out / "wer_vs_cache.png", "throughput": out / "throughput.png"}
    write_csv(rows, paths["csv"])
    plot_wer_vs_cache(rows, paths["wer_vs_cache"])
    plot_throughput(rows, paths["throughput"])
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    md = [
        f"# Sweep report: {sweep_dir}", "",
        f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", "",
        "WER/CER on the test split, before (right after conversion) and after fine-tuning. Cache: MiB per 1000 "
        "encoder frames, fp32, batch 1, all layers; reduction against the same model's MHA job. RTFx: seconds of "
        "audio encoded per second. ★: on the Pareto front of WER after vs cache.", "",
        markdown_table(rows, front), "",
        "Pareto front (no other job has both less cache and a lower WER): "
        + (", ".join(f"{r['model']} {r['variant']}" for r in sorted(front, key=lambda r: r["cache_mib_1000"]))
           or "none (no completed job)"), "",
        f"![WER vs KV cache]({paths['wer_vs_cache'].name})", "",
        f"![Throughput]({paths['throughput'].name})", "",
    ]
    paths["md"].write_text("\n".join(md))
    log_to_wandb("report", COLUMNS, rows, paths)
    return paths


def log_to_wandb(prefix: str, columns: Sequence[str], rows: Sequence[dict], paths: Mapping[str, Path]) -> bool:
    """Log a report's table (`<prefix>/table`) and every plot in `paths` (`<prefix>/<name>`) to the active W&B
    run, if any."""
    if "wandb" not in sys.modules or sys.modules["wandb"].run is None:
        return False
    wandb = sys.modules["wandb"]
    wandb.log({f"{prefix}/table": wandb.Table(columns=list(columns), data=[[r[c] for c in columns] for r in rows]),
               **{f"{prefix}/{name}": wandb.Image(str(p)) for name, p in paths.items() if p.suffix == ".png"}})
    return True


def open_report_run(sweep_dir: Path, out: Path | None, project: str, entity: str | None, name: str):
    """A W&B run of its own for a report, in the sweep's group (its jobs' ${sweep_group:...}): offline unless
    WANDB_MODE=online."""
    import os

    import wandb

    group = "_".join(sweep_dir.resolve().parts[-2:])
    return wandb.init(project=project, entity=entity, group=group, job_type="report", name=f"{name}-{group}",
                      mode=os.environ.get("WANDB_MODE", "offline"), dir=str(out or sweep_dir))


def report_cli(argv: Sequence[str] | None, prog: str, description: str, write, name: str) -> int:
    """The command line of a sweep report (this one, reports/study.py): `write(sweep_dir, out)` -> {kind: path}."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("sweep_dir", type=Path, help="a sweep's directory, e.g. multirun/2026-11-28/04-07-46")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep dir)")
    parser.add_argument("--wandb", action="store_true",
                        help="log the report to a W&B run of its own (offline unless WANDB_MODE=online)")
    parser.add_argument("--project", default="asr-attention", help="W&B project (with --wandb)")
    parser.add_argument("--entity", default=None, help="W&B entity (with --wandb)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = open_report_run(args.sweep_dir, args.out, args.project, args.entity, name) if args.wandb else None
    try:
        paths = write(args.sweep_dir, args.out)
    finally:
        if run is not None:
            run.finish()
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return report_cli(argv, "python -m asr_attention.reports.sweep", __doc__.split("\n\n")[0], write_report, "report")


if __name__ == "__main__":
    sys.exit(main())
