"""Multirun sweeps end to end on the shipped AN4 demo checkpoint (CPU, one training batch per job): one results.json
and one offline W&B run per job holding the expected config and summary; a failing job is recorded and the sweep
goes on; the Optuna presets' search spaces; the submitit launcher presets, one job through submitit's local executor.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from asr_attention.runs.lock import RunLock
from asr_attention.runs.wandb_log import offline_runs, read_offline_run

REPO = Path(__file__).resolve().parents[1]
BRANCHFORMER = REPO / "asr_attention" / "pretrained" / "branchformer_an4"
TINY = ["experiment=demo", "model=branchformer", "data.limit_train=8", "data.limit_val=8", "data.limit_test=8",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "trainer.log_every_n_steps=1",
        "data.num_workers=0"]


def sweep(sweep_dir: Path, *overrides: str, timeout: int = 300, returncode: int = 0) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "asr_attention.train", "-m", *TINY, f"hydra.sweep.dir={sweep_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == returncode, out[-4000:]
    return out


def plugin(module: str):
    """The Hydra plugins come with the `sweeps` extra (pip install -e '.[sweeps]'); without it their tests skip."""
    try:
        __import__(module)
    except ImportError:
        return pytest.mark.skip(reason=f"{module} not installed: pip install -e '.[sweeps]'")
    return lambda f: f


OPTUNA = plugin("hydra_plugins.hydra_optuna_sweeper")
SUBMITIT = plugin("hydra_plugins.hydra_submitit_launcher")


def job_results(sweep_dir: Path) -> dict[str, dict]:
    """{job number: results.json} of every job of a sweep."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))}


def job_overrides(sweep_dir: Path, job: str) -> list[str]:
    return list(OmegaConf.load(sweep_dir / job / ".hydra" / "overrides.yaml"))


