"""The quality study: its presets state the grid (every point composes and validates), one -m command runs a
2-point cut of the GPU preset end to end on the CPU with tiny limits, and the study report's numbers are the runs'
(cost = run WER - paired control WER, read back from their results.json); the report's pairing, seed spread and
cache arithmetic on SYNTHETIC results.json files (made-up numbers, no training)."""

import csv
import json
import statistics
import subprocess
from pathlib import Path

import pytest

from asr_attention.runs import code_version as code_version_module
from asr_attention.reports import recipe_choice
from asr_attention.runs.code_version import code_version
from asr_attention.training.config_check import validate
from asr_attention.config.resolvers import recipe_tag
from asr_attention.reports.study import (aggregate, collect, decode_cache, goal_met, recovery_curves, sites_label,
                                        window_cache, write_report)
from asr_attention.runs.wandb_log import offline_runs, read_offline_run

from test_sweep import REPO, job_results

WHISPER_SITES = ["decoder", "decoder_self", "cross", "encoder_seq2seq", "encoder_ctc", "all"]
VARIANTS = ["mha", "gqa_kv1", "gqa_kv2", "gqa_kv3", "mla_d", "mla_d2", "mla_d4", "mla_d8", "mla_d_act",
            "mla_d2_act", "mla_d4_act", "mla_d8_act", "linear_elu", "linear_hedgehog"]


