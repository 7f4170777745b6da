"""The training entry end to end on the shipped AN4 demo checkpoints (CPU, a few utterances). Kill-and-resume,
run identity and concurrency: tests/test_runs.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiment=demo", "model=branchformer", "data.limit_train=16", "data.limit_val=8", "data.limit_test=8",
        "data.num_workers=0"]


def train(run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "asr_attention.train", *TINY, f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_train_converts_finetunes_and_writes_results(tmp_path):
    out = finish(train(tmp_path, "attention=gqa", "trainer.max_epochs=1"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed"
    conv = results["conversion"]
    assert conv["attention"] == "gqa" and conv["layers_replaced"] == 4
    assert len(conv["fidelity"]) == 4 and all(row["relative_error"] > 0 for row in conv["fidelity"])
    # the measured cache of the patched layers equals the analytic figure for the same frames and batch
    assert conv["measured_cache_bytes"]["measured"] == conv["measured_cache_bytes"]["analytic"] > 0
    # 4 layers x 2 KV heads x 36 head dims x 2 (K, V) x 1000 frames x 4 bytes
    assert conv["cache_mib_per_1000_frames"] == 4 * 2 * 36 * 2 * 1000 * 4 / 2**20
    for phase in ("before", "after"):
        assert 0 <= results[phase]["test_wer"] <= 2 and 0 <= results[phase]["test_cer"] <= 2
    assert results["throughput"]["rtfx"] > 0
    assert "WER before -> after fine-tuning" in out


def test_mha_conversion_keeps_the_checkpoint_exactly(tmp_path):
    finish(train(tmp_path, "attention=mha", "trainer.max_epochs=1", "+trainer.limit_train_batches=0"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert max(row["relative_error"] for row in results["conversion"]["fidelity"]) < 1e-5
    # no training step was taken, so the test WER after equals the one right after conversion
    assert results["after"]["test_wer"] == pytest.approx(results["before"]["test_wer"])


def test_export_with_a_converted_attention_is_refused_before_any_work(tmp_path):
    proc = train(tmp_path, "attention=mla", f"export_dir={tmp_path}/x")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "export_dir" in out and "needs attention=native" in out
    assert not (tmp_path / "results.json").exists()


def test_pretrained_wav2vec2_front_end_is_frozen(compose_cfg):
    from asr_attention.experiment import build_tokenizer_and_backbone

    cfg = compose_cfg("train", ["experiment=demo", "model=conformer"])
    tokenizer, backbone = build_tokenizer_and_backbone(cfg)
    front_end = backbone.model.wav2vec2_conformer.feature_extractor
    assert not any(p.requires_grad for p in front_end.parameters())
    assert all(p.requires_grad for p in backbone.model.wav2vec2_conformer.encoder.parameters())
    assert len(tokenizer) == backbone.vocab_size  # the shipped checkpoint's own CTC head and vocabulary


def test_attention_only_steps_train_just_the_converted_layers(compose_cfg, tmp_path):
    import torch

    from asr_attention.experiment import (
        build_datamodule_for, build_module, build_tokenizer_and_backbone, build_trainer, convert,
    )

    cfg = compose_cfg("train", [*TINY, "attention=gqa", "optim.attention_only_steps=5", "optim.warmup_steps=0",
                                "trainer.max_epochs=1", "+trainer.limit_val_batches=0", "logger=none"])
    tokenizer, backbone = build_tokenizer_and_backbone(cfg)
    datamodule = build_datamodule_for(cfg, tokenizer)
    convert(backbone, cfg.attention, datamodule)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    module = build_module(cfg, backbone, tokenizer)
    build_trainer(cfg, tmp_path).fit(module, datamodule=datamodule)
    changed = {n for n, p in backbone.named_parameters() if not torch.equal(p.detach().cpu(), before[n])}
    assert changed and all(".variant." in n for n in changed), sorted(changed)[:5]
    assert any("q_proj" in n for n in changed)


def test_same_command_same_result(tmp_path):
    """cfg.seed fixes batches, dropout and new heads: two runs of one command give the same numbers."""
    runs = []
    for name in ("a", "b"):
        finish(train(tmp_path / name, "attention=gqa", "trainer.max_epochs=1"))
        runs.append(json.loads((tmp_path / name / "results.json").read_text())["after"])
    assert runs[0] == runs[1]
