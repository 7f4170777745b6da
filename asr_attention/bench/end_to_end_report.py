"""The end-to-end benchmark's JSON (end_to_end.py) -> a Markdown table and a plot of RTFx against batch size.

    python -m asr_attention.bench.end_to_end_report benchmarks/end_to_end/<name>.json   # again, from the JSON

x hf: a row's RTFx over the faster of transformers' rows (hf-static, hf-dynamic) of the same model, set and batch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def best_hf(rows: list[dict]) -> dict[tuple, float]:
    best: dict[tuple, float] = {}
    for r in rows:
        if r["decoder"].startswith("hf-") and "rtfx" in r:
            key = (r["model"], r["set"], r["batch"])
            best[key] = max(best.get(key, 0.0), r["rtfx"])
    return best


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def split(row: dict) -> str:
    """'features + encoder 0.21 / decoding 1.52 / text 0.01' (a split pass's seconds per stage; runs before it had
    none)."""
    return " / ".join(f"{name} {seconds:.2f}" for name, seconds in row.get("stages_s", {}).items())


def table(data: dict) -> list[str]:
    rows, best = data["rows"], best_hf(data["rows"])
    lines = ["| model | set | decoder | batch | utts | RTFx | x hf | tokens/s | peak GiB | warm-up s | differ from hf "
             "| WER % | cut | split s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['set']} | {r['decoder']} | {r['batch']} |"
        if "error" in r:
            lines.append(head + f" {r['error']} |" + " |" * 9)
            continue
        base = best.get((r["model"], r["set"], r["batch"]))
        lines.append(head + " | ".join([
            f" {r['utterances']}", f"{r['rtfx']:,.1f}", _cell(base and r["rtfx"] / base, ".2f"),
            f"{r['tokens_per_s']:,.0f}", _cell(r.get("peak_gib"), ".2f"), f"{r['warmup_s']:.1f}",
            _cell(r.get("differ_from_hf"), "d"), f"{r['wer']:.2f}", f"{r['truncated']}", split(r)]) + " |")
    return lines


def markdown(data: dict) -> str:
    m = data["meta"]
    sets = ", ".join(f"{s['name']} ({s['utterances']} utterances, {s['audio_s'] / 60:.1f} min)" for s in data["sets"])
    return "\n".join([
        "# End-to-end transcription: ours against transformers' generate", "",
        f"{m['card']}, {m['date']}, commit {m['commit']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"{m['dtype']}.", "",
        f"Command: `{m['command']}`", "",
        f"Sets: {sets}; batch 1 reads the first {m['limit_batch1']} utterances of each. Decoding: {m['decoding']}.",
        "",
        "RTFx: audio seconds / wall seconds from the waves in memory to the text (features, encoder, decoding, "
        "detokenising), after one untimed pass per batch shape (warm-up s: transformers' compile, our CUDA-graph "
        "capture). x hf: RTFx over the faster of hf-static and hf-dynamic at the same model, set and batch. differ "
        "from hf: utterances whose text is not transformers' (static cache) at the same batch. WER: the scoring "
        "normaliser. cut: utterances the token limit cut. Peak: torch.cuda.max_memory_allocated during the timed "
        "pass (the model's weights included). split s: a second pass over the set with each stage timed on its own "
        "(synchronised around it).", "",
        *table(data), ""])


def draw_plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    panels = sorted({(r["model"], r["set"]) for r in data["rows"] if "rtfx" in r})
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (model, name) in zip(axes[0], panels):
        decoders = dict.fromkeys(r["decoder"] for r in data["rows"] if (r["model"], r["set"]) == (model, name))
        for decoder in decoders:
            points = sorted((r["batch"], r["rtfx"]) for r in data["rows"] if "rtfx" in r and
                            (r["model"], r["set"], r["decoder"]) == (model, name, decoder))
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="--" if decoder.startswith("hf-") else "-",
                        label=decoder)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="RTFx", title=f"{model}, {name}")
        ax.set_xticks(sorted({r["batch"] for r in data["rows"] if (r["model"], r["set"]) == (model, name)}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{data['meta']['card']}, {data['meta']['dtype']}, commit {data['meta']['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(data: dict, stem: Path, with_plot: bool = True) -> None:
    """<stem>.md, and with_plot <stem>.png."""
    stem = Path(stem)
    (stem.parent / f"{stem.name}.md").write_text(markdown(data))
    if with_plot:
        draw_plot(data, stem.parent / f"{stem.name}.png")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path)
    args = p.parse_args(argv)
    write_report(json.loads(args.json.read_text()), args.json.parent / args.json.name.removesuffix(".json"))


if __name__ == "__main__":
    main()