def test_offline_sweep_leaves_one_results_json_and_one_wandb_run_per_job(tmp_path):
    sweep(tmp_path, "attention=mha,gqa", "logger=wandb")
    results = job_results(tmp_path)
    assert sorted(results) == ["0", "1"]
    for job, res in results.items():
        attention = res["config"]["attention"]["name"]
        assert f"attention={attention}" in job_overrides(tmp_path, job)
        assert res["status"] == "completed", res.get("error")
        # the shipped checkpoint's word errors on these 8 utterances (38 words): 7 with its own attention or MHA,
        # 14 with GQA mean-pooled to 2 of 4 K/V heads (tests/test_train.py); a broken conversion makes ~38
        assert res["before"]["test_wer"] == pytest.approx({"mha": 7 / 38, "gqa": 14 / 38}[attention])
        assert res["after"]["test_wer"] < 0.5
        assert res["throughput"]["rtfx"] > 0
        conversion = res["conversion"]
        kv_values = {"mha": 2 * 144, "gqa": 2 * 72}[attention]  # per frame per layer: K and V, 4 or 2 heads of 36
        assert conversion["cache_mib_per_1000_frames"] == 4 * kv_values * 1000 * 4 / 2**20
        assert len(conversion["fidelity"]) == 4

        (run_dir,) = offline_runs(tmp_path / job)  # exactly one W&B run per job, inside the job's directory
        run = read_offline_run(run_dir)
        assert run["exit_code"] == 0
        assert run["run"]["name"] == f"branchformer_demo-{attention}"
        assert run["run"]["group"] == f"{tmp_path.parent.name}_{tmp_path.name}"  # the sweep: same for every job
        assert run["run"]["tags"] == ["branchformer_demo", attention]
        assert run["run"]["project"] == "asr-attention"
        # the resolved config
        assert run["config"]["attention"]["name"] == attention
        assert run["config"]["model"]["d_model"] == 144 and run["config"]["data"]["limit_train"] == 8
        # results.json's key fields in the summary
        s = run["summary"]
        assert s["status"] == "completed"
        assert s["before/test_wer"] == pytest.approx(res["before"]["test_wer"])
        assert s["after/test_wer"] == pytest.approx(res["after"]["test_wer"])
        assert s["after/test_cer"] == pytest.approx(res["after"]["test_cer"])
        assert s["cache/mib_per_1000_frames"] == pytest.approx(conversion["cache_mib_per_1000_frames"])
        assert s["cache/analytic_bytes"] == conversion["measured_cache_bytes"]["analytic"]
        assert s["cache/measured_bytes"] == conversion["measured_cache_bytes"]["measured"] > 0
        assert s["throughput/rtfx"] == pytest.approx(res["throughput"]["rtfx"])
        assert s["parameters"] == res["parameters"]
        assert s["fidelity/max_relative_error"] == pytest.approx(max(r["relative_error"] for r in conversion["fidelity"]))
        assert s["fidelity"]["_type"] == "table-file" and s["fidelity"]["nrows"] == 4
        if attention == "mha":  # the original weights, re-expressed: exact
            assert s["fidelity/max_relative_error"] < 1e-5
        # Lightning's per-step and per-epoch metrics
        history = {k for row in run["history"] for k in row}
        assert {"train_loss", "val_wer", "val_cer", "test_wer", "test_cer", "before_test_wer"} <= history
    # each job's run was finished before the next started: two distinct run ids, both exited
    ids = {read_offline_run(r)["run"]["id"] for r in offline_runs(tmp_path)}
    assert len(ids) == 2


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    # 4 jobs: (2 kv heads, good checkpoint) completes; a missing checkpoint fails inside run(); 3 kv heads (does
    # not divide 4 heads) fails validation -- inside the job, so it is recorded as well. Once all 4 have run, the
    # sweep exits 1 and names the 3 failed jobs.
    out = sweep(tmp_path, "attention=gqa", "attention.num_kv_heads=2,3",
                f"model.source={BRANCHFORMER},/nonexistent/ckpt", "logger=wandb", returncode=1)
    results = job_results(tmp_path)
    failed = sorted(job for job, r in results.items() if r["status"] == "failed")
    assert "3 sweep job(s) failed" in out and len(failed) == 3
    for job in failed:
        assert f"{tmp_path / job}  [{' '.join(job_overrides(tmp_path, job))}]  {results[job]['error']}" in out
    assert len(results) == 4
    by_point = {(r["config"]["attention"]["num_kv_heads"], r["config"]["model"]["source"]): r for r in results.values()}
    ok = by_point[(2, str(BRANCHFORMER))]
    assert ok["status"] == "completed" and "error" not in ok and ok["before"]["test_wer"] == pytest.approx(14 / 38)
    missing = by_point[(2, "/nonexistent/ckpt")]
    assert missing["status"] == "failed" and "/nonexistent/ckpt" in missing["error"] and missing["traceback"]
    for source in (str(BRANCHFORMER), "/nonexistent/ckpt"):
        bad = by_point[(3, source)]
        assert bad["status"] == "failed"
        assert bad["error"].startswith("ConfigError: attention.num_kv_heads=3 is not allowed")
    # failed jobs show in W&B too, with their status and error, and marked failed (exit code 1)
    for job, res in results.items():
        (run_dir,) = offline_runs(tmp_path / job)
        run = read_offline_run(run_dir)
        assert run["summary"]["status"] == res["status"]
        assert run["summary"].get("error") == res.get("error")
        assert run["exit_code"] == (0 if res["status"] == "completed" else 1)


def test_jobs_refused_their_folder_leave_it_alone_and_the_sweep_goes_on(tmp_path):
    """Job 0's folder is held by a live process (this test), job 1's holds another config's run: both are refused
    without touching their folders, job 2 still runs, and the sweep ends non-zero naming the two refused jobs."""
    foreign = tmp_path / "1" / "results.json"
    foreign.parent.mkdir(parents=True)
    foreign.write_text(json.dumps({"status": "completed", "config": {"seed": 123}}))
    with RunLock(tmp_path / "0"):
        out = sweep(tmp_path, "attention=gqa", "attention.num_kv_heads=1,2,4", returncode=1)
    assert "2 sweep job(s) failed or were refused their folder" in out
    assert f"{tmp_path / '0'}  [{' '.join(TINY)} attention=gqa attention.num_kv_heads=1]  RunLocked: " in out
    assert f"{tmp_path / '1'}  [{' '.join(TINY)} attention=gqa attention.num_kv_heads=2]  RunFolderTaken: " in out
    assert not (tmp_path / "0" / "results.json").exists()
    assert json.loads(foreign.read_text()) == {"status": "completed", "config": {"seed": 123}}
    assert job_results(tmp_path)["2"]["status"] == "completed"


