"""The retention study's report (reports/retention.py) on SYNTHETIC results.json files (made-up numbers, no
training): the recipe is chosen on val WER + val agreement WER only (never on the out-of-domain set), each run's
out-of-domain WER is set against the unconverted original's, its AN4 WER against its paired control's, and the
goal reads both with the cut."""

import json
from pathlib import Path

import pytest

from asr_attention.reports.retention import collect, choose, aggregate, main, write_report

MLA = {"name": "mla", "latent_dim": 96, "calibration": "activation", "sites": ["decoder_self", "cross"]}
MHA = {"name": "mha", "sites": ["decoder_self", "cross"]}
RECIPES = {"ce": {"lr": 3e-5}, "kl": {"lr": 3e-5, "kl_weight": 1.0, "ce_weight": 0.0, "distill_text": "teacher"}}
# decoder self bytes per token and cross bytes per second (fp32, tiny.en): MHA, and MLA at r = d/4
CACHE = {"mha": {"decoder_self_per_token": 12288, "cross_per_second": 614400},
         "mla": {"decoder_self_per_token": 1536, "cross_per_second": 76800}}


def synthetic_run(sweep: Path, job: str, attention: dict, recipe: str, seed: int, *, an4: float, ood: float,
                  val: float, agreement: float, original=(0.025, 0.378), steps: int = 1000) -> None:
    """A Whisper run's results.json with SYNTHETIC numbers: AN4 test and the out-of-domain phases."""
    res = {"status": "completed", "code": {"commit": "c0ffee", "dirty": False}, "global_step": 1000,
           "config": {"model": {"name": "whisper", "family": "whisper", "head": "seq2seq", "d_model": 384},
                      "attention": attention, "seed": seed, "optim": RECIPES[recipe], "data": {"seed": seed},
                      "run_name": job, "trainer": {"max_steps": steps}},
           "unconverted": {"test_wer": original[0]}, "before": {"test_wer": 0.4}, "after": {"test_wer": an4},
           "cache_per_site": CACHE[attention["name"]],
           "val_curve": [{"step": 0, "val_wer": 0.5, "val_agreement_wer": 0.9},
                         {"step": 500, "val_wer": val, "val_agreement_wer": agreement},
                         {"step": 1000, "val_wer": val + 0.01, "val_agreement_wer": 0.0}],  # not the kept one
           "ood": {"set": "speechocean762", "normaliser": "english", "utterances": 600,
                   "unconverted": {"test_wer": original[1]}, "before": {"test_wer": 1.1}, "after": {"test_wer": ood}}}
    (sweep / job).mkdir(parents=True)
    (sweep / job / "results.json").write_text(json.dumps(res))


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "retention"
    for seed in (0, 1):
        # ce: better on AN4 val, forgets English (agreement with the original poor)
        synthetic_run(s, f"ce-mha-{seed}", MHA, "ce", seed, an4=0.003, ood=0.42, val=0.004, agreement=0.30)
        synthetic_run(s, f"ce-mla-{seed}", MLA, "ce", seed, an4=0.006, ood=1.23, val=0.008, agreement=0.60)
        # kl: a little worse on AN4 val, much closer to the original
        synthetic_run(s, f"kl-mha-{seed}", MHA, "kl", seed, an4=0.020, ood=0.380, val=0.020, agreement=0.01)
        synthetic_run(s, f"kl-mla-{seed}", MLA, "kl", seed, an4=0.022 + 0.002 * seed, ood=0.380 + 0.004 * seed,
                      val=0.030, agreement=0.05)
    return s


def test_the_recipe_is_chosen_on_val_wer_plus_agreement_never_on_the_out_of_domain_set(sweep):
    rows = collect(sweep)
    (choice,) = choose(rows).values()
    assert "kl_weight 1.0" in choice["chosen"] and "ce_weight 0.0" in choice["chosen"]
    # the kept checkpoint is step 500's (lowest val WER), not step 1000's perfect agreement
    kl = next(r for r in rows if r["job"] == "kl-mla-0")
    assert kl["retention_score"] == pytest.approx(0.030 + 0.05)
    # swap the out-of-domain WERs: the choice does not move
    for p in sweep.glob("*/results.json"):
        res = json.loads(p.read_text())
        res["ood"]["after"]["test_wer"] = 2.0 - res["ood"]["after"]["test_wer"]
        p.write_text(json.dumps(res))
    (again,) = choose(collect(sweep)).values()
    assert again["chosen"] == choice["chosen"]


def test_each_run_faces_the_original_out_of_domain_and_its_control_on_an4(sweep):
    aggs = aggregate(collect(sweep), {})
    mla_kl = next(a for a in aggs if not a["control"] and "kl_weight" in a["recipe"])
    assert mla_kl["cut_window"] == pytest.approx(87.5)
    assert mla_kl["ood_vs_original"] == pytest.approx((0.380 + 0.384) / 2 - 0.378)
    assert mla_kl["test_vs_control"] == pytest.approx((0.022 + 0.024) / 2 - 0.020)
    assert mla_kl["goal"] is True  # +0.4 OOD point, +0.3 AN4 point: within both bounds
    mla_ce = next(a for a in aggs if not a["control"] and "kl_weight" not in a["recipe"])
    assert mla_ce["goal"] is False  # +85 points out of domain
    assert all(a["goal"] is None for a in aggs if a["control"])


def test_report_files(sweep, tmp_path, capsys):
    paths = write_report(sweep, tmp_path / "out")
    md = paths["md"].read_text()
    assert "speechocean762 (600 utterances, normaliser english)" in md
    assert "| met |" in md and "| missed |" in md
    assert paths["png"].stat().st_size > 10_000
    data = json.loads(paths["json"].read_text())
    assert len(data["runs"]) == 8 and len(data["aggregates"]) == 4
    assert main([str(sweep), "--choose"]) == 0
    line = capsys.readouterr().out.strip().split("\t")
    assert line[0] == "whisper" and line[-1].startswith("kl-")


def test_runs_of_one_recipe_for_other_step_counts_are_other_rows_not_more_seeds(sweep):
    """A 2,000-step run beside 1,000-step ones (same recipe, variant and seed): its own aggregate, paired with a
    2,000-step control, never averaged in as another seed."""
    synthetic_run(sweep, "kl-mha-long", MHA, "kl", 0, an4=0.030, ood=0.390, val=0.02, agreement=0.01, steps=2000)
    synthetic_run(sweep, "kl-mla-long", MLA, "kl", 0, an4=0.040, ood=0.500, val=0.03, agreement=0.05, steps=2000)
    aggs = aggregate(collect(sweep), {})
    long = next(a for a in aggs if not a["control"] and a["recipe"].endswith("; 2000 steps"))
    assert long["seeds"] == [0] and long["ood_wer_after"] == pytest.approx(0.500)
    assert long["test_vs_control"] == pytest.approx(0.040 - 0.030)
    short = next(a for a in aggs if not a["control"] and "kl_weight" in a["recipe"] and a["recipe"].endswith("; 1000 steps"))
    assert short["seeds"] == [0, 1] and short["ood_wer_after"] == pytest.approx((0.380 + 0.384) / 2)