def test_presets_state_the_grid_and_every_point_validates(compose_cfg):
    cfg = compose_cfg("train", ["experiment=quality_whisper"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["seed"] == "0,1,2"
    assert params["study/sites"].split(",") == WHISPER_SITES
    assert params["study/variant"].split(",") == VARIANTS
    assert cfg.trainer.max_steps <= 2000 and cfg.trainer.max_epochs is None
    # sites and variant presets set separate keys: each one once, beside the other's hardest choice
    for point in ([f"study/variant={v}", "study/sites=all"] for v in VARIANTS):
        validate(compose_cfg("train", ["experiment=quality_whisper", *point]))  # raises on a bad point
    for point in ([f"study/sites={s}", "study/variant=gqa_kv3"] for s in WHISPER_SITES):
        validate(compose_cfg("train", ["experiment=quality_whisper", *point]))
    mla = compose_cfg("train", ["experiment=quality_whisper", "study/variant=mla_d8_act"])
    assert (mla.attention.name, mla.attention.latent_dim, mla.attention.calibration) == ("mla", 48, "activation")
    ctc = compose_cfg("train", ["experiment=quality_whisper", "study/sites=encoder_ctc"])
    assert (ctc.model.head, list(ctc.attention.sites), ctc.optim.attention_only_steps) == ("ctc", ["encoder"], 0)
    both = compose_cfg("train", ["experiment=quality_whisper", "study/sites=decoder", "study/variant=gqa_kv3"])
    assert list(both.attention.sites) == ["decoder_self", "cross"] and both.attention.num_kv_heads == 3
    assert both.optim.attention_only_steps >= both.trainer.max_steps  # attention only, every step

    small = compose_cfg("train", ["experiment=quality_whisper_small"], return_hydra_config=True)
    assert dict(small.hydra.sweeper.params) == {"seed": "0,1,2", "study/sites": "decoder",
                                                "study/variant": "mha,mla_d4_act,gqa_kv1"}
    assert (small.trainer.max_steps, small.trainer.val_check_interval, small.data.limit_val) == (200, 50, 32)
    one_k = compose_cfg("train", ["experiment=quality_whisper_1k", "seed=1"], return_hydra_config=True)
    assert dict(one_k.hydra.sweeper.params) == {"seed": "0,1,2", "study/sites": "decoder",
                                                "study/variant": "mha,mla_d2_act,mla_d4_act"}
    assert (one_k.trainer.max_steps, one_k.trainer.val_check_interval, one_k.data.limit_val) == (1000, 200, None)
    ctc_2k = compose_cfg("train", ["experiment=quality_whisper_1k", "study/sites=encoder_ctc",
                                   "study/variant=mla_d2_act", "trainer.max_steps=2000"])
    validate(ctc_2k)
    assert (ctc_2k.model.head, ctc_2k.attention.latent_dim, ctc_2k.trainer.max_steps) == ("ctc", 192, 2000)
    # the recipe choice: quality_whisper_1k's grid x 2 recipes x 2 more lrs; the CTC one trains the whole encoder
    recipe = compose_cfg("train", ["experiment=quality_recipe"], return_hydra_config=True)
    assert dict(recipe.hydra.sweeper.params) == {**one_k.hydra.sweeper.params, "optim.lr": "3e-4,1e-4,3e-5",
                                                 "study/recipe": "attention_only,attention_then_all"}
    then_all = compose_cfg("train", ["experiment=quality_recipe", "study/recipe=attention_then_all", "optim.lr=3e-5"])
    assert (then_all.optim.lr, then_all.optim.attention_only_steps, then_all.trainer.max_steps) == (3e-5, 500, 1000)
    ctc_recipe = compose_cfg("train", ["experiment=quality_recipe_ctc"], return_hydra_config=True)
    assert dict(ctc_recipe.hydra.sweeper.params) == {"seed": "0,1,2", "study/sites": "encoder_ctc",
                                                     "study/variant": "mha,mla_d2_act", "optim.lr": "1e-4,3e-5"}
    assert (ctc_recipe.model.head, ctc_recipe.model.freeze_encoder, ctc_recipe.optim.attention_only_steps,
            ctc_recipe.trainer.max_steps, ctc_recipe.optim.head_lr) == ("ctc", False, 0, 2000, 1e-3)
    validate(ctc_recipe)

    enc = compose_cfg("train", ["experiment=quality_encoders"], return_hydra_config=True)
    assert enc.hydra.sweeper.params["model"] == "branchformer,conformer"
    encoder_variants = enc.hydra.sweeper.params["study/variant"].split(",")
    assert encoder_variants == [v for v in VARIANTS if v != "gqa_kv3"]  # 3 does not divide their 4 heads
    for point in ([f"study/variant={v}", "model=conformer"] for v in encoder_variants):
        validate(compose_cfg("train", ["experiment=quality_encoders", *point]))
    assert compose_cfg("train", ["experiment=quality_encoders", "model=branchformer"]).model.name == "branchformer_demo"
    assert compose_cfg("train", ["experiment=quality_encoders", "study/variant=mla_d2"]).attention.latent_dim == 72


def test_code_version_environment_then_git(monkeypatch, tmp_path):
    monkeypatch.delenv("ASR_ATTENTION_COMMIT", raising=False)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert code_version()["commit"] == head.strip() and code_version()["source"] == "git"
    monkeypatch.setenv("ASR_ATTENTION_COMMIT", "abc123")  # named: wins over a checkout whose HEAD may be stale
    assert code_version() == {"commit": "abc123", "dirty": None, "source": "ASR_ATTENTION_COMMIT"}
    monkeypatch.setattr(code_version_module, "REPO", tmp_path)  # a copy without .git (a GPU machine's tree)
    assert code_version() == {"commit": "abc123", "dirty": None, "source": "ASR_ATTENTION_COMMIT"}
    monkeypatch.delenv("ASR_ATTENTION_COMMIT")
    assert code_version()["commit"] is None and str(tmp_path) in code_version()["source"]


TINY_WHISPER = ["trainer=cpu", "seed=0", "study/variant=mha,mla_d4_act", "data.limit_train=2", "data.limit_val=1",
                "data.limit_test=2", "data.num_workers=0", "model.batch_size=2", "trainer.max_steps=1",
                "trainer.val_check_interval=1", "trainer.log_every_n_steps=1", "optim.warmup_steps=0",
                "model.decoding.max_tokens=6", "model.decoding.temperatures=[0.0]", "data.limit_ood=2"]


def test_the_whisper_study_preset_end_to_end_on_cpu(tmp_path):
    """experiment=quality_whisper_small, cut to 2 points (the control and MLA d/4) with tiny limits: one -m
    command, then the study report, whose numbers must be the ones in the runs' results.json."""
    import os
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "asr_attention.train", "-m", "experiment=quality_whisper_small",
                           *TINY_WHISPER, f"hydra.sweep.dir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = job_results(tmp_path)
    control, mla = results["0"], results["1"]
    assert control["config"]["attention"]["name"] == "mha" and mla["config"]["attention"]["latent_dim"] == 96
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    for res in (control, mla):
        assert res["status"] == "completed", res.get("error")
        assert res["code"]["commit"] == head.strip()
        assert [p["step"] for p in res["val_curve"]] == [0, 1] and res["global_step"] == 1
        assert res["decoding"]["max_tokens"] == 6  # model.decoding.max_tokens=6: below the model's limit, recorded
    # all runs of the study in one W&B group, whichever sweep ran them; named by sites, variant, recipe and seed
    groups = set()
    for job, name in (("0", "whisper-decoder-mha-attention_only-lr3e-05-seed0"),
                      ("1", "whisper-decoder-mla_d4_act-attention_only-lr3e-05-seed0")):
        (run_dir,) = offline_runs(tmp_path / job)
        run = read_offline_run(run_dir)["run"]
        assert run["name"] == name
        groups.add(run["group"])
    assert groups == {"quality-whisper"}

    paths = write_report(tmp_path)
    with paths["csv"].open() as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    row = rows["1"]
    assert row["control_job"] == "0" and row["sites"] == "decoder_self+cross" and row["variant"] == "mla r=96 act"
    for phase, key in (("zero_shot", "before"), ("after", "after")):
        assert float(row[f"cost_{phase}"]) == mla[key]["test_wer"] - control[key]["test_wer"]
        assert float(rows["0"][f"cost_{phase}"]) == 0.0
    # MLA keeps r = 96 fp32 values per token (self) and per encoder frame (cross, 50 a second) in each of 4 layers
    assert float(row["cache_per_token"]) == mla["cache_per_site"]["decoder_self_per_token"] == 4 * 96 * 4
    assert float(row["cache_per_second"]) == mla["cache_per_site"]["cross_per_second"] == 4 * 96 * 4 * 50
    md = paths["md"].read_text()
    cost = 100 * (mla["after"]["test_wer"] - control["after"]["test_wer"])
    assert (f"| seq2seq | decoder_self+cross | mla r=96 act | lr 3e-05, attention only; encoder frozen | 0 |  | "
            f"{100 * mla['after']['test_wer']:.2f} | ") in md
    assert f"| {cost:+.2f} | 76,800 | 87.5 | 1,536 | 87.5 |  | 87.5 | 1 |" in md
    assert f"- {head.strip()}" in md
    (agg,) = [a for a in aggregate(collect(tmp_path)) if a["variant"] == "mla r=96 act"]
    curve = recovery_curves([agg])[("seq2seq", "decoder_self+cross")]["mla r=96 act"]
    assert curve == [(p["step"], p["val_wer"]) for p in mla["val_curve"]]
    for name in ("pareto_whisper", "recovery_whisper"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the report on SYNTHETIC results.json files --------------------------------------------------------------------

def synthetic_run(sweep: Path, job: str, attention: dict, seed: int, *, after=None, before=None, lr=3e-4,
                  model="A", status="completed", cache_mib=None, commit="c0ffee", workers=0, val=None,
                  data_seed=None) -> None:
    """A results.json shaped like asr_attention.train's, with SYNTHETIC numbers (an encoder model: CTC)."""
    res = {"status": status, "code": {"commit": commit, "dirty": False},
           "config": {"model": {"name": model, "family": "hf_wav2vec2", "d_model": 8, "num_heads": 2,
                                "num_layers": 2, "frame_ms": 20, "position": "none"},
                      "attention": attention, "seed": seed, "optim": {"lr": lr}, "run_name": f"{job}-name",
                      "data": {"num_workers": workers, **({} if data_seed is None else {"seed": data_seed})},
                      "logger": {"wandb": {"name": job}}}}
    if status == "completed":
        res.update(before={"test_wer": before}, after={"test_wer": after}, global_step=10,
                   val_curve=[{"step": 0, "val_wer": before}, {"step": 10, "val_wer": after if val is None else val}])
        if attention["name"] != "native":
            res["conversion"] = {"cache_mib_per_1000_frames": cache_mib}
    else:
        res["error"] = "RuntimeError: boom"
    (sweep / job).mkdir(parents=True)
    (sweep / job / "results.json").write_text(json.dumps(res))


@pytest.fixture
def study(tmp_path):
    s = tmp_path / "study"
    mha, mla = {"name": "mha"}, {"name": "mla", "latent_dim": 4, "calibration": "plain"}
    synthetic_run(s, "0", mha, 0, before=0.10, after=0.08, cache_mib=1.0)
    synthetic_run(s, "1", mla, 0, before=0.40, after=0.11, cache_mib=0.25)
    synthetic_run(s, "2", mha, 1, before=0.10, after=0.06, cache_mib=1.0)
    synthetic_run(s, "3", mla, 1, before=0.50, after=0.075, cache_mib=0.25, workers=3)  # loader workers: cosmetic
    synthetic_run(s, "4", mla, 0, before=0.30, after=0.12, cache_mib=0.25, lr=1e-4)  # another recipe: no control
    synthetic_run(s, "5", mla, 2, status="failed")
    # model B has no MHA run: attention=native is its control (cache from the config: K and V, 8 wide, 2 layers)
    synthetic_run(s, "6", {"name": "native"}, 0, before=0.20, after=0.20, model="B", commit="beef")
    synthetic_run(s, "7", {"name": "gqa", "num_kv_heads": 1}, 0, before=0.60, after=0.205, cache_mib=16000 / 2**20,
                  model="B", commit="beef")
    return s


def test_report_pairs_each_run_with_its_own_seed_and_recipe(study):
    rows = {r["job"]: r for r in collect(study)}
    assert [rows[j]["control_job"] for j in "0123467"] == ["0", "0", "2", "2", None, "6", "6"]
    assert rows["1"]["cost_after"] == 0.11 - 0.08 and rows["3"]["cost_after"] == 0.075 - 0.06
    assert rows["1"]["cost_zero_shot"] == 0.40 - 0.10 and rows["4"]["cost_after"] is None
    assert rows["5"]["status"] == "failed" and rows["5"]["cost_after"] is None
    # cache per second: MiB per 1000 frames of 20 ms = per 20 s; native's from the config
    assert rows["1"]["cache_per_second"] == 0.25 * 2**20 / 20
    assert rows["6"]["cache_per_second"] == pytest.approx(2 * 8 * 4 * 2 * 50)  # K+V x d x fp32 x layers x frames/s
    assert rows["7"]["cache_per_second"] == pytest.approx(16000 / 20)
    assert rows["7"]["cache_per_token"] is None  # CTC: no decoder; its window is 30 s of audio
    assert rows["7"]["cache_window"] == pytest.approx(30 * 16000 / 20)

    aggs = {(a["model"], a["variant"]): a for a in aggregate(collect(study))}
    a = aggs[("A", "mla r=4")]
    assert a["seeds"] == [0, 1]  # seed 2 failed; job 4 had no control
    assert a["cost_after"] == pytest.approx(statistics.fmean([0.11 - 0.08, 0.075 - 0.06]))
    assert a["cost_after_sd"] == pytest.approx(statistics.stdev([0.11 - 0.08, 0.075 - 0.06]))
    assert a["wer_after"] == pytest.approx(0.0925) and a["reduction_per_second"] == pytest.approx(75.0)
    assert aggs[("A", "mha")]["cost_after"] == 0.0 and aggs[("A", "mha")]["cost_after_sd"] == 0.0
    b = aggs[("B", "gqa kv=1")]
    assert b["cost_after_sd"] is None and b["cost_after"] == pytest.approx(0.005)  # one seed: no spread
    assert goal_met(b) and not goal_met(a)  # B: >= 75 % cut for +0.5 pt; A: +2.25 pts
    assert recovery_curves([a])[("ctc", "encoder")]["mla r=4"] == [(0, pytest.approx(0.45)), (10, pytest.approx(0.0925))]


def test_seeds_that_set_the_batch_order_still_pool_into_one_row(tmp_path):
    """data.seed follows the run's seed since 45c9d44: it must not split a variant's seeds into rows of one, and
    each run still pairs with the control of its own seed (and batch order). SYNTHETIC numbers."""
    s = tmp_path / "study"
    mha, mla = {"name": "mha"}, {"name": "mla", "latent_dim": 4, "calibration": "plain"}
    for seed, control, run in ((0, 0.08, 0.10), (1, 0.06, 0.07)):
        synthetic_run(s, f"{seed}/mha", mha, seed, before=0.1, after=control, cache_mib=1.0, data_seed=seed)
        synthetic_run(s, f"{seed}/mla", mla, seed, before=0.4, after=run, cache_mib=0.25, data_seed=seed)
    rows = {r["job"]: r for r in collect(s)}
    assert rows["0/mla"]["control_job"] == "0/mha" and rows["1/mla"]["control_job"] == "1/mha"
    a = {a["variant"]: a for a in aggregate(list(rows.values()))}["mla r=4"]
    assert a["seeds"] == [0, 1] and a["cost_after"] == pytest.approx(statistics.fmean([0.02, 0.01]))
    assert "Batch order" not in write_report(s)["md"].read_text()


def test_a_run_recording_data_seed_0_pairs_with_a_control_from_before_data_seed_existed(tmp_path):
    """A run from before conf/train.yaml set data.seed shuffled with the sampler's default, 0: a later seed-0 run
    (data.seed=0 recorded) of the same recipe is its variant's pair, a data-seed-1 run is not. SYNTHETIC numbers."""
    s = tmp_path / "study"
    mha, mla = {"name": "mha"}, {"name": "mla", "latent_dim": 4, "calibration": "plain"}
    synthetic_run(s, "old/mha", mha, 0, before=0.1, after=0.08, cache_mib=1.0)  # no data.seed
    synthetic_run(s, "new/mla", mla, 0, before=0.4, after=0.10, cache_mib=0.25, data_seed=0)
    synthetic_run(s, "new/mla_other_order", mla, 0, before=0.4, after=0.10, cache_mib=0.25, data_seed=1)
    rows = {r["job"]: r for r in collect(s)}
    assert rows["new/mla"]["control_job"] == "old/mha"
    assert rows["new/mla"]["cost_after"] == pytest.approx(0.02)
    assert rows["new/mla_other_order"]["control_job"] is None


def test_a_seed_rerun_with_its_own_batch_order_supersedes_the_shared_order_run(tmp_path):
    """Seed 1 ran with data seed 0 (the old sampler default), then again with data seed 1: the table pools the
    re-run and its own control, the CSV names it in the old run's superseded_by, and the recipe choice still
    compares like with like (the re-run has no counterpart in the other recipe). SYNTHETIC numbers."""
    s = tmp_path / "study"
    mha, mla = {"name": "mha"}, {"name": "mla", "latent_dim": 4, "calibration": "plain"}
    runs = [("lo", 1e-4, 0, 0, 0.08, 0.10), ("lo", 1e-4, 1, 0, 0.06, 0.30), ("lo", 1e-4, 1, 1, 0.07, 0.09),
            ("hi", 3e-4, 0, 0, 0.09, 0.12), ("hi", 3e-4, 1, 0, 0.09, 0.12)]
    for recipe, lr, seed, data_seed, control, run in runs:
        job = f"{recipe}/{seed}{'/own' if data_seed == seed != 0 else ''}"
        synthetic_run(s, f"{job}/mha", mha, seed, before=0.1, after=control, cache_mib=1.0, lr=lr,
                      data_seed=data_seed)
        synthetic_run(s, f"{job}/mla", mla, seed, before=0.4, after=run, cache_mib=0.25, lr=lr, data_seed=data_seed)
    rows = {r["job"]: r for r in collect(s)}
    assert rows["lo/1/mla"]["superseded_by"] == "lo/1/own/mla"
    assert rows["lo/1/mha"]["superseded_by"] == "lo/1/own/mha"
    assert rows["lo/1/own/mla"]["control_job"] == "lo/1/own/mha"  # pairs within its own batch order
    assert rows["hi/1/mla"]["superseded_by"] is None  # no re-run: stays, marked by the table's batch order column
    aggs = {(a["recipe"], a["variant"]): a for a in aggregate(list(rows.values()))}
    lo = aggs[("lr 0.0001, all from step 0", "mla r=4")]
    assert lo["seeds"] == [0, 1] and lo["batch_order"] == "per seed"
    assert lo["cost_after"] == pytest.approx(statistics.fmean([0.02, 0.02]))  # not the superseded run's +0.24
    assert aggs[("lr 0.0003, all from step 0", "mla r=4")]["batch_order"] == "data seed 0 for all"
    (choice,) = recipe_choice.compare(list(rows.values())).values()
    assert choice["seeds"] == [0, 1] and choice["chosen"] == "lr 0.0003, all from step 0"  # on the shared order
    md = write_report(s)["md"].read_text()
    assert "**Batch order.** 4 of 10 runs shuffled" in md and "2 of them were re-run with their own batch order" in md


def test_the_goal_line_names_what_meets_it_on_the_mean_and_on_every_seed(tmp_path):
    """mla r=4 costs +0.5 and +1.2 points (mean +0.85: met on the mean, not on seed 1); gqa kv=1 +0.3 and +0.4 on
    both seeds. SYNTHETIC numbers."""
    s = tmp_path / "study"
    mha, mla = {"name": "mha"}, {"name": "mla", "latent_dim": 4, "calibration": "plain"}
    gqa = {"name": "gqa", "num_kv_heads": 1}
    for seed, mla_cost, gqa_cost in ((0, 0.005, 0.003), (1, 0.012, 0.004)):
        synthetic_run(s, f"{seed}/mha", mha, seed, before=0.1, after=0.1, cache_mib=1.0, data_seed=seed)
        synthetic_run(s, f"{seed}/mla", mla, seed, before=0.4, after=0.1 + mla_cost, cache_mib=0.25, data_seed=seed)
        synthetic_run(s, f"{seed}/gqa", gqa, seed, before=0.4, after=0.1 + gqa_cost, cache_mib=0.25, data_seed=seed)
    md = write_report(s)["md"].read_text()
    assert ("after fine-tuning: ctc:encoder gqa kv=1, ctc:encoder mla r=4. On every one of their seeds: "
            "ctc:encoder gqa kv=1\n") in md


def test_report_files_from_synthetic_study(study):
    paths = write_report(study)
    md = paths["md"].read_text()
    assert "8 runs: 7 completed, 1 failed. Completed without a completed control (no cost): 4." in md
    # jobs 2 and 3 ran seed 1 with no data.seed: their batches were shuffled with seed 0 (the old behaviour)
    assert "**Batch order.** 2 of 8 runs shuffled their training batches with data seed 0 whatever" in md
    assert ("| ctc | encoder | mla r=4 | lr 0.0003, all from step 0 (chosen on val) | 0,1 | data seed 0 for all "
            "| 9.25 | 7.00 "
            "| +35.00 ± 7.07 | +2.25 ± 1.06 | 13,107 | 75.0 |") in md
    assert "| ctc | encoder | gqa kv=1 | lr 0.0003, all from step 0 | 0 |  | 20.50 | 20.00 | +40.00 | +0.50 |" in md
    # model A ran two recipes (job 4 at lr 1e-4): compared on val over the cell both ran, mla r=4 seed 0 (lr 3e-4's
    # seed 1, 7.5 %, would have lowered its mean: extra seeds do not count)
    assert "### A ctc: encoder (seeds 0; chosen head to head)" in md
    assert "| lr 0.0003, all from step 0 (chosen) | 11.00 | 11.00 |" in md
    assert "| lr 0.0001, all from step 0 | 12.00 |" in md
    assert "≥ 75 % of the decode cache removed for ≤ +1.0 WER point after fine-tuning: ctc:encoder gqa kv=1" in md
    assert "- 5 (A encoder mla r=4 seed 2): failed: RuntimeError: boom" in md
    assert "- c0ffee: 6 runs (0, 1, 2, 3, 4, 5)" in md and "- beef: 2 runs (6, 7)" in md
    for png in ("pareto_A", "recovery_A", "pareto_B", "recovery_B"):
        assert paths[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_report_logs_its_table_and_plots_to_an_offline_wandb_run(study):
    from asr_attention.reports.study import main

    assert main([str(study), "--wandb"]) == 0
    (run_dir,) = offline_runs(study)
    run = read_offline_run(run_dir)
    assert run["run"]["job_type"] == "report"
    assert run["summary"]["study/table"]["_type"] == "table-file" and run["summary"]["study/table"]["nrows"] == 8
    for plot in ("pareto_A", "recovery_A", "pareto_B", "recovery_B"):
        assert run["summary"][f"study/{plot}"]["_type"] == "image-file"


def test_each_recipe_also_faces_the_chosen_one_on_every_cell_the_two_share(tmp_path):
    """Recipes at lr 1e-4 and 3e-4 ran mha and mla on seeds 0 and 1; lr 3e-5 only mha on seed 0. lr 1e-4 is chosen
    (it beats both head to head, and is best on the one cell all three ran); 'versus' compares lr 3e-4 with it on
    all 4 shared cells and lr 3e-5 on its 1. SYNTHETIC numbers."""
    s = tmp_path / "study"
    mha, mla = {"name": "mha"}, {"name": "mla", "latent_dim": 2, "calibration": "plain"}
    vals = {1e-4: (0.04, 0.05, 0.06, 0.07), 3e-4: (0.05, 0.09, 0.07, 0.09), 3e-5: (0.08,)}
    for lr, runs in vals.items():
        for (seed, name, attention), val in zip(((0, "mha", mha), (0, "mla", mla), (1, "mha", mha), (1, "mla", mla)),
                                                runs):
            synthetic_run(s, f"{lr}/{seed}/{name}", attention, seed, before=0.4, after=val, val=val, lr=lr,
                          cache_mib=1.0, data_seed=seed)
    (choice,) = recipe_choice.compare(collect(s)).values()
    assert choice["common"] == ["mha"] and choice["chosen"] == "lr 0.0001, all from step 0"
    assert choice["versus"] == {
        "lr 0.0003, all from step 0": {"cells": 4, "mean": pytest.approx(0.075), "chosen_mean": pytest.approx(0.055)},
        "lr 3e-05, all from step 0": {"cells": 1, "mean": pytest.approx(0.08), "chosen_mean": pytest.approx(0.04)}}
    md = "\n".join(recipe_choice.markdown(recipe_choice.compare(collect(s))))
    assert "| lr 0.0003, all from step 0 | 4 | 7.50 | 5.50 |" in md


def recipe_rows(vals: dict[str, dict[int, float]]) -> list[dict]:
    """Report rows of one group: {recipe: {cell number (the seed; variant mha): best val WER}}. SYNTHETIC."""
    return [{"status": "completed", "model": "m", "head": "seq2seq", "sites": "decoder", "recipe": recipe,
             "variant": "mha", "seed": cell, "data_seed": cell, "val_curve": [{"step": 200, "val_wer": wer}]}
            for recipe, cells in vals.items() for cell, wer in cells.items()]


def test_the_recipe_that_wins_every_head_to_head_is_chosen_over_the_common_cells_best():
    """A is best on the one cell all three ran, but B beats A on the 4 cells those two share and C on their 1."""
    vals = {"A": {0: 0.04, 1: 0.09, 2: 0.07, 3: 0.09}, "B": {0: 0.05, 1: 0.05, 2: 0.06, 3: 0.07}, "C": {0: 0.08}}
    (choice,) = recipe_choice.compare(recipe_rows(vals)).values()
    assert choice["mean"] == {"A": 0.04, "B": 0.05, "C": 0.08}  # the common cell alone would pick A
    assert choice["chosen"] == "B" and choice["rule"] == "head to head"
    assert choice["versus"]["A"] == {"cells": 4, "mean": pytest.approx(0.0725), "chosen_mean": pytest.approx(0.0575)}
    assert "(seeds 0; chosen head to head)" in "\n".join(recipe_choice.markdown({("m", "s", "d"): choice}))


def test_a_cycle_of_head_to_heads_falls_back_to_the_common_cells_best():
    """A beats B on cells {0, 1}, B beats C on {0, 2}, C beats A on {0, 3}: no recipe beats both others, so the
    common cell 0 decides (A)."""
    vals = {"A": {0: 0.04, 1: 0.01, 3: 0.09}, "B": {0: 0.05, 1: 0.09, 2: 0.01}, "C": {0: 0.06, 2: 0.09, 3: 0.01}}
    (choice,) = recipe_choice.compare(recipe_rows(vals)).values()
    assert recipe_choice.head_to_head_winner({r: {(c,): v for c, v in cells.items()} for r, cells in vals.items()}) \
        is None
    assert choice["chosen"] == "A" and choice["rule"] == "common cells"


def test_without_a_common_cell_the_head_to_head_winner_is_chosen_and_else_none():
    """No cell was run by all three recipes: A beats B on cell 1 and C on cell 3, so A is chosen. With D and E
    sharing no cell at all nothing can be compared, and no recipe of the group counts as chosen."""
    vals = {"A": {1: 0.04, 3: 0.05}, "B": {1: 0.06, 2: 0.01}, "C": {2: 0.02, 3: 0.07}}
    (choice,) = recipe_choice.compare(recipe_rows(vals)).values()
    assert choice["common"] == [] and choice["chosen"] == "A" and choice["rule"] == "head to head"
    assert choice["versus"]["C"] == {"cells": 1, "mean": pytest.approx(0.07), "chosen_mean": pytest.approx(0.05)}
    assert "(seeds none common; chosen head to head)" in "\n".join(recipe_choice.markdown({("m", "s", "d"): choice}))
    rows = recipe_rows({"D": {1: 0.04}, "E": {2: 0.05}})
    (none,) = recipe_choice.compare(rows).values()
    assert none["chosen"] is None and none["rule"] == "none" and none["versus"] == {}
    assert "No recipe chosen" in "\n".join(recipe_choice.markdown({("m", "s", "d"): none}))
    base = {"status": "completed", "cost_after": 0.0, "superseded_by": None, "attention": "mha", "cache_per_second": 1,
            "cache_per_token": 1, "cache_fixed": 0, "cache_window": 1, "control_cache_per_second": 1,
            "control_cache_per_token": 1, "control_cache_window": 1, "wer_after": 0.1, "control_wer_after": 0.1,
            "cost_zero_shot": 0.0}
    aggs = aggregate([{**base, **r, "group_key": r["recipe"]} for r in rows], {("m", "seq2seq", "decoder"): none})
    assert [a["chosen"] for a in aggs] == [False, False]


def test_recipe_is_chosen_on_val_and_the_goal_reads_only_that_recipe(tmp_path):
    """Recipe lr 3e-4 is better on TEST (its MLA costs -0.5 pts) but worse on VAL; lr 1e-4 must be chosen, and
    the goal check must name only its runs. SYNTHETIC numbers."""
    s = tmp_path / "study"
    mha, mla = {"name": "mha"}, {"name": "mla", "latent_dim": 2, "calibration": "plain"}
    synthetic_run(s, "hi/0", mha, 0, before=0.1, after=0.050, val=0.06, cache_mib=1.0, lr=3e-4)
    synthetic_run(s, "hi/1", mla, 0, before=0.4, after=0.045, val=0.09, cache_mib=0.125, lr=3e-4)
    synthetic_run(s, "lo/0", mha, 0, before=0.1, after=0.040, val=0.04, cache_mib=1.0, lr=1e-4)
    synthetic_run(s, "lo/1", mla, 0, before=0.4, after=0.048, val=0.05, cache_mib=0.125, lr=1e-4)
    (choice,) = recipe_choice.compare(collect(s)).values()
    assert choice["common"] == ["mha", "mla r=2"] and choice["chosen"] == "lr 0.0001, all from step 0"
    assert choice["seeds"] == [0]
    assert choice["mean"] == {"lr 0.0003, all from step 0": pytest.approx(0.075),
                              "lr 0.0001, all from step 0": pytest.approx(0.045)}
    md = write_report(s)["md"].read_text()
    assert "| ctc | encoder | mla r=2 | lr 0.0001, all from step 0 (chosen on val) | 0 |  | 4.80 |" in md
    assert "| ctc | encoder | mla r=2 | lr 0.0003, all from step 0 | 0 |  | 4.50 |" in md
    assert "after fine-tuning (the recipe chosen on val): ctc:encoder mla r=2" in md  # +0.8 pts at lr 1e-4
    assert "| lr 0.0001, all from step 0 (chosen) | 4.00 | 5.00 | 4.50 |" in md
    assert "Batch order" not in md  # seed 0 runs: their batch order was their seed's


def test_sites_label_reads_sites_as_the_model_does():
    """null sites: Whisper's decoder sites, but the encoder for a CTC head (which has no decoder)."""
    assert sites_label({"sites": None}, {"family": "whisper", "head": "seq2seq"}) == "decoder_self+cross"
    assert sites_label({"sites": None}, {"family": "whisper", "head": "ctc"}) == "encoder"
    assert sites_label({"sites": "all"}, {"family": "whisper", "head": "ctc"}) == "all"
    assert sites_label({"sites": None}, {"family": "hf_wav2vec2"}) == "encoder"


def test_linear_attention_state_counts_as_fixed_bytes_not_a_rate():
    """A linear variant's cache_per_site figures are its fixed states (whisper.cache_per_site): they must enter the
    window once, not as bytes per second or per token. SYNTHETIC results."""
    def results(name, sites, self_, cross):
        return {"config": {"model": {"family": "whisper", "head": "seq2seq"},
                           "attention": {"name": name, "sites": sites}},
                "cache_per_site": {"decoder_self_per_token": self_, "cross_per_second": cross}}

    assert decode_cache(results("mha", ["decoder_self", "cross"], 100, 5000)) == (5000, 100, 0)
    assert decode_cache(results("linear", ["decoder_self", "cross"], 700, 700)) == (None, None, 1400)
    assert decode_cache(results("linear", ["decoder_self"], 700, 5000)) == (5000, None, 700)  # cross stays MHA
    # sites as Whisper reads them: null is its decoder's two sites, 'all' includes them
    assert decode_cache(results("linear", None, 700, 700)) == (None, None, 1400)
    assert decode_cache(results("linear", "all", 700, 700)) == (None, None, 1400)
    assert decode_cache(results("linear", ["encoder"], 100, 5000)) == (5000, 100, 0)  # the decoder stays MHA
    assert window_cache(5000, 100, 0) == 30 * 5000 + 448 * 100
    assert window_cache(None, None, 1400) == 1400 and window_cache(None, None, 0) is None
    ctc = {"config": {"model": {"head": "ctc", "frame_ms": 20}, "attention": {"name": "linear"}},
           "conversion": {"cache_mib_per_1000_frames": 0.5}}
    assert decode_cache(ctc) == (None, None, 0.5 * 2**20)


def test_recipe_label_names_what_trains():
    def label(lr=1e-4, first=None, steps=1000, frozen=None, head_lr=None):
        model = {} if frozen is None else {"freeze_encoder": frozen}
        return recipe_choice.recipe_label({"optim": {"lr": lr, "attention_only_steps": first, "head_lr": head_lr},
                                           "trainer": {"max_steps": steps}, "model": model})

    assert label(first=10**9) == "lr 0.0001, attention only"
    assert label(first=500, frozen=True) == "lr 0.0001, attention 500 steps, then all; encoder frozen"
    assert label(first=0, frozen=False) == "lr 0.0001, all from step 0; encoder trained"
    assert label(lr=3e-4) == "lr 0.0003, all from step 0"
    assert (label(lr=3e-5, head_lr=1e-3, first=0, frozen=False)
            == "lr 3e-05, head lr 0.001, all from step 0; encoder trained")
    # SpecAugment (Whisper's model.arch) is part of the recipe; a field left out has WhisperConfig's default
    arch = {"apply_spec_augment": True, "mask_feature_prob": 0.1}
    model = {"freeze_encoder": False, "arch": arch}
    assert (recipe_choice.recipe_label({"optim": {"lr": 1e-4, "attention_only_steps": 0}, "model": model})
            == "lr 0.0001, all from step 0; encoder trained; SpecAugment time 0.05 x 10, mel 0.1 x 10")
    assert recipe_choice.spec_augment({"mask_time_prob": 0.05}) == {}  # not applied: no label
    assert recipe_tag(0, 2000, 1e-4, 1e-3, arch) == "all-lr0.0001-head_lr0.001-specaug_time0.05x10_mel0.1x10"
    # run names (W&B, outputs/<run_name>) say the same: the CTC recipe trains everything, with its own head lr
    assert recipe_tag(10**9, 1000, 3e-5) == "attention_only-lr3e-05"
    assert recipe_tag(500, 1000, 1e-4) == "attention500_then_all-lr0.0001"
    assert recipe_tag(0, 2000, 1e-4, 1e-3) == "all-lr0.0001-head_lr0.001"
    # step 0 (the converted model, before any step) is not a checkpoint: it never counts as the best
    assert recipe_choice.best_val_wer([{"step": 0, "val_wer": 0.01}, {"step": 200, "val_wer": 0.3},
                                       {"step": 400, "val_wer": 0.2}]) == 0.2
    assert recipe_choice.best_val_wer([{"step": 0, "val_wer": 0.01}]) is None
