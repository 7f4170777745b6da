"""Tables and plot of generation-benchmark JSONs (one or several runs, e.g. one per call on the card):

    python -m asr_attention.bench.generate_report --out benchmarks/generate/H200 run1.json run2.json

Ratios are against the baseline of the same size and batch in the same run: the faster of transformers'
generate paths (hf-static, hf-dynamic). Cache x MHA: against hf-dynamic's measured caches (the logical K/V of
the tokens fed; the static cache preallocates one more token)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from asr_attention.reports.sweep import table_cell as _f

BASELINES = ("hf-static", "hf-dynamic")
COLOURS = {"hf-static": "black", "hf-dynamic": "grey", "mha": "tab:blue", "mla": "tab:red", "gqa": "tab:green",
           "linear": "tab:purple", "mla-self": "tab:orange"}


def _ok(rows):
    return [r for r in rows if "error" not in r]


def baseline(rows: list[dict], size: str, batch: int) -> dict | None:
    candidates = [r for r in _ok(rows) if r["size"] == size and r["batch"] == batch and r["decoder"] in BASELINES]
    return max(candidates, key=lambda r: r["tokens_per_s"], default=None)


def add_ratios(data: dict) -> None:
    rows = data["rows"]
    for r in _ok(rows):
        base = baseline(rows, r["size"], r["batch"])
        mha = next((m for m in _ok(rows) if m["size"] == r["size"] and m["batch"] == r["batch"]
                    and m["decoder"] == "hf-dynamic"), None)
        if base is not None:
            r["baseline"] = base["decoder"]
            r["x_baseline"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["per_token_x_baseline"] = r["per_token_ms"] / base["per_token_ms"]
            if r.get("peak_gib") and base.get("peak_gib"):
                r["peak_x_baseline"] = r["peak_gib"] / base["peak_gib"]
        if mha is not None:
            r["cache_x_mha"] = r["cache_mib"] / mha["cache_mib"]
    for m in data.get("max_batch", []):
        base = max((b for b in data.get("max_batch", []) if b["size"] == m["size"] and b["decoder"] in BASELINES
                    and b.get("max_batch")), key=lambda b: b["max_batch"], default=None)
        if base is not None and m.get("max_batch"):
            m["x_baseline"] = m["max_batch"] / base["max_batch"]


def markdown(data: dict) -> str:
    meta = data["meta"]
    add_ratios(data)
    lines = [f"{meta['card']}, torch {meta['torch']}, transformers {meta['transformers']}, {meta['date']}, commit "
             f"{meta['commit']}. {meta['dtype']}, random weights, one 30-s window ({meta['encoder_frames']} encoder "
             f"frames), prompt of {meta['prompt_tokens']} tokens, {meta['new_tokens']} forced new tokens per row; "
             f"median of {meta['repeats']} runs after a warm-up. Limit = the HBM-bound tokens/s: batch x "
             f"{meta['bandwidth_bytes_per_s'] / 1e12:g} TB/s / (decoder weights + every cache, bytes read per "
             "step). x baseline: against the faster of transformers' generate paths at the same size and batch."
             + (f" Run stopped early: {meta['stopped']}." if meta.get("stopped") else ""), "",
             "| size | decoder | batch | tokens/s | x baseline | limit tokens/s | of limit | TTFT ms | ms/token | "
             "ms/token x baseline | peak GiB | peak x baseline | cache MiB (self + cross) | analytic MiB | "
             "measured = analytic | cache x MHA |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in data["rows"]:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['decoder']} | {r['batch']} | {r['error']} |" + " |" * 12)
            continue
        measured, analytic = r["cache_measured"], r["cache_analytic"]
        lines.append(
            f"| {r['size']} | {r['decoder']} | {r['batch']} | {r['tokens_per_s']:,.0f} | "
            f"{_f(r.get('x_baseline'), '.2f')} | {r['limit_tokens_per_s']:,.0f} | {r['limit_fraction']:.0%} | "
            f"{r['ttft_ms']:.1f} | {r['per_token_ms']:.2f} | {_f(r.get('per_token_x_baseline'), '.2f')} | "
            f"{_f(r.get('peak_gib'), '.2f')} | {_f(r.get('peak_x_baseline'), '.2f')} | "
            f"{measured['decoder_self'] / 2**20:,.1f} + {measured['cross'] / 2**20:,.1f} | "
            f"{sum(analytic.values()) / 2**20:,.1f} | {measured == analytic} | {_f(r.get('cache_x_mha'), '.3f')} |")
    if data.get("max_batch"):
        lines += ["", "Largest batch that fits (a full decode of every probe; doubling, then bisection; only the "
                  "measured model on the card):", "",
                  "| size | decoder | largest batch | tokens/s there (1 run) | x baseline's largest | probes | note |",
                  "|---|---|---:|---:|---:|---|---|"]
        for m in data["max_batch"]:
            probes = ", ".join(f"{p['batch']}{'' if p['fits'] else ' OOM'}" for p in m["probes"])
            lines.append(f"| {m['size']} | {m['decoder']} | {m.get('max_batch', '')} | "
                         f"{_f(m.get('tokens_per_s_at_max'), ',.0f')} | {_f(m.get('x_baseline'), '.2f')} | "
                         f"{probes} | {m.get('note', '')} |")
    if data.get("encoder"):
        lines += ["", "Encoder (not part of the decode rows):", "", "| size | batch | ms |", "|---|---:|---:|"]
        lines += [f"| {e['size']} | {e['batch']} | {e['ms']:.1f} |" for e in data["encoder"]]
    return "\n".join(lines) + "\n"


def line_of(decoder: str) -> tuple[str, str]:
    """(colour family, line style): the variant's colour; baseline dashed, our growing caches dotted, preallocated
    + graph solid, compiled first dash-dot."""
    if decoder in BASELINES:
        return decoder, "--"
    for suffix, style in (("-graph", "-"), ("-compiled", "-.")):
        if decoder.endswith(suffix):
            return decoder.removesuffix(suffix), style
    return decoder, ":"


def draw_plot(runs: list[dict], path: Path) -> bool:
    """tokens/s and peak memory against batch, one line per (size, decoder); False if matplotlib is missing."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        print(f"matplotlib is not installed: no {path}; make it later with python -m "
              "asr_attention.bench.generate_report", flush=True)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(13, 5))
    for data in runs:
        series: dict[tuple, list] = {}
        for r in _ok(data["rows"]):
            series.setdefault((r["size"], r["decoder"]), []).append((r["batch"], r["tokens_per_s"], r.get("peak_gib")))
        for m in data.get("max_batch", []):
            if m.get("max_batch"):
                series.setdefault((m["size"], m["decoder"]), []).append((m["max_batch"], m["tokens_per_s_at_max"], None))
        sizes = sorted({size for size, _ in series})
        for (size, name), points in series.items():
            points.sort()
            family, linestyle = line_of(name)
            style = dict(color=COLOURS.get(family, "black"), marker="os^vDP"[sizes.index(size) % 6],
                         linestyle=linestyle)
            speed.plot([p[0] for p in points], [p[1] for p in points], label=f"{size} {name}", **style)
            mem = [p for p in points if p[2] is not None]
            if mem:
                memory.plot([p[0] for p in mem], [p[2] for p in mem], label=f"{size} {name}", **style)
    for ax, label in ((speed, "tokens/s"), (memory, "peak GiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if speed.lines:
        speed.legend(fontsize=7)
    meta = runs[0]["meta"]
    fig.suptitle(f"Whisper decoding, {meta['new_tokens']} forced tokens, {meta['dtype']}, {meta['card']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(runs: list[dict], out: Path, with_plot: bool = True) -> str:
    """<out>.md (every run's tables) and, with_plot, <out>.png."""
    out = Path(out)
    text = "# Whisper generation benchmark\n\n" + "\n".join(markdown(r) for r in runs)
    out.with_suffix(".md").write_text(text)
    if with_plot:
        draw_plot(runs, out.with_suffix(".png"))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description="tables and plot of generation-benchmark JSONs")
    parser.add_argument("--out", required=True, help="path without suffix: <out>.md, <out>.png (and merged .json)")
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    runs = [json.loads(p.read_text()) for p in args.runs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(runs) > 1:
        out.with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=1))
    print(write_report(runs, out))


if __name__ == "__main__":
    main()
