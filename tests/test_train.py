"""The training entry end to end on the shipped AN4 demo checkpoints (CPU, a few utterances). Kill-and-resume,
run identity and concurrency: tests/test_runs.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiment=demo", "model=branchformer", "data.limit_train=16", "data.limit_val=8", "data.limit_test=8",
        "data.num_workers=0"]
# Word errors of the shipped AN4 Branchformer on the first 8 AN4 test utterances (38 words): its own attention (or
# MHA, which equals it) makes 7; GQA with 2 of 4 K/V heads, mean-pooled, 14. A broken conversion makes ~38.
MHA_WER, GQA_WER = 7 / 38, 14 / 38


def train(run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "asr_attention.train", *TINY, f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_train_converts_finetunes_and_writes_results(tmp_path):
    out = finish(train(tmp_path, "attention=gqa", "trainer.max_epochs=1", "optim.warmup_steps=0"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed"
    conv = results["conversion"]
    assert conv["attention"] == "gqa" and conv["layers_replaced"] == 4
    # 2 of 4 K/V heads, mean-pooled: far from the original layers, yet not unrelated to them
    assert len(conv["fidelity"]) == 4 and all(0.3 < row["relative_error"] < 0.9 for row in conv["fidelity"])
    assert conv["calibration_data"] == {"split": "val", "text": "reference", "utterances": 8, "frames": 617,
                                        "requested_frames": 8192}
    # the measured cache of the patched layers equals the analytic figure for the same frames and batch
    assert conv["measured_cache_bytes"]["measured"] == conv["measured_cache_bytes"]["analytic"] > 0
    # 4 layers x 2 KV heads x 36 head dims x 2 (K, V) x 1000 frames x 4 bytes
    assert conv["cache_mib_per_1000_frames"] == 4 * 2 * 36 * 2 * 1000 * 4 / 2**20
    assert results["before"]["test_wer"] == pytest.approx(GQA_WER)
    assert results["global_step"] == 1 and results["after"]["test_loss"] != results["before"]["test_loss"]
    assert results["after"]["test_wer"] < 0.5  # one small step (lr 5e-4) keeps the model close to the converted one
    assert results["throughput"]["rtfx"] > 0
    assert "WER before -> after fine-tuning" in out
    # model.ood_test=null (every model but Whisper): no out-of-domain test, nothing recorded or printed for one
    assert "ood" not in results and results["scoring"] == {"test": "an4"} and "OOD" not in out


def test_mha_conversion_keeps_the_checkpoint_exactly(tmp_path):
    finish(train(tmp_path, "attention=mha", "trainer.max_epochs=1", "+trainer.limit_train_batches=0"))
    results = json.loads((tmp_path / "results.json").read_text())
    # against what the checkpoint's own attention modules returned on the calibration utterances
    assert max(row["relative_error"] for row in results["conversion"]["fidelity"]) < 1e-5
    # no training step was taken, so the test WER after equals the one right after conversion: the checkpoint's own
    assert results["after"]["test_wer"] == results["before"]["test_wer"] == pytest.approx(MHA_WER)


def test_conversion_calibrates_on_frames_drawn_across_val(compose_cfg, spy):
    """Not the first val batch (the sampler sorts it shortest first: 16 utterances of about 36 frames here): about
    `frames` encoder frames of utterances drawn across the split, which the activation-aware SVD, the fidelity table
    and results.json all see."""
    from asr_attention.training import experiment

    cfg = compose_cfg("train", ["experiment=demo", "model=branchformer", "attention=mla", "attention.latent_dim=72",
                                "attention.calibration=activation", "data.num_workers=0"])
    tokenizer, backbone = experiment.build_tokenizer_and_backbone(cfg)
    datamodule = experiment.build_datamodule_for(cfg, tokenizer, backbone)
    captures = spy(experiment, "capture_attention_calls")
    patches = spy(experiment, "patch_attention")
    added = spy(experiment.SecondMoment, "add")
    conversion = experiment.convert(backbone, cfg.attention, datamodule, frames=2000, seed=0)
    used = conversion["calibration_data"]
    seconds = torch.cat([args[2] for args, _ in captures]) / 16000
    (args, _), = patches
    # the SVD's calibration is the recorded frames' second moment (the first site's, added batch by batch)
    first = added[0][0][0]
    assert sum(len(x) for (moment, x), _ in added if moment is first) == first.count == used["frames"]
    torch.testing.assert_close(args[2][0], first.rows())
    assert used["utterances"] == len(seconds) and used["requested_frames"] == 2000
    # drawn until 80 s of audio (2000 frames of 40 ms) were taken: the frames follow (one per 40 ms of audio)
    assert seconds.sum() >= 80 > seconds.sum() - seconds.max()
    assert abs(used["frames"] - seconds.sum() / 0.04) <= used["utterances"]
    val = torch.tensor(datamodule.datasets["val"].durations)
    assert seconds.max() > val.median() > seconds.min()  # long and short utterances, not the shortest first
    assert len(conversion["fidelity"]) == 4 and all(0 < r["relative_error"] < 1 for r in conversion["fidelity"])
    # how much is drawn for calibration leaves fine-tuning's random draws (dropout, new heads) as they were
    rng_after = []
    for frames in (300, 3000):
        torch.manual_seed(0)
        experiment.convert(experiment.build_tokenizer_and_backbone(cfg)[1], cfg.attention, datamodule, frames=frames)
        rng_after.append(torch.get_rng_state())
    assert torch.equal(*rng_after)


def test_evaluation_runs_the_backbone_once_per_batch(compose_cfg, monkeypatch):
    """The transcripts and the loss of an evaluation batch come from one forward pass."""
    from asr_attention.training.experiment import build_datamodule_for, build_module, build_tokenizer_and_backbone

    cfg = compose_cfg("train", [*TINY, "attention=native", "data.limit_val=4"])
    tokenizer, backbone = build_tokenizer_and_backbone(cfg)
    module = build_module(cfg, backbone, tokenizer).eval()
    batch = next(iter(build_datamodule_for(cfg, tokenizer, backbone).val_dataloader()))
    forwards, logged = [], {}
    backbone.register_forward_pre_hook(lambda *args: forwards.append(1))
    monkeypatch.setattr(module, "log", lambda name, value, **kwargs: logged.update({name: float(value)}))
    with torch.no_grad():
        module.evaluate(batch, "val")
        assert len(forwards) == 1
        assert logged["val_loss"] == pytest.approx(float(module.loss_and_hyps(batch, decode=False)[0]))  # the same loss, recomputed
    assert module.metrics["val_wer"].compute() < 0.5  # the shipped checkpoint's own transcripts


def test_pretrained_wav2vec2_front_end_is_frozen(compose_cfg):
    from asr_attention.training.experiment import build_tokenizer_and_backbone

    cfg = compose_cfg("train", ["experiment=demo", "model=conformer"])
    tokenizer, backbone = build_tokenizer_and_backbone(cfg)
    front_end = backbone.model.wav2vec2_conformer.feature_extractor
    assert not any(p.requires_grad for p in front_end.parameters())
    encoder = backbone.model.wav2vec2_conformer.encoder
    assert all(p.requires_grad for n, p in encoder.named_parameters() if not n.startswith("pos_conv_embed."))
    assert not any(p.requires_grad for p in encoder.pos_conv_embed.parameters())  # built by HF, never called
    assert len(tokenizer) == backbone.vocab_size  # the shipped checkpoint's own CTC head and vocabulary


def test_attention_only_steps_train_just_the_converted_layers(compose_cfg, tmp_path):
    from asr_attention.training.experiment import (
        build_datamodule_for, build_module, build_tokenizer_and_backbone, build_trainer, convert,
    )

    cfg = compose_cfg("train", [*TINY, "attention=gqa", "optim.attention_only_steps=5", "optim.warmup_steps=0",
                                "trainer.max_epochs=1", "+trainer.limit_val_batches=0", "logger=none"])
    tokenizer, backbone = build_tokenizer_and_backbone(cfg)
    datamodule = build_datamodule_for(cfg, tokenizer, backbone)
    convert(backbone, cfg.attention, datamodule, frames=500)
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


def _manifests(folder: Path, train_speakers: list[str]) -> None:
    """train/dev/test manifests whose audio files do not exist: nothing may open them before the check."""
    from asr_attention.data import Utterance, write_manifest

    def utts(prefix, speakers):
        return [Utterance(f"{prefix}{i}", str(folder / f"{prefix}{i}.wav"), "HELLO", 1.0, s)
                for i, s in enumerate(speakers)]

    write_manifest(utts("train", train_speakers), folder / "train.tsv")
    write_manifest(utts("dev", ["alice"]), folder / "dev.tsv")
    write_manifest(utts("test", ["bob"]), folder / "test.tsv")


def test_a_train_split_emptied_by_the_val_speakers_fails_before_the_model_loads(compose_cfg, tmp_path,
                                                                                 monkeypatch):
    """The manifest's only train speaker also speaks in val, so train is emptied: the run used to train 0 steps,
    print 'WER before -> after' and be marked completed."""
    from asr_attention import train
    from asr_attention.data.datamodule import EmptySplit

    _manifests(tmp_path, ["alice", "alice"])

    def no_model(*args, **kwargs):
        raise AssertionError("the backbone was built for an empty train split")

    monkeypatch.setattr(train, "build_tokenizer_and_backbone", no_model)
    cfg = compose_cfg("train", ["experiment=demo", "model=branchformer", "data=manifest", f"data.root={tmp_path}",
                                "logger=none"])
    (tmp_path / "run").mkdir()
    with pytest.raises(EmptySplit) as err:
        train.fit_and_record(cfg, tmp_path / "run", sweep=False)
    assert str(err.value) == (
        "the train split (train.tsv) is empty: all 2 utterances of data.train_split='train.tsv' of "
        "data.corpus=manifest are by speakers of the val split (alice), which are kept out of train so that val "
        "measures unseen speakers; choose a val split of other speakers")
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["status"] == "failed" and stored["error"].startswith("EmptySplit: the train split (train.tsv)")


def test_a_split_whose_audio_is_all_unreadable_fails_naming_it(tmp_path):
    """Listed, but no file could be read at setup (skipped with a warning each): still nothing to train on."""
    import warnings

    from asr_attention.data.datamodule import ASRDataModule, EmptySplit
    from asr_attention.data.text import CharTokenizer

    _manifests(tmp_path, ["carol"])
    dm = ASRDataModule("manifest", str(tmp_path), CharTokenizer.from_texts(["HELLO"]), train_split="train.tsv",
                       val_split="dev.tsv", test_split="test.tsv")
    dm.check_not_empty()  # listed: one utterance each
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup()
    with pytest.raises(EmptySplit, match=r"^the train split \(train.tsv\) is empty: none of its 1 audio files could"):
        dm.check_not_empty()
