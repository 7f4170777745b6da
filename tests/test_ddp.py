"""DDP end to end on CPU (gloo, 2 processes) on the shipped tiny Branchformer, the HF conformer and Whisper tiny.en's
seq2seq fine-tuning: the bucket sampler shards the training batches across ranks, so 2 ranks x batch B take the
same optimizer steps as one process.

Exact reference: one process, batch B, accumulate_grad_batches=2. Its step k consumes batches 2k and 2k+1 of
the seeded order, which are exactly rank 0's and rank 1's k-th batches under DDP (rank r takes r, r+2, ...), and
DDP averages the two ranks' gradients as accumulation averages the two micro-batches: same result up to float
summation order. Doubled batch (one process, batch 8): the same utterances per epoch but grouped differently
(and padded to the longest of 8), so only close.
Eval batches are pinned (+data.eval_batch_size=8) and val/test are not sharded, so evaluation is identical.
A DDP run killed mid-epoch resumes on every rank's own RNG states, to the uninterrupted run's weights bit for bit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import train_process
from omegaconf import OmegaConf
from train_process import finish

from asr_attention.reports import ddp as ddp_report
from asr_attention.runs.results import Results
from asr_attention.training import training_speed
from asr_attention.training.training_speed import TrainingSpeed

COMMON = ["experiment=demo", "data.limit_train=32", "data.limit_val=8", "data.limit_test=8", "data.num_workers=0",
          "+data.eval_batch_size=8", "trainer.max_epochs=1", "optim.warmup_steps=0", "logger=none"]
BRANCHFORMER = ["model=branchformer", "attention=gqa", "+model.arch.dropout=0.0"]
# The HF conformer with every random draw off (dropout, SpecAugment), so the two processes of DDP and the one of
# accumulation see the same numbers.
CONFORMER = ["model=conformer", "attention=mla", "attention.latent_dim=72", "model.arch.mask_time_prob=0.0",
             *(f"model.arch.{k}=0.0" for k in ("hidden_dropout", "activation_dropout", "attention_dropout",
                                                "feat_proj_dropout")), "+model.arch.final_dropout=0.0",
             "+model.arch.conformer_conv_dropout=0.0"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
NEEDS_GLOO = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is needed for CPU DDP")


def run(*runs: tuple[Path, list[str]]) -> list[str]:
    """Train each (run dir, overrides) in its own process, all at once, and return each one's output."""
    procs = [train_process.start(run_dir, [*COMMON, *overrides]) for run_dir, overrides in runs]
    return [finish(proc) for proc in procs]


@NEEDS_GLOO
def test_cpu_ddp_two_ranks_match_one_process(tmp_path):
    out, _, _ = run((tmp_path / "ddp", [*BRANCHFORMER, *DDP, "data.batch_size=4"]),
                    (tmp_path / "accum", [*BRANCHFORMER, "data.batch_size=4", "+trainer.accumulate_grad_batches=2"]),
                    (tmp_path / "double", [*BRANCHFORMER, "data.batch_size=8"]))
    # the sampler was built after the process group came up: each rank took its own half of the 8 batches
    assert "train: rank 0 of 2 takes 4 of the batches" in out
    assert "train: rank 1 of 2 takes 4 of the batches" in out
    res = {k: json.loads((tmp_path / k / "results.json").read_text()) for k in ("ddp", "accum", "double")}
    ddp, accum, double = res["ddp"], res["accum"], res["double"]
    for r in res.values():
        assert r["status"] == "completed"
    # 32 utterances, 8 per step: 4 steps (without sharding each rank would take all 8 batches of 4: 8 steps)
    assert ddp["global_step"] == accum["global_step"] == double["global_step"] == 4
    assert ddp["before"] == pytest.approx(accum["before"], rel=1e-5)  # same model, same eval batches
    # exact reference: the same batches per step
    assert ddp["after"]["test_loss"] == pytest.approx(accum["after"]["test_loss"], rel=1e-4)
    assert ddp["after"]["test_wer"] == pytest.approx(accum["after"]["test_wer"], abs=1e-6)
    assert ddp["after"]["test_cer"] == pytest.approx(accum["after"]["test_cer"], abs=1e-6)
    # doubled batch: different grouping and padding, so only close
    assert ddp["after"]["test_loss"] == pytest.approx(double["after"]["test_loss"], rel=0.05)
    assert abs(ddp["after"]["test_wer"] - double["after"]["test_wer"]) <= 0.1
    # one writer for the shared run dir: rank 0 wrote results.json and a loadable last.ckpt
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    # the report that benchmarks/run_ddp_check.sh commits for the 2-GPU run reads the same three run dirs
    assert ddp_report.main(["--out", str(tmp_path / "report"), *(str(tmp_path / k) for k in res)]) == 0
    rows = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert [(r["run"], r["strategy"], r["global_step"]) for r in rows] == [
        ("ddp", "ddp", 4), ("accum", "auto", 4), ("double", "auto", 4)]
    assert rows[1]["test_loss_rel_diff"] <= 1e-4 and rows[1]["test_wer_abs_diff"] <= 1e-6
    assert [r.get("weights_agree") for r in rows] == [None, True, False]  # accumulation: the same weights
    assert rows[2]["test_loss_rel_diff"] == pytest.approx(
        abs(double["after"]["test_loss"] - ddp["after"]["test_loss"]) / ddp["after"]["test_loss"])
    assert "| ddp | ddp | 2 | 4 | 1 | 4 |" in (tmp_path / "report.md").read_text()


