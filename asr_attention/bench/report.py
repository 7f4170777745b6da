"""Ratios against native and the markdown tables; also merges several runs' results.json into one suite report:

    python -m asr_attention.bench.report --out benchmarks/gpu_H200 run1/results.json run2/results.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from asr_attention.reports.sweep import table_cell as _f

RATIOS = (("rtfx", "rtfx_x"), ("peak_gib", "peak_x"), ("attn_ms", "attn_x"))


def add_ratios(rows: list[dict]) -> None:
    """ratio = variant / native of the same quantity at the same (batch, seconds, dtype), measured in this run;
    RTFx against native's paired timing where the row has one. rtfx_x > 1: faster than native; peak_x < 1: less
    memory; attn_x < 1: attention faster."""
    for row in rows:
        base = next((r for r in rows if r["variant"] == "native" and r["batch"] == row["batch"]
                     and r["seconds"] == row["seconds"] and r["dtype"] == row["dtype"]), None)
        if base is None:
            continue
        for key, ratio in RATIOS:
            if row.get(key) is not None and base.get(key):
                row[ratio] = row[key] / base[key]
        if row.get("native_ms_paired") and row.get("ms"):  # native timed in alternation with this variant
            row["rtfx_x"] = row["native_ms_paired"] / row["ms"]


def model_title(data: dict) -> str:
    m = data["model"]
    arch = m.get("arch") or {}
    cls = arch.get("hf_class", "Wav2Vec2ForCTC") if m["family"] == "hf_wav2vec2" else "SpeechBrain Branchformer"
    pos = arch.get("position_embeddings_type")
    params = next((r.get("params") for r in data["rows"] if r["variant"] == "native"), None)
    return (f"{m['name']}: {cls}{f' ({pos})' if pos else ''}, d={m['d_model']}, {m['num_heads']} heads, "
            f"{m['num_layers']} layers, {_f(params and params / 1e6, '.1f')} M params (native), random weights")


def markdown(data: dict, heading: str = "##") -> str:
    meta = data["meta"]
    lines = [f"{heading} {model_title(data)}", "",
             f"{meta['card']}, torch {meta['torch']}, {meta['date']}, commit {meta['commit']}. "
             f"Whole encoder forward, front end {meta['front_end']}; {meta['timing']}; fp32 = {meta.get('fp32')}; "
             "bf16 = autocast over fp32 weights. "
             "Ratios = variant / native, same process: RTFx x>1 faster, peak x<1 smaller, attention x<1 faster."
             + (" RTFx x native = native's ms / the variant's ms, both from one alternating loop (`native ms, "
                "paired`)." if any("native_ms_paired" in r for r in data["rows"]) else ""),
             "", "| variant | batch x s | dtype | frames | ms | native ms, paired | RTFx | RTFx x native | peak GiB | "
             "peak x native | attention ms (1 layer x L) | attention x native | attention share |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"] + data.get("long", []):
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['batch']} x {r['seconds']:g} | {r['dtype']} | | {r['error']} "
                         "| | | | | | | | |")
            continue
        lines.append(
            f"| {r['variant']} | {r['batch']} x {r['seconds']:g} | {r['dtype']} | {r.get('frames', '')} | "
            f"{r['ms']:.2f} | {_f(r.get('native_ms_paired'), '.2f')} | {r['rtfx']:.0f} | "
            f"{_f(r.get('rtfx_x'), '.2f')} | {_f(r.get('peak_gib'), '.2f')} | "
            f"{_f(r.get('peak_x'), '.2f')} | {_f(r.get('attn_ms'), '.2f')} | {_f(r.get('attn_x'), '.2f')} | "
            f"{_f(r.get('attn_share'), '.0%')} |")
    lines += ["", "Cache (timed layer's attention with use_cache=True on its captured input, x layers; native "
              "caches what MHA does):", "", "| variant | frames | batch | dtype | measured MiB | analytic MiB | equal |",
              "|---|---:|---:|---|---:|---:|---|"]
    for name, c in data["cache"].items():
        lines.append(f"| {name} | {c['frames']} | {c['batch']} | {c['dtype']} | {c['measured_mib']:.4f} | "
                     f"{c['analytic_mib']:.4f} | {c['measured_bytes'] == c['analytic_bytes']} |")
    if data.get("relpos"):
        lines += ["", "Native relative-position attention alone vs our MHA, same weights, same captured call. Ours on "
                  "CUDA: the fused Triton XL kernel (position scores made per tile); elsewhere SDPA with the XL "
                  "bias as an additive mask. Error: ||ours - native|| / ||native|| on that call's output.", "",
                  "| module | batch x frames | dtype | native ms | ours ms | speedup (native / ours) | error | timing |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        for r in data["relpos"]:
            lines.append(f"| {r['module']} | {r['batch']} x {r['frames']} | {r['dtype']} | {r['native_ms']:.3f} | "
                         f"{r['ours_ms']:.3f} | {r['speedup']:.2f} | {_f(r.get('error'), '.1e')} | "
                         f"{r['method']} |")
    if data.get("moonshot"):
        lines += ["", "Moonshot: whole forward in one CUDA graph (bf16):", "",
                  "| variant | batch x s | ms | RTFx | x native eager | note |", "|---|---|---:|---:|---:|---|"]
        for r in data["moonshot"]:
            lines.append(f"| {r['variant']} | {r['batch']} x {r['seconds']:g} | {_f(r.get('ms'), '.2f')} | "
                         f"{_f(r.get('rtfx'), '.0f')} | {_f(r.get('rtfx_x_native_eager'), '.2f')} | "
                         f"{r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def suite(paths: list[Path], out: Path, title: str = "GPU benchmark suite") -> str:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    meta = runs[0]["meta"]
    text = f"# {title}\n\n{meta['card']}, torch {meta['torch']}, {meta['date']}, commit {meta['commit']}.\n\n"
    text += "\n".join(markdown(r) for r in runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(text)
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1, default=str))
    return text


def card_slug(card: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", card.replace("NVIDIA ", "")).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser(description="merge bench results.json files into one markdown/json report")
    parser.add_argument("--out", required=True, help="path without suffix; '{card}' is replaced by the card name")
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args()
    existing = [p for p in args.results if p.exists()]
    if not existing:
        raise SystemExit("no results.json to merge")
    card = json.loads(existing[0].read_text())["meta"]["card"]
    out = Path(args.out.replace("{card}", card_slug(card)))
    print(suite(existing, out))


if __name__ == "__main__":
    main()