@OPTUNA
def test_optuna_presets_search_the_attention_knobs_and_lr(compose_cfg):
    cfg = compose_cfg("train", ["hparams_search=mla_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "minimize"  # main returns the best validation WER (model selection, not test)
    assert cfg.attention.name == "mla"
    assert dict(sweeper.params) == {"attention.latent_dim": "range(16, 288, step=16)",
                                    "optim.lr": "tag(log, interval(1e-5, 1e-3))"}
    assert sweeper.max_failure_rate == 1.0  # a failed trial (recorded in its results.json) does not stop the search

    cfg = compose_cfg("train", ["hparams_search=gqa_optuna"], return_hydra_config=True)
    assert cfg.attention.name == "gqa"
    assert dict(cfg.hydra.sweeper.params) == {"attention.num_kv_heads": "choice(1, 2, 4)",
                                              "optim.lr": "tag(log, interval(1e-5, 1e-3))"}


@OPTUNA
def test_optuna_sweep_minimises_validation_wer_not_test_wer(tmp_path):
    """Two real trials of the GQA preset on the demo checkpoint. The objective Optuna records is each trial's best
    val_wer, as W&B logged it during fit; the test WER (a different split) is only reported."""
    sweep(tmp_path, "hparams_search=gqa_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
          "logger=wandb")
    results = job_results(tmp_path)
    assert len(results) == 2 and all(r["status"] == "completed" for r in results.values())
    val_wer = {job: min(row["val_wer"] for row in read_offline_run(offline_runs(tmp_path / job)[0])["history"]
                        if "val_wer" in row) for job in results}
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(val_wer.values()), abs=1e-6)
    test_wer = min(r["after"]["test_wer"] for r in results.values())
    assert abs(best.best_value - test_wer) > 1e-3  # the two splits score differently here: a test-WER objective fails
    assert set(best.best_params) == {"attention.num_kv_heads", "optim.lr"}


@SUBMITIT
def test_launcher_and_ddp_presets_compose(compose_cfg):
    cfg = compose_cfg("train", ["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert {"partition", "gpus_per_node", "timeout_min", "tasks_per_node"} <= set(launcher)
    assert launcher.tasks_per_node == launcher.gpus_per_node  # one task per GPU: Lightning DDP under SLURM
    cfg = compose_cfg("train", ["hydra/launcher=local"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher")
    cfg = compose_cfg("train", ["trainer=ddp"], return_hydra_config=True)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is False
    assert cfg.hydra.job.chdir is False and cfg.hydra.run.dir == f"outputs/{cfg.run_name}"  # fixed: no timestamp


# The quality study's Whisper run of issue 33 on a cluster: 2 nodes x 4 GPUs, one DDP job.
CLUSTER_DDP = ["hydra/launcher=slurm", "experiment=quality_whisper_1k", "study/variant=mla_d4_act", "trainer=ddp",
               "trainer.num_nodes=2", "trainer.devices=4"]


@SUBMITIT
def test_slurm_job_asks_for_the_nodes_gpus_and_tasks_the_ddp_trainer_runs(compose_cfg, tmp_path, monkeypatch):
    """Lightning under SLURM spawns no ranks: SLURM must start trainer.devices tasks (one per GPU) on each of
    trainer.num_nodes nodes, or Lightning stops on the mismatch once the job runs. The sbatch script submitit writes
    for the composed launcher asks for exactly that (launched with submitit's map_array stubbed: nothing is
    submitted, and a stand-in srun on PATH, which submitit looks for)."""
    from hydra.utils import instantiate
    from submitit import AutoExecutor
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = compose_cfg("train", [*CLUSTER_DDP, f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    assert (cfg.trainer.strategy, cfg.trainer.num_nodes, cfg.trainer.devices) == ("ddp", 2, 4)
    launcher_cfg = cfg.hydra.launcher
    assert (launcher_cfg.nodes, launcher_cfg.gpus_per_node, launcher_cfg.tasks_per_node) == (2, 4, 4)
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    executors = []

    def record_instead_of_submitting(executor, fn, *args):
        executors.append(executor)
        return []

    monkeypatch.setattr(AutoExecutor, "map_array", record_instead_of_submitting)
    launcher = instantiate(launcher_cfg)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    assert launcher.launch([["seed=0"]], initial_job_idx=0) == []
    sbatch = _make_sbatch_string(command="python -m asr_attention.train", folder=tmp_path,
                                 **executors[0]._executor.parameters)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4"):
        assert line in sbatch.splitlines(), sbatch


@SUBMITIT
def test_one_job_through_submitit_local_executor(tmp_path):
    out = sweep(tmp_path, "attention=gqa", "hydra/launcher=local", "logger=none", timeout=400)
    results = job_results(tmp_path)
    assert list(results) == ["0"], out[-2000:]
    assert results["0"]["status"] == "completed"
    assert (tmp_path / ".submitit").is_dir()  # it went through submitit, not the basic launcher