@NEEDS_GLOO
def test_cpu_ddp_hf_conformer_with_attention_only_steps(tmp_path):
    """The HF conformer (a pos_conv_embed it never calls) with attention_only_steps=2 of 4 (only the converted
    layers train first, then everything): DDP must run, and end on the parameters that one process reaches by
    accumulating the same batches. Its BatchNorm running statistics are the one thing that differs (each DDP rank
    updates them on its own batches, rank 0's are kept), so they, and the test loss that reads them, are left out."""
    run((tmp_path / "ddp", [*CONFORMER, *DDP, "data.batch_size=4", "optim.attention_only_steps=2"]),
        (tmp_path / "accum", [*CONFORMER, "data.batch_size=4", "+trainer.accumulate_grad_batches=2",
                              "optim.attention_only_steps=2"]))
    ckpt = {k: torch.load(tmp_path / k / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
            for k in ("ddp", "accum")}
    assert ckpt["ddp"]["global_step"] == ckpt["accum"]["global_step"] == 4
    batch_norm_stats = ("running_mean", "running_var", "num_batches_tracked")
    params = {k: {n: t for n, t in c["state_dict"].items() if not n.endswith(batch_norm_stats)}
              for k, c in ckpt.items()}
    assert params["ddp"].keys() == params["accum"].keys()
    assert any(".variant." in n for n in params["ddp"]) and any(".ffn1." in n for n in params["ddp"])
    for name, value in params["ddp"].items():
        torch.testing.assert_close(value, params["accum"][name], rtol=1e-4, atol=1e-6, msg=name)


@NEEDS_GLOO
def test_cpu_ddp_killed_mid_epoch_resumes_with_every_ranks_rng_bit_identical(tmp_path):
    """Dropout on, and the two ranks' batches differ in length, so their RNG states part after the first step.
    kill -9 in epoch 2, after a mid-epoch last.ckpt: the resumed run must end on the uninterrupted run's weights
    bit for bit, which needs each rank to restore its own RNG states (rank 0's on both ranks would not do)."""
    steps_per_epoch = 6  # 48 utterances, 2 ranks x batch 4 per step
    overrides = ["model=branchformer", "attention=gqa", *DDP, "data.batch_size=4", "data.limit_train=48",
                 "trainer.max_epochs=2", "checkpoint_every_n_steps=2"]
    reference = train_process.start(tmp_path / "reference", [*COMMON, *overrides])
    victim_dir = tmp_path / "killed"
    victim = train_process.start(victim_dir, [*COMMON, *overrides])
    last = victim_dir / "checkpoints" / "last.ckpt"
    saved = train_process.kill_mid_epoch(victim, victim_dir, epoch=1, steps_per_epoch=steps_per_epoch)
    assert steps_per_epoch < saved["global_step"] < 2 * steps_per_epoch
    rng = saved["resume_state"]["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # the ranks' states differ

    out = finish(train_process.start(victim_dir, [*COMMON, *overrides]))
    assert f"Restoring states from the checkpoint path at {last}" in out
    finish(reference)
    weights = [torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
               for d in (victim_dir, tmp_path / "reference")]
    assert weights[0].keys() == weights[1].keys()
    differing = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert differing == []
    results = [json.loads((d / "results.json").read_text()) for d in (victim_dir, tmp_path / "reference")]
    assert results[0]["global_step"] == results[1]["global_step"] == 2 * steps_per_epoch
    assert results[0]["after"] == results[1]["after"]


# Whisper tiny.en as the quality study fine-tunes it (experiment=quality_whisper: decoder self + cross, attention
# only; study/variant=mla_d4_act: MLA r = d/4, activation-aware), with the encoder frozen and served from the
# encoder-output store, and the distillation teacher on. tiny.en has no dropout and SpecAugment is off, so no draw
# differs between the ranks. The recipe's own lr (3e-5, AdamW, no warmup here) moves every trainable weight by about
# lr a step: far above the tolerance, so a step that differs shows. Eval batches of 1: the throughput figure decodes
# the first test batch 4 times, with its fallbacks.
WHISPER = ["experiment=quality_whisper", "study/variant=mla_d4_act", "logger=none", "data.limit_train=4",
           "data.limit_val=2", "data.limit_test=2", "data.num_workers=0", "data.batch_size=2",
           "+data.eval_batch_size=1", "trainer.max_steps=2", "optim.warmup_steps=0", "optim.distill_weight=0.5",
           "model.ood_test=null"]  # the out-of-domain test is another test pass: the AN4 one already checks DDP's


@NEEDS_GLOO
def test_cpu_ddp_whisper_seq2seq_with_encoder_store_and_teacher_matches_accumulation(tmp_path):
    """Whisper's seq2seq path under DDP: 2 ranks x batch 2 against one process with batch 2 and
    accumulate_grad_batches=2 (the same batches per optimizer step, see the module docstring). 4 utterances: 1 step
    an epoch, so the second epoch (reshuffled, each rank's shard new) reads the encoder-output store too. A val pass
    after every step: Lightning counts val_check_interval in training batches, so accumulating over 2 needs twice the
    interval to validate (and choose the best checkpoint) at the same steps.
    Both must end on the same weights, val curve (steps 0, 1, 2) and test WER; the teacher (not a submodule) is in no
    checkpoint. The report of benchmarks/run_ddp_whisper_check.sh says so from the two run dirs, with the training
    speed per device (one rank trains half the utterances)."""
    procs = [train_process.start(tmp_path / "ddp", [*WHISPER, *DDP, "trainer.val_check_interval=1"]),
             train_process.start(tmp_path / "accum", [*WHISPER, "trainer=cpu", "+trainer.accumulate_grad_batches=2",
                                                      "trainer.val_check_interval=2"])]
    out = finish(procs[0])
    finish(procs[1])
    assert "train: rank 0 of 2 takes 1 of the batches" in out  # each epoch: 2 batches of 2, 1 per rank
    assert "train: rank 1 of 2 takes 1 of the batches" in out
    res = {k: json.loads((tmp_path / k / "results.json").read_text()) for k in ("ddp", "accum")}
    ddp, accum = res["ddp"], res["accum"]
    assert ddp["status"] == accum["status"] == "completed"
    assert ddp["global_step"] == accum["global_step"] == 2
    assert ddp["before"] == pytest.approx(accum["before"], rel=1e-5)  # same conversion (calibrated on val alike)
    assert ddp["after"]["test_loss"] != pytest.approx(ddp["before"]["test_loss"], rel=1e-3)  # the weights moved
    assert ddp["after"]["test_loss"] == pytest.approx(accum["after"]["test_loss"], rel=1e-4)
    for metric in ("test_wer", "test_cer"):
        assert ddp["after"][metric] == pytest.approx(accum["after"][metric], abs=1e-6)
    weights = {k: torch.load(tmp_path / k / "checkpoints" / "last.ckpt", map_location="cpu",
                             weights_only=True)["state_dict"] for k in ("ddp", "accum")}
    assert weights["ddp"].keys() == weights["accum"].keys()
    assert not any("teacher" in n or "distillation" in n for n in weights["ddp"])
    assert any(".variant.kv_down." in n for n in weights["ddp"])  # the converted MLA sites are saved
    for name, value in weights["ddp"].items():
        torch.testing.assert_close(value, weights["accum"][name], rtol=1e-4, atol=1e-6, msg=name)
    assert [p["step"] for p in ddp["val_curve"]] == [p["step"] for p in accum["val_curve"]] == [0, 1, 2]
    for ours, theirs in zip(ddp["val_curve"], accum["val_curve"]):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
        assert ours["val_wer"] == pytest.approx(theirs["val_wer"], abs=1e-6)
    assert ddp_report.main(["--out", str(tmp_path / "report"), str(tmp_path / "ddp"), str(tmp_path / "accum")]) == 0
    ddp_row, accum_row = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert accum_row["weights_agree"] is True and accum_row["weights_max_abs_diff"] <= 1e-6
    assert accum_row["val_points"] == 3 and accum_row["val_loss_max_rel_diff"] <= 1e-4
    assert (ddp["training_speed"]["steps"], ddp["training_speed"]["utterances"]) == (2, 4)  # rank 0's 2 x 1 x 2
    assert (accum["training_speed"]["steps"], accum["training_speed"]["utterances"]) == (2, 8)
    assert ddp_row["utterances_per_second"] == pytest.approx(4 / ddp["training_speed"]["seconds"])


def test_training_speed_counts_this_devices_batches_without_val_passes_and_adds_up_on_resume(tmp_path, monkeypatch):
    """results.json training_speed: fit's training seconds (its val passes taken out), steps, and the utterances and
    audio of this process's batches; a resumed run's fit adds to the earlier attempt's figures."""
    clock = iter([100.0, 130.0, 135.0, 160.0,  # fit 1: start, val from 130 to 135, end at 160
                  200.0, 210.0])               # fit 2 (resumed at step 3): start, end
    monkeypatch.setattr(training_speed.time, "perf_counter", lambda: next(clock))
    results = Results(tmp_path / "results.json")
    speed, module = TrainingSpeed(results), SimpleNamespace(device=torch.device("cpu"))
    batch = {"utt_ids": ["a", "b"], "wave_lengths": torch.tensor([16000, 8000])}  # 1.5 s of audio
    trainer = SimpleNamespace(global_step=0, sanity_checking=False)
    speed.on_train_start(trainer, module)
    for _ in range(3):
        speed.on_train_batch_end(trainer, module, None, batch, 0)
    speed.on_validation_start(trainer, module)
    speed.on_validation_end(trainer, module)
    trainer.global_step = 3
    speed.on_train_end(trainer, module)
    assert results.get("training_speed") == {"seconds": 55.0, "validation_seconds": 5.0, "steps": 3,
                                             "utterances": 6, "audio_seconds": 4.5}
    speed.on_train_start(trainer, module)
    speed.on_train_batch_end(trainer, module, None, batch, 0)
    speed.on_train_batch_end(trainer, module, None, None, 1)  # a batch of unreadable files only
    trainer.global_step = 4
    speed.on_train_end(trainer, module)
    assert json.loads((tmp_path / "results.json").read_text())["training_speed"] == {
        "seconds": 65.0, "validation_seconds": 5.0, "steps": 4, "utterances": 8, "audio_seconds": 6.0}


def fake_run(run_dir: Path, weights: dict, curve: list[tuple], strategy: str, accumulate: int = 1,
             so762_wer: float | None = None) -> None:
    """A run folder as train.py leaves it, with what ddp_report reads: results.json, last.ckpt, eval/<name>.json."""
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": weights}, run_dir / "checkpoints" / "last.ckpt")
    trainer = {"strategy": strategy, "devices": 2 if strategy == "ddp" else 1, "accumulate_grad_batches": accumulate}
    (run_dir / "results.json").write_text(json.dumps({
        "status": "completed", "config": {"trainer": trainer, "data": {"batch_size": 4}}, "global_step": 1000,
        "wall_seconds": 600, "after": {"test_loss": 0.5, "test_wer": 0.1, "test_cer": 0.05},
        "val_curve": [{"step": s, "val_loss": loss, "val_wer": wer} for s, loss, wer in curve],
        "training_speed": {"seconds": 100.0, "steps": 1000, "utterances": 4000, "audio_seconds": 12000.0}}))
    if so762_wer is not None:
        (run_dir / "eval").mkdir()
        (run_dir / "eval" / "so762.json").write_text(json.dumps({"after": {"test_wer": so762_wer}}))


def test_ddp_report_compares_val_curves_final_weights_and_other_test_sets(tmp_path):
    """Against the DDP row: the val curve over the steps both validated, every final weight (BatchNorm statistics
    left out) with the CPU test's tolerance, the WER on another test set (where evaluated); speed per device."""
    w = torch.tensor([1.0, -2.0, 0.0])
    fake_run(tmp_path / "ddp", {"w": w, "bn.running_mean": torch.zeros(2)}, [(0, 1.0, 0.5), (200, 0.8, 0.3)], "ddp",
             so762_wer=0.40)
    fake_run(tmp_path / "accum", {"w": w * (1 + 5e-5), "bn.running_mean": torch.ones(2)},
             [(0, 1.0, 0.5), (100, 0.9, 0.4), (200, 0.8 * (1 + 2e-5), 0.3)], "auto", accumulate=2, so762_wer=0.42)
    fake_run(tmp_path / "double", {"w": w + torch.tensor([0.0, 0.0, 1e-5]), "bn.running_mean": torch.zeros(2)},
             [(0, 1.0, 0.5)], "auto")
    assert ddp_report.main(["--out", str(tmp_path / "report"), "--eval", "so762",
                            *(str(tmp_path / k) for k in ("ddp", "accum", "double"))]) == 0
    ddp, accum, double = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert accum["weights_agree"] is True  # within rtol 1e-4; the BatchNorm statistics differ and are left out
    assert accum["weights_max_abs_diff"] == pytest.approx(1e-4, rel=0.01)
    assert accum["weights_max_rel_diff"] == pytest.approx(5e-5, rel=0.01)
    assert double["weights_agree"] is False  # 1e-5 off a weight of 0: above atol 1e-6
    assert (accum["val_points"], double["val_points"]) == (2, 1)
    assert accum["val_loss_max_rel_diff"] == pytest.approx(2e-5, rel=0.01) and accum["val_wer_max_abs_diff"] == 0
    assert (ddp["so762_wer"], accum["so762_wer"], double["so762_wer"]) == (0.40, 0.42, None)
    assert accum["so762_wer_abs_diff"] == pytest.approx(0.02) and "so762_wer_abs_diff" not in double
    assert ddp["utterances_per_second"] == 40.0 and ddp["audio_seconds_per_second"] == 120.0
    lines = (tmp_path / "report.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1  # header, rule and every row have the same cells
    assert table[0].endswith("| so762 WER | so762 WER diff |")
    assert table[3].startswith("| accum | auto | 1 | 4 | 2 | 1000 |") and "| yes |" in table[3]


def test_the_2gpu_whisper_check_script_composes_paired_runs(tmp_path):
    """benchmarks/run_ddp_whisper_check.sh with CFG_JOB=1 prints each run's composed config (--cfg job) instead of
    training: the DDP run and its one-GPU reference differ only in how the global batch of 8 is made (2 ranks x 4,
    or 4 accumulated twice) and in val_check_interval, which Lightning counts in batches (so: every 200 steps both)."""
    env = {**os.environ, "CFG_JOB": "1", "PYTHON": sys.executable, "DDP_WORK": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", "benchmarks/run_ddp_whisper_check.sh"], cwd=train_process.REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    _, ddp_yaml, accum_yaml = proc.stdout.split("=== ")
    ddp, accum = (OmegaConf.create(text.split("\n", 1)[1]) for text in (ddp_yaml, accum_yaml))
    assert (ddp.trainer.strategy, ddp.trainer.devices, ddp.trainer.val_check_interval) == ("ddp", 2, 200)
    assert "accumulate_grad_batches" not in ddp.trainer
    assert (accum.trainer.devices, accum.trainer.accumulate_grad_batches,
            accum.trainer.val_check_interval) == (1, 2, 400)
    for cfg in (ddp, accum):
        assert cfg.trainer.precision == "32-true" and cfg.trainer.max_steps == 1000 and cfg.data.batch_size == 4
        assert cfg.model.name == "whisper" and cfg.model.freeze_encoder and cfg.model.cache_encoder
        assert (cfg.attention.name, cfg.attention.calibration, list(cfg.attention.sites)) == (
            "mla", "activation", ["decoder_self", "cross"])
        assert cfg.attention.latent_dim == cfg.model.d_model // 4 == 96
    ddp, accum = (OmegaConf.to_container(cfg) for cfg in (ddp, accum))  # unresolved: run_name reads hydra's state
    assert ddp.pop("trainer") != accum.pop("trainer") and ddp == accum
