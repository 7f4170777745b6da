"""Run folders with real processes on the shipped AN4 demo checkpoint (CPU; 24 utterances, 6 batches an epoch,
4 epochs, last.ckpt every 2 steps): a second process on a live run is refused; kill -9 mid-epoch 3 resumes at the
last saved step and ends with exactly the uninterrupted run's numbers and weights; a finished run is left
byte-identical by another config, by a rejected config and by the same command (which prints its summary), and
retrain=true trains it again."""

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import train_process
from train_process import finish, wait_for

BATCHES_PER_EPOCH = 6
RUN = ["experiment=demo", "model=branchformer", "attention=gqa", "model.batch_size=4",
       f"data.limit_train={4 * BATCHES_PER_EPOCH}", "data.limit_val=16", "data.limit_test=8", "data.num_workers=0",
       "trainer.max_epochs=4", "checkpoint_every_n_steps=2", "logger=none"]


def start(run_dir: Path, *overrides: str):
    return train_process.start(run_dir, [*RUN, *overrides])


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below `folder`: its sha256 and mtime."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_identity_leaves_out_only_the_cosmetic_keys(compose_cfg):
    from asr_attention.training.experiment import config_summary
    from asr_attention.runs.identity import differences, fingerprint

    def config(*overrides):
        return config_summary(compose_cfg("train", [*RUN, *overrides]))

    base = config()
    cosmetic = config("run_name=x", "export_dir=/tmp/x", "retrain=true", "checkpoint_every_n_steps=7",
                      "data.num_workers=5", "trainer.log_every_n_steps=3")
    cosmetic["logger"] = {"wandb": {"project": "elsewhere"}}
    assert fingerprint(cosmetic) == fingerprint(base) and differences(base, cosmetic) == []
    changed = config("optim.lr=1e-3", "trainer.max_epochs=5", "+model.arch.dropout=0.0")
    assert fingerprint(changed) != fingerprint(base)
    assert differences(base, changed) == ["model.arch.dropout: (absent) -> 0.0", "optim.lr: 0.0005 -> 0.001",
                                          "trainer.max_epochs: 4 -> 5"]
    # the shipped checkpoint from a checkout elsewhere is the same run; another checkpoint is not
    assert base["model"]["source"].endswith("/asr_attention/pretrained/branchformer_an4")
    moved = {**base, "model": {**base["model"], "source": "/elsewhere/asr_attention/pretrained/branchformer_an4"}}
    assert fingerprint(moved) == fingerprint(base) and differences(base, moved) == []
    other = {**base, "model": {**base["model"], "source": "/elsewhere/asr_attention/pretrained/conformer_an4"}}
    assert differences(base, other) == ["model.source: ${pkg}/pretrained/branchformer_an4 -> "
                                        "${pkg}/pretrained/conformer_an4"]


def test_keys_added_at_their_old_behaviour_keep_an_older_runs_identity(compose_cfg, tmp_path):
    """A run made before optim.kl_weight & co. and calibration.split & co. existed (its stored config lacks them) is
    the same run as today's config at their defaults: same fingerprint, resumed, not refused; another value is
    another run, named."""
    from asr_attention.training.experiment import config_summary
    from asr_attention.runs.identity import ADDED_DEFAULTS, RunFolderTaken, differences, fingerprint, stored_run

    today = config_summary(compose_cfg("train", RUN))
    older = json.loads(json.dumps(today))
    with_mla = config_summary(compose_cfg("train", [*RUN, "attention=mla"]))  # attention.* keys: MLA's options
    for dotted in ADDED_DEFAULTS:
        group, key = dotted.split(".")
        assert (today if key in today[group] else with_mla)[group][key] == ADDED_DEFAULTS[dotted]  # conf's default
        older[group].pop(key, None)
    assert fingerprint(older) == fingerprint(today) and differences(older, today) == []
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "config": older}))
    assert stored_run(tmp_path, today, "run")["status"] == "completed"
    other = config_summary(compose_cfg("train", [*RUN, "calibration.split=train"]))
    assert differences(older, other) == ["calibration.split: (absent) -> train"]
    with pytest.raises(RunFolderTaken, match="It differs in: calibration.split: \\(absent\\) -> train"):
        stored_run(tmp_path, other, "run")
    # and what such an older config runs with (calibration, the checks) is the defaults: read where they live
    from asr_attention.runs.identity import setting
    from asr_attention.training.experiment import calibration_args
    assert {key: setting(older, f"calibration.{key}") for key in ("split", "text", "utterances")} == \
        {key: calibration_args(compose_cfg("train", RUN))[key] for key in ("split", "text", "utterances")}
    assert setting(other, "calibration.split") == "train"


