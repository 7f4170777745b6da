"""Compare a DDP fit with its single-device references (benchmarks/run_ddp_check.sh, run_ddp_whisper_check.sh): one
markdown/json table.

    python -m asr_attention.reports.ddp --commit <hash> --out benchmarks/ddp_2gpu <ddp_dir> <reference_dir>...
    python -m asr_attention.reports.ddp ... --eval so762 ...   # + each run's <run>/eval/so762.json test WER

The first run directory is the DDP run; every other row shows its difference from it: test metrics, the val curve
(val loss and WER at every val pass, the same function of the weights on every rank; a train-loss curve is one
rank's or one micro-batch's and does not compare point for point), and the final weights (checkpoints/last.ckpt,
BatchNorm running statistics left out: each rank keeps its own), with whether they agree to the CPU tests'
tolerance (rtol 1e-4, atol 1e-6). Training speed is per device (results.json training_speed: one rank's
utterances over fit's training seconds). The meta line names the card, the device count and the NCCL version.
"""

import argparse
import datetime
import json
from pathlib import Path

import torch

from asr_attention.reports.sweep import table_cell as cell

METRICS = ("test_loss", "test_wer", "test_cer")
RTOL, ATOL = 1e-4, 1e-6  # tests/test_ddp.py's: DDP against accumulation over the same batches
BATCH_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def load_run(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    trainer = results["config"]["trainer"]
    return {"run": run_dir.name, "status": results["status"], "strategy": trainer.get("strategy", "auto"),
            "devices": trainer.get("devices"), "batch_per_device": results["config"]["data"]["batch_size"],
            "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1),
            "num_nodes": trainer.get("num_nodes", 1), "global_step": results.get("global_step"),
            "wall_seconds": results.get("wall_seconds"), **{m: (results.get("after") or {}).get(m) for m in METRICS},
            **per_device_speed(results.get("training_speed")),
            "val_curve": [{k: p.get(k) for k in ("step", "val_loss", "val_wer")} for p in results.get("val_curve", [])]}


def per_device_speed(speed: dict | None) -> dict:
    """Utterances and audio seconds trained per second on one device, fit's val passes left out."""
    if not speed or not speed.get("seconds"):
        return {"train_seconds": None, "utterances_per_second": None, "audio_seconds_per_second": None}
    return {"train_seconds": speed["seconds"], "utterances_per_second": speed["utterances"] / speed["seconds"],
            "audio_seconds_per_second": speed["audio_seconds"] / speed["seconds"]}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor] | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists():
        return None
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if v.is_floating_point() and not k.endswith(BATCH_NORM_STATS)}


