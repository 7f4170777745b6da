"""Compare a DDP fit with its single-device references (benchmarks/run_ddp_check.sh): one markdown/json table.

    python -m asr_attention.reports.ddp --commit <hash> --out benchmarks/ddp_2gpu <ddp_dir> <reference_dir>...

The first run directory is the DDP run; every other row shows its difference from it.
"""

import argparse
import datetime
import json
from pathlib import Path

import torch

from asr_attention.reports.sweep import table_cell as cell

METRICS = ("test_loss", "test_wer", "test_cer")


def load_run(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    trainer = results["config"]["trainer"]
    return {"run": run_dir.name, "status": results["status"], "strategy": trainer.get("strategy", "auto"),
            "devices": trainer.get("devices"), "batch_per_device": results["config"]["data"]["batch_size"],
            "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1),
            "global_step": results.get("global_step"), "wall_seconds": results.get("wall_seconds"),
            **{m: (results.get("after") or {}).get(m) for m in METRICS}}


def add_differences(rows: list[dict]) -> None:
    """Relative difference of each reference's test loss and absolute WER/CER difference, against the DDP row."""
    ddp = rows[0]
    for row in rows[1:]:
        if None in (row["test_loss"], ddp["test_loss"]):
            continue
        row["test_loss_rel_diff"] = abs(row["test_loss"] - ddp["test_loss"]) / abs(ddp["test_loss"])
        row["test_wer_abs_diff"] = abs(row["test_wer"] - ddp["test_wer"])
        row["test_cer_abs_diff"] = abs(row["test_cer"] - ddp["test_cer"])


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# DDP check: {meta['devices']} x {meta['card']}", "",
             f"torch {meta['torch']}, {meta['date']}, commit {meta['commit']}. First row: the DDP fit; the others "
             "show their difference from it.", "",
             "| run | strategy | devices | batch / device | accumulate | steps | test loss | test WER | test CER "
             "| loss rel. diff | WER diff | CER diff | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['strategy']} | {r['devices']} | {r['batch_per_device']} | "
                     f"{r['accumulate_grad_batches']} | {r['global_step']} | {cell(r['test_loss'], '.6f')} | "
                     f"{cell(r['test_wer'], '.4f')} | {cell(r['test_cer'], '.4f')} | "
                     f"{cell(r.get('test_loss_rel_diff'), '.2e')} | "
                     f"{cell(r.get('test_wer_abs_diff'), '.4f')} | {cell(r.get('test_cer_abs_diff'), '.4f')} | "
                     f"{cell(r['wall_seconds'], '.0f')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True, type=Path, help="path without suffix: writes .md and .json")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding results.json, DDP first")
    args = parser.parse_args(argv)
    rows = [load_run(d) for d in args.runs]
    add_differences(rows)
    cuda = torch.cuda.is_available()
    meta = {"card": torch.cuda.get_device_name() if cuda else "cpu", "devices": torch.cuda.device_count() if cuda
            else 1, "torch": torch.__version__, "date": datetime.date.today().isoformat(), "commit": args.commit}
    text = markdown(rows, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