def test_the_seed_is_part_of_a_runs_identity(compose_cfg, tmp_path):
    """Were seed cosmetic, `seed=1` in seed 0's folder would print seed 0's results as its own."""
    from asr_attention.training.experiment import config_summary
    from asr_attention.runs.identity import RunFolderTaken, differences, fingerprint, stored_run

    seed0, seed1 = (config_summary(compose_cfg("train", [*RUN, f"seed={s}"])) for s in (0, 1))
    assert fingerprint(seed0) != fingerprint(seed1)
    assert differences(seed0, seed1) == ["data.seed: 0 -> 1", "seed: 0 -> 1"]  # data.seed follows ${seed}
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "config": seed0}))
    with pytest.raises(RunFolderTaken, match="It differs in: data.seed: 0 -> 1; seed: 0 -> 1. "):
        stored_run(tmp_path, seed1, "run")


def stored(folder: Path, config: dict, **fields) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (folder / "results.json").write_text(json.dumps({"config": config, **fields}))
    return folder


def test_a_failed_run_of_another_config_is_named_as_failed_and_retrain_replaces_it(compose_cfg, tmp_path):
    from asr_attention.training.experiment import config_summary
    from asr_attention.runs.identity import RunFolderTaken
    from asr_attention.train import completed_run

    old = config_summary(compose_cfg("train", RUN))
    error = "NonFiniteTraining: training stopped at global step 3: the training loss is nan."
    run_dir = stored(tmp_path / "failed", old, status="failed", error=error + "\nmore lines", traceback="...")
    new = compose_cfg("train", [*RUN, "optim.lr=1e-4"])
    with pytest.raises(RunFolderTaken) as err:
        completed_run(new, run_dir)
    assert str(err.value).startswith(
        f"{run_dir} holds a failed run of another config ({error}); nothing there was changed. It differs in: "
        f"optim.lr: 0.0005 -> 0.0001. Train this config there instead with retrain=true (removes the failed run's "
        f"checkpoints and results.json), or name a new run, e.g. run_name=")
    # retrain=true takes the folder (train.hold_and_run then removes the failed run); a completed run stays refused
    assert completed_run(compose_cfg("train", [*RUN, "optim.lr=1e-4", "retrain=true"]), run_dir) is None
    done = stored(tmp_path / "done", old, status="completed")
    with pytest.raises(RunFolderTaken, match=r"holds the run of another config \(completed\)"):
        completed_run(compose_cfg("train", [*RUN, "optim.lr=1e-4", "retrain=true"]), done)


def test_a_corrupt_results_json_refuses_the_folder_naming_the_file(compose_cfg, tmp_path):
    """It used to end in a JSONDecodeError traceback."""
    from asr_attention.runs.identity import RunFolderTaken
    from asr_attention.train import completed_run

    run_dir = stored(tmp_path, {}, status="running")
    (run_dir / "results.json").write_text('{"status": "runn')  # cut short
    with pytest.raises(RunFolderTaken) as err:
        completed_run(compose_cfg("train", RUN), run_dir)
    assert str(err.value) == (
        f"{run_dir / 'results.json'} is not valid JSON (line 1 column 12: Unterminated string starting at), so "
        f"nothing says which config's run {run_dir} holds; nothing was changed. Delete the folder to start over, or "
        f"name a new run (run_name=...).")


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    """Lightning loads checkpoints with torch.load(weights_only=True): the saved RNG states must load that way and
    put every generator back where it was."""
    import random

    import numpy as np

    from asr_attention.training.checkpointing import rng_states, set_rng_states

    torch.save({"rng": rng_states()}, tmp_path / "c.ckpt")
    draws = torch.rand(3), np.random.rand(3), random.random()
    set_rng_states(torch.load(tmp_path / "c.ckpt", weights_only=True)["rng"])
    again = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(draws[0], again[0]) and (draws[1] == again[1]).all() and draws[2] == again[2]