def weight_differences(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """Largest absolute and relative (where the reference is not 0) difference over every tensor, and whether all
    agree within RTOL/ATOL; a differing set of names is a disagreement."""
    if weights.keys() != reference.keys():
        return {"weights_max_abs_diff": None, "weights_max_rel_diff": None, "weights_agree": False}
    max_abs = max_rel = 0.0
    agree = True
    for name, ref in reference.items():
        diff = (weights[name].double() - ref.double()).abs()
        nonzero = ref != 0
        if diff.numel():
            max_abs = max(max_abs, diff.max().item())
        if nonzero.any():
            max_rel = max(max_rel, (diff[nonzero] / ref.double().abs()[nonzero]).max().item())
        agree = agree and torch.allclose(weights[name], ref, rtol=RTOL, atol=ATOL)
    return {"weights_max_abs_diff": max_abs, "weights_max_rel_diff": max_rel, "weights_agree": agree}


def curve_differences(curve: list[dict], reference: list[dict]) -> dict:
    """Over the val passes both runs made (by step): largest relative val-loss and absolute val-WER difference."""
    ref = {p["step"]: p for p in reference}
    both = [(p, ref[p["step"]]) for p in curve
            if p["step"] in ref and None not in (p["val_loss"], ref[p["step"]]["val_loss"])]
    if not both:
        return {"val_points": 0, "val_loss_max_rel_diff": None, "val_wer_max_abs_diff": None}
    return {"val_points": len(both),
            "val_loss_max_rel_diff": max(abs(p["val_loss"] - r["val_loss"]) / abs(r["val_loss"]) for p, r in both),
            "val_wer_max_abs_diff": max(abs(p["val_wer"] - r["val_wer"]) for p, r in both)}


def add_evaluations(rows: list[dict], run_dirs: list[Path], names: list[str]) -> None:
    """Each run's WER on other test sets (asr_attention.evaluate's <run>/eval/<name>.json, its fine-tuned model:
    "after"), and each reference's difference from the DDP run's; blank where a run has no such file."""
    for row, run_dir in zip(rows, run_dirs):
        for name in names:
            path = run_dir / "eval" / f"{name}.json"
            row[f"{name}_wer"] = json.loads(path.read_text())["after"]["test_wer"] if path.exists() else None
    for name in names:
        ddp = rows[0][f"{name}_wer"]
        for row in rows[1:]:
            if None not in (ddp, row[f"{name}_wer"]):
                row[f"{name}_wer_abs_diff"] = abs(row[f"{name}_wer"] - ddp)


def add_differences(rows: list[dict], weights: list[dict | None]) -> None:
    """Against the DDP row: each reference's relative test-loss and absolute WER/CER difference, its val curve's
    and its final weights' differences."""
    ddp = rows[0]
    for row, w in zip(rows[1:], weights[1:]):
        row.update(curve_differences(row["val_curve"], ddp["val_curve"]))
        if w is not None and weights[0] is not None:
            row.update(weight_differences(w, weights[0]))
        if None in (row["test_loss"], ddp["test_loss"]):
            continue
        row["test_loss_rel_diff"] = abs(row["test_loss"] - ddp["test_loss"]) / abs(ddp["test_loss"])
        row["test_wer_abs_diff"] = abs(row["test_wer"] - ddp["test_wer"])
        row["test_cer_abs_diff"] = abs(row["test_cer"] - ddp["test_cer"])


def markdown(rows: list[dict], meta: dict) -> str:
    evals = meta.get("evaluations", [])
    lines = [f"# DDP check: {meta['devices']} x {meta['card']}", "",
             f"torch {meta['torch']}, CUDA {meta['cuda']}, NCCL {meta['nccl']}, {meta['date']}, commit "
             f"{meta['commit']}. First row: the DDP fit; the others show their difference from it. Speed: per "
             f"device, training only (fit's val passes left out). Weights agree: every tensor of last.ckpt within "
             f"rtol {RTOL:g}, atol {ATOL:g}.", "",
             "| run | strategy | devices | batch / device | accumulate | steps | test loss | test WER | test CER "
             "| loss rel. diff | WER diff | CER diff | val loss max rel. diff | val WER max diff | weights max abs. "
             "diff | weights max rel. diff | weights agree | nodes | utt/s per device | audio s/s per device "
             "| train s | wall s |" + "".join(f" {n} WER | {n} WER diff |" for n in evals),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:"
             "|---:|" + "---:|---:|" * len(evals)]
    for r in rows:
        agree = {True: "yes", False: "no"}.get(r.get("weights_agree"), "")
        lines.append(f"| {r['run']} | {r['strategy']} | {r['devices']} | {r['batch_per_device']} | "
                     f"{r['accumulate_grad_batches']} | {r['global_step']} | {cell(r['test_loss'], '.6f')} | "
                     f"{cell(r['test_wer'], '.4f')} | {cell(r['test_cer'], '.4f')} | "
                     f"{cell(r.get('test_loss_rel_diff'), '.2e')} | "
                     f"{cell(r.get('test_wer_abs_diff'), '.4f')} | {cell(r.get('test_cer_abs_diff'), '.4f')} | "
                     f"{cell(r.get('val_loss_max_rel_diff'), '.2e')} | {cell(r.get('val_wer_max_abs_diff'), '.4f')} | "
                     f"{cell(r.get('weights_max_abs_diff'), '.2e')} | {cell(r.get('weights_max_rel_diff'), '.2e')} | "
                     f"{agree} | {r['num_nodes']} | {cell(r['utterances_per_second'], '.1f')} | "
                     f"{cell(r['audio_seconds_per_second'], '.1f')} | {cell(r['train_seconds'], '.0f')} | "
                     f"{cell(r['wall_seconds'], '.0f')} |" + "".join(
                         f" {cell(r[f'{n}_wer'], '.4f')} | {cell(r.get(f'{n}_wer_abs_diff'), '.4f')} |" for n in evals))
    return "\n".join(lines) + "\n"


def machine() -> dict:
    """The card, how many this machine has, and the CUDA and NCCL versions torch runs with (None on a CPU)."""
    if not torch.cuda.is_available():
        return {"card": "cpu", "devices": 1, "cuda": None, "nccl": None}
    nccl = torch.cuda.nccl.version()  # (major, minor, patch)
    return {"card": torch.cuda.get_device_name(), "devices": torch.cuda.device_count(), "cuda": torch.version.cuda,
            "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True, type=Path, help="path without suffix: writes .md and .json")
    parser.add_argument("--eval", action="append", default=[], metavar="NAME",
                        help="also each run's test WER in <run>/eval/NAME.json (asr_attention.evaluate --name NAME)")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding results.json, DDP first")
    args = parser.parse_args(argv)
    rows = [load_run(d) for d in args.runs]
    add_differences(rows, [final_weights(d) for d in args.runs])
    add_evaluations(rows, args.runs, args.eval)
    meta = {**machine(), "torch": torch.__version__, "date": datetime.date.today().isoformat(), "commit": args.commit,
            "evaluations": args.eval}
    text = markdown(rows, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