def test_each_rank_restores_its_own_rng_states_and_another_world_size_takes_rank_0s(caplog):
    from asr_attention.training.checkpointing import own_states

    per_rank = [{"rank": 0}, {"rank": 1}]
    assert own_states(per_rank, 1, 2) == {"rank": 1} and own_states(per_rank, 0, 2) == {"rank": 0}
    assert not caplog.records
    assert own_states(per_rank, 0, 4) == {"rank": 0}  # resumed on 4 ranks: a correct run, not the continuation
    assert "holds the RNG states of 2 rank(s), this run has 4" in caplog.text
    assert own_states({"rank": 0}, 1, 2) == {"rank": 0}  # a file from before the states were per rank


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run. While it holds its folder, it is stopped (SIGSTOP) and the same command is started
    in the same folder: that second process must be refused. Returns (run dir, the second process's output)."""
    run_dir = tmp_path_factory.mktemp("reference")
    first = start(run_dir)
    lock = run_dir / "run.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip(), first, "run.lock")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = finish(start(run_dir), rc=None)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    finish(first)
    return run_dir, second, first.pid


def test_a_second_process_on_a_live_run_is_refused_naming_the_holder(reference):
    run_dir, second, holder = reference
    assert f"is in use by pid {holder} on host" in second
    assert results(run_dir)["status"] == "completed"  # the holder, resumed after the refusal, finished unharmed


def test_kill_mid_epoch_3_resumes_at_the_last_saved_step_with_the_uninterrupted_numbers(reference, tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = start(tmp_path)
    saved = train_process.kill_mid_epoch(proc, tmp_path, epoch=2, steps_per_epoch=BATCHES_PER_EPOCH)
    step = saved["global_step"]
    assert saved["epoch"] == 2 and 2 * BATCHES_PER_EPOCH < step < 3 * BATCHES_PER_EPOCH
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 2, "batches": step - 2 * BATCHES_PER_EPOCH}]  # the sampler's place in epoch 3
    killed = results(tmp_path)
    assert killed["status"] == "running" and "before" in killed and "after" not in killed
    assert (tmp_path / "run.lock").exists()  # left behind by the killed process: stale

    out = finish(start(tmp_path))
    assert f"Restoring states from the checkpoint path at {last}" in out
    assert f"took over a stale lock left by pid {proc.pid}" in out
    resumed, uninterrupted = results(tmp_path), results(reference[0])
    assert resumed["status"] == "completed" and resumed["global_step"] == 4 * BATCHES_PER_EPOCH
    assert resumed["after"] == uninterrupted["after"]  # test WER, CER and loss, exactly
    assert resumed["before"] == killed["before"] == uninterrupted["before"]  # measured once, before the kill
    weights = [torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
               for d in (tmp_path, reference[0])]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # bit-identical weights
    assert not (tmp_path / "run.lock").exists()

    before = results(tmp_path)
    out = finish(start(tmp_path, "retrain=true"))  # the explicit flag trains the completed run again
    assert "retrain=true: removed" in out and f"Restoring states from the checkpoint path at {last}" not in out
    again = results(tmp_path)
    assert again["global_step"] == 4 * BATCHES_PER_EPOCH and again["after"] == uninterrupted["after"]
    assert again["wall_seconds"] != before["wall_seconds"]  # a new run, not the stored one


@pytest.mark.parametrize("overrides,refusal", [
    (["optim.lr=1e-3"], "optim.lr: 0.0005 -> 0.001"),  # another config: refused, naming the field
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 is not allowed"),  # rejected by validation
], ids=["other-config", "rejected-config"])
def test_a_finished_run_is_untouched_by_another_or_a_rejected_config(reference, overrides, refusal):
    run_dir = reference[0]
    before = snapshot(run_dir)
    out = finish(start(run_dir, *overrides), rc=None)
    assert refusal in out
    assert "Traceback" not in out  # a user error: its one-line message, not a traceback through train.py
    if overrides == ["optim.lr=1e-3"]:
        assert "run_name=branchformer_demo-gqa-" in out  # how to name a new run
    assert snapshot(run_dir) == before  # results.json, checkpoints, .hydra/, train.log: byte for byte


def test_the_same_command_on_a_completed_run_prints_its_summary_and_trains_nothing(reference):
    run_dir = reference[0]
    before = snapshot(run_dir)
    out = finish(start(run_dir))
    wer = results(run_dir)["after"]["test_wer"]
    assert f"-> {100 * wer:.1f} %" in out and "nothing was trained (retrain=true trains it again)" in out
    assert "Restoring states" not in out and "Epoch" not in out
    assert snapshot(run_dir) == before


def test_results_json_holds_the_fingerprint_and_what_setup_counted(reference):
    from asr_attention.runs.identity import fingerprint

    stored = results(reference[0])
    assert stored["fingerprint"] == fingerprint(stored["config"])
    none = {"train": [], "val": [], "test": []}
    assert stored["transcripts"] == {"empty": none, "changed_by_oov_drop": none}  # AN4 fits the demo's vocabulary
    assert stored["duration_mismatches"] == []


def test_the_out_of_domain_test_keys_leave_a_runs_identity_alone():
    """A Whisper run made before model.ood_test / data.limit_ood existed is the same run as today's default (the
    out-of-domain phases add results, change none); another set or limit does not make another run either."""
    from asr_attention.runs.identity import fingerprint

    before = {"model": {"name": "whisper", "d_model": 384}, "data": {"corpus": "an4", "limit_test": None}, "seed": 0}
    today = {"model": {**before["model"], "ood_test": "speechocean762"}, "data": {**before["data"], "limit_ood": None},
             "seed": 0}
    limited = {**today, "data": {**today["data"], "limit_ood": 16}}
    assert fingerprint(before) == fingerprint(today) == fingerprint(limited)
    assert fingerprint({**today, "seed": 1}) != fingerprint(today)


def test_a_stored_config_with_hydra_values_resolves_from_the_runs_hydra_yaml(tmp_path):
    """Study runs name themselves from the sweep's choices (${hydra:runtime.choices...}): evaluate and transcribe
    read those from the run's .hydra/hydra.yaml, as Hydra held them; without that file the error names it."""
    import shutil

    from asr_attention.training.run_model import run_config

    committed = Path(__file__).resolve().parents[1] / "benchmarks/quality/retention/runs/whisper_retain_kl_mha_s1/0"
    cfg = run_config(committed)
    assert cfg.run_name == "whisper-retain_kl-decoder-mha-seed1"
    run = tmp_path / "run"
    shutil.copytree(committed / ".hydra", run / ".hydra")
    (run / ".hydra" / "hydra.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="hydra.yaml is missing"):
        run_config(run)
