"""The seed's checkpoints as their hubs ship them (tiny sizes, file for file: tests/hub_fixtures.py), loaded by local
path and by hub id from an offline Hugging Face cache, give the output of the architectures' own pipelines on real
AN4 speech; a missing file, a partial cache or a hyperparams.yaml the adapter does not build fails naming it."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from asr_attention.backbones import build_backbone, patch_attention
from hub_fixtures import (
    CONFORMER_HUB_ID, SB_HUB_ID, SB_SIZES, W2V_HUB_ID, an4_waves, hf_cache, padded,
    speechbrain_hub_dir, wav2vec2_hub_dir,
)

REPO = Path(__file__).resolve().parents[1]
SB_FILES = ["config.json", "example.wav", "hyperparams.yaml", "model.ckpt", "normalizer.ckpt", "tokenizer.ckpt"]
W2V_FILES = ["config.json", "preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json",
             "tokenizer_config.json", "vocab.json"]


def sb_cfg(source, arch=None):
    return dict(family="speechbrain_branchformer", source=str(source), pretrained=True, **SB_SIZES, arch=arch or {})


def w2v_cfg(source, conformer):
    arch = {"hf_class": "Wav2Vec2ConformerForCTC"} if conformer else {}
    return dict(family="hf_wav2vec2", source=str(source), pretrained=True, d_model=32, num_heads=4, num_layers=2,
                arch=arch)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, used by this process as HF_HUB_CACHE (offline: conftest sets HF_HUB_OFFLINE)."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def valid_frames(a: torch.Tensor, b: torch.Tensor, lengths: torch.Tensor) -> float:
    """max |a - b| over each utterance's own frames."""
    return max((a[i, :n] - b[i, :n]).abs().max().item() for i, n in enumerate(lengths.tolist()))


# ------------------------------------------------------------------------------- SpeechBrain Branchformer


@pytest.fixture(scope="module")
def sb_dir(tmp_path_factory):
    return speechbrain_hub_dir(tmp_path_factory.mktemp("sb") / "asr-branchformer-large-tedlium2")


@pytest.fixture(scope="module")
def speechbrain_reference(sb_dir, tmp_path_factory):
    """SpeechBrain's own pipeline, loaded from the folder by its own interface (EncoderDecoderASR.from_hparams):
    Fbank -> normalizer -> CNN -> TransformerASR.encode -> ctc_lin -> log_softmax, for a batch of 1 and a zero-padded
    batch of 2 real AN4 utterances (lengths relative to the longest, as SpeechBrain takes them)."""
    from speechbrain.inference.ASR import EncoderDecoderASR

    asr = EncoderDecoderASR.from_hparams(source=str(sb_dir), savedir=str(tmp_path_factory.mktemp("sb_save")))
    batches = [padded(an4_waves(1)), padded(an4_waves(3)[1:])]
    assert batches[1][1][0] != batches[1][1][1]  # really padded
    out = []
    with torch.no_grad():
        for waves, lengths in batches:
            encoded = asr.encode_batch(waves, lengths / waves.shape[1])
            out.append((waves, lengths, asr.hparams.log_softmax(asr.hparams.ctc_lin(encoded))))
    return out


def assert_matches_speechbrain(backbone, reference, tol):
    for waves, lengths, ref in reference:
        with torch.no_grad():
            ours, frames = backbone(waves, lengths)
        assert ours.shape == ref.shape and frames.max() == ref.shape[1]
        err = valid_frames(ours, ref, frames)
        assert err <= tol, f"batch of {len(waves)}: max |log p - SpeechBrain's| = {err:.2e}"


def test_hub_folder_has_the_hub_file_set(sb_dir):
    assert sorted(p.name for p in sb_dir.iterdir()) == SB_FILES
    stats = torch.load(sb_dir / "normalizer.ckpt")
    assert sorted(stats) == ["count", "glob_mean", "glob_std", "spk_dict_count", "spk_dict_mean", "spk_dict_std"]
    assert sorted({k.split(".")[0] for k in torch.load(sb_dir / "model.ckpt")}) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("by", ["path", "hub id"])
def test_branchformer_equals_speechbrain_and_mha_patch_keeps_it(by, sb_dir, speechbrain_reference, hub_cache):
    source = sb_dir if by == "path" else SB_HUB_ID
    if by == "hub id":
        hf_cache(hub_cache, SB_HUB_ID, sb_dir)
    backbone = build_backbone(sb_cfg(source)).eval()
    assert backbone.vocab_size == 30 and backbone.vocab[:3] == ["<unk>", "<s>", "</s>"]  # tokenizer.ckpt read
    assert backbone.sizes["n_mels"] == 40 and backbone.sizes["csgu_linear_units"] == 64  # from hyperparams.yaml
    assert_matches_speechbrain(backbone, speechbrain_reference, 1e-5)
    summary = patch_attention(backbone, {"name": "mha"})
    assert summary["layers_replaced"] == 2
    assert_matches_speechbrain(backbone, speechbrain_reference, 1e-4)


def test_older_asr_ckpt_name_still_loads(sb_dir, speechbrain_reference, tmp_path):
    folder = shutil.copytree(sb_dir, tmp_path / "old")
    (folder / "model.ckpt").rename(folder / "asr.ckpt")
    assert_matches_speechbrain(build_backbone(sb_cfg(folder)).eval(), speechbrain_reference[:1], 1e-5)


def test_missing_weights_name_the_file_and_folder(sb_dir, tmp_path):
    folder = shutil.copytree(sb_dir, tmp_path / "no_weights")
    (folder / "model.ckpt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        build_backbone(sb_cfg(folder))
    assert f"the checkpoint folder {folder} lacks model.ckpt (or asr.ckpt)" in str(err.value)


@pytest.mark.parametrize("name,kept,why", [
    ("model.ckpt", 0.5, "PytorchStreamReader failed reading zip archive: failed finding central directory"),
    ("normalizer.ckpt", 0, "EOFError"),
], ids=["truncated-weights", "empty-normalizer"])
def test_a_truncated_checkpoint_file_is_named_in_one_line(sb_dir, tmp_path, name, kept, why):
    """It used to surface as torch's raw zip (or pickle) error, after a traceback through the loader."""
    from asr_attention.backbones.base import CorruptCheckpointFile

    folder = shutil.copytree(sb_dir, tmp_path / "cut")
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(CorruptCheckpointFile) as err:
        build_backbone(sb_cfg(folder))
    assert str(err.value) == (f"model.source={str(folder)!r}: {folder / name} is truncated or corrupt ({why}); "
                              f"replace it with a complete copy (download or export it again)")


@pytest.mark.parametrize("left_out", ["normalizer.ckpt", "hyperparams.yaml", "model.ckpt"])
def test_partial_cache_names_the_file_and_snapshot(left_out, sb_dir, hub_cache):
    snapshot = hf_cache(hub_cache, SB_HUB_ID, sb_dir, leave_out=(left_out,))
    with pytest.raises(FileNotFoundError) as err:
        build_backbone(sb_cfg(SB_HUB_ID))
    msg = str(err.value)
    assert f"the checkpoint folder {snapshot} lacks {left_out}" in msg
    assert "partial copy" in msg and "HF_HUB_OFFLINE" in msg


HPARAM_EDITS = {  # an edit of hyperparams.yaml -> the field and both values the error must name
    "causal": (("causal: False", "causal: True"), "Transformer.causal=True (this adapter builds False)"),
    "normalize_before": (("normalize_before: True", "normalize_before: False"),
                         "Transformer.normalize_before=False (this adapter builds True)"),
    "activation": (("activation: !name:torch.nn.GELU", "activation: !name:torch.nn.ReLU"),
                   "Transformer.branchformer_activation=torch.nn.modules.activation.ReLU "
                   "(this adapter builds torch.nn.modules.activation.GELU)"),
    "hop": (("    n_mels: !ref <n_mels>", "    n_mels: !ref <n_mels>\n    hop_length: 20"),
            "compute_features.hop_length=20 (this adapter builds 10)"),
    "n_fft": (("n_fft: 400", "n_fft: 512"), None),  # any Fbank size is built as the file says
    "unknown": (("    causal: False", "    causal: False\n    streaming: True"),
                "Transformer.streaming=True (not an argument of "
                "speechbrain.lobes.models.transformer.TransformerASR.TransformerASR here)"),
    "n_mels": (("n_mels: 40", "n_mels: 80"), "CNN.input_shape=(8, 10, 40) (this adapter builds (8, 10, 80))"),
    "attention": (("attention_type: RelPosMHAXL", "attention_type: regularMHA"),
                  "Transformer.attention_type='regularMHA' (this adapter builds 'RelPosMHAXL')"),
    "d_model": (("d_model: 32", "d_model: 48"), "Transformer.d_model=48 but model.ckpt has d_model=32"),
    "heads": (("nhead: 4", "nhead: 8"), "Transformer.nhead=8 but model.ckpt has num_heads=4"),
    "layers": (("num_encoder_layers: 2", "num_encoder_layers: 3"),
               "Transformer.num_encoder_layers=3 but model.ckpt has num_layers=2"),
}


@pytest.mark.parametrize("edit", list(HPARAM_EDITS))
def test_hyperparams_the_adapter_does_not_build_fail_naming_field_and_values(edit, sb_dir, tmp_path):
    (old, new), expected = HPARAM_EDITS[edit]
    folder = shutil.copytree(sb_dir, tmp_path / edit)
    text = (folder / "hyperparams.yaml").read_text()
    assert text.count(old) == 1
    (folder / "hyperparams.yaml").write_text(text.replace(old, new))
    if expected is None:
        assert build_backbone(sb_cfg(folder)).fbank.compute_STFT.n_fft == 512
        return
    with pytest.raises(ValueError) as err:
        build_backbone(sb_cfg(folder))
    assert str(folder / "hyperparams.yaml") in str(err.value) and expected in str(err.value)


def test_model_arch_that_contradicts_hyperparams_fails(sb_dir):
    with pytest.raises(ValueError, match=r"compute_features.win_length=25 \(this adapter builds 32\)"):
        build_backbone(sb_cfg(sb_dir, arch={"win_length": 32}))


# ------------------------------------------------------------------------------------------ HF wav2vec2


@pytest.fixture(scope="module", params=["wav2vec2-large-960h", "wav2vec2-conformer-rel-pos-large-960h-ft"])
def w2v(request, tmp_path_factory):
    conformer = "conformer" in request.param
    folder, model = wav2vec2_hub_dir(tmp_path_factory.mktemp("w2v") / request.param, conformer)
    return folder, model, conformer, CONFORMER_HUB_ID if conformer else W2V_HUB_ID


def transformers_reference(folder, model, conformer, waves):
    """transformers' own pipeline as its model cards use it: the folder's feature extractor (per-utterance
    normalisation, zero padding), the model, with the attention mask only where the extractor is layer-normed."""
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    inputs = extractor([w.numpy() for w in waves], sampling_rate=16000, padding=True, return_attention_mask=True,
                       return_tensors="pt")
    with torch.no_grad():
        logits = model(inputs.input_values, attention_mask=inputs.attention_mask if conformer else None).logits
    return logits.log_softmax(-1)


@pytest.mark.parametrize("by", ["path", "hub id"])
def test_wav2vec2_equals_transformers(by, w2v, hub_cache):
    folder, model, conformer, hub_id = w2v
    assert sorted(p.name for p in folder.iterdir()) == W2V_FILES
    if by == "hub id":
        hf_cache(hub_cache, hub_id, folder)
    backbone = build_backbone(w2v_cfg(folder if by == "path" else hub_id, conformer)).eval()
    assert backbone.vocab[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"] and backbone.blank_id == 0
    for waves in (an4_waves(1), an4_waves(3)[1:]):
        batch, lengths = padded(waves)
        with torch.no_grad():
            ours, frames = backbone(batch, lengths)
        ref = transformers_reference(folder, model, conformer, waves)
        assert ours.shape == ref.shape
        err = valid_frames(ours, ref, frames)
        assert err <= 1e-4, f"batch of {len(waves)}: max |log p - transformers'| = {err:.2e}"


@pytest.mark.parametrize("left_out, named", [("pytorch_model.bin", "model.safetensors (or pytorch_model.bin)"),
                                              ("vocab.json", "vocab.json"), ("config.json", "config.json")])
def test_wav2vec2_partial_cache_names_the_file_and_snapshot(left_out, named, w2v, hub_cache):
    folder, _, conformer, hub_id = w2v
    snapshot = hf_cache(hub_cache, hub_id, folder, leave_out=(left_out,))
    with pytest.raises(FileNotFoundError) as err:
        build_backbone(w2v_cfg(hub_id, conformer))
    assert f"the checkpoint folder {snapshot} lacks {named}" in str(err.value)


def test_wav2vec2_preprocessor_config_is_followed_or_refused(w2v, tmp_path):
    folder, _, conformer, _ = w2v
    copy = shutil.copytree(folder, tmp_path / "pre")
    config = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "do_normalize": False}))
    assert build_backbone(w2v_cfg(copy, conformer)).normalize_waves is False
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "sampling_rate": 8000}))
    with pytest.raises(ValueError, match="sampling_rate=8000, but this adapter feeds sampling_rate=16000"):
        build_backbone(w2v_cfg(copy, conformer))


def test_wav2vec2_weights_missing_a_tensor_fail_instead_of_going_random(w2v, tmp_path):
    folder, _, conformer, _ = w2v
    copy = shutil.copytree(folder, tmp_path / "cut")
    state = torch.load(copy / "pytorch_model.bin")
    dropped = next(k for k in state if k.endswith("pos_conv_embed.conv.weight_g"))
    del state[dropped]
    torch.save(state, copy / "pytorch_model.bin")
    with pytest.raises(ValueError, match="they would be random") as err:
        build_backbone(w2v_cfg(copy, conformer))
    assert "pos_conv_embed.conv" in str(err.value)


# ------------------------------------------------------------------------------------- downloading a hub id


class FakeHub:
    """huggingface_hub.snapshot_download against a folder standing in for the hub repo (no network here): records
    each call's (allow_patterns, local_files_only) and copies the matching files into one snapshot folder."""

    def __init__(self, repo: Path, snapshot: Path):
        self.repo, self.snapshot, self.calls = repo, snapshot, []

    def __call__(self, repo_id, allow_patterns=None, local_files_only=False, **kwargs):
        from huggingface_hub.errors import LocalEntryNotFoundError

        self.calls.append((list(allow_patterns), local_files_only))
        if local_files_only and not self.snapshot.exists():
            raise LocalEntryNotFoundError(f"{repo_id} is not cached")
        self.snapshot.mkdir(exist_ok=True)
        for file in self.repo.iterdir():
            if not local_files_only and any(fnmatch.fnmatch(file.name, p) for p in allow_patterns):
                shutil.copyfile(file, self.snapshot / file.name)
        return str(self.snapshot)


@pytest.fixture
def online(monkeypatch):
    """The hub reachable and HF_HUB_OFFLINE unset; snapshot_download replaced by a FakeHub (see fake_hub)."""
    import huggingface_hub

    from asr_attention.backbones import base

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(base, "hub_reachable", lambda: True)

    def fake_hub(repo: Path, snapshot: Path) -> FakeHub:
        hub = FakeHub(repo, snapshot)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
        return hub

    return fake_hub


def test_hub_id_downloads_only_what_the_branchformer_loader_reads(sb_dir, speechbrain_reference, online, tmp_path):
    hub = online(sb_dir, tmp_path / "snapshot")
    backbone = build_backbone(sb_cfg(SB_HUB_ID)).eval()
    assert hub.calls[0][1] is True  # the cache is looked up first
    assert sorted(os.listdir(hub.snapshot)) == ["hyperparams.yaml", "model.ckpt", "normalizer.ckpt", "tokenizer.ckpt"]
    fetched = [patterns for patterns, cached in hub.calls if not cached]
    assert fetched == [["normalizer.ckpt", "hyperparams.yaml", "tokenizer.ckpt"], ["model.ckpt"]]  # not asr.ckpt
    assert_matches_speechbrain(backbone, speechbrain_reference[:1], 1e-5)


def test_hub_id_downloads_one_weights_file_for_wav2vec2(w2v, online, tmp_path):
    folder, _, conformer, hub_id = w2v
    hub = online(folder, tmp_path / "snapshot")
    build_backbone(w2v_cfg(hub_id, conformer))
    assert sorted(os.listdir(hub.snapshot)) == W2V_FILES
    weights = [patterns for patterns, cached in hub.calls if not cached and "config.json" not in patterns]
    assert weights == [["model.safetensors"], ["pytorch_model.bin"]]  # the repo has no safetensors: then the .bin


# ---------------------------------------------------------------------------------------------- end to end


def test_train_runs_on_the_hub_id_from_an_offline_cache(sb_dir, tmp_path):
    """The seed's command, model=branchformer with the hub id, at the fixture's sizes and a few AN4 utterances."""
    cache = tmp_path / "hf_cache"
    hf_cache(cache, SB_HUB_ID, sb_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "WANDB_MODE": "offline"}
    sizes = [f"model.{k}={v}" for k, v in SB_SIZES.items()]
    cmd = [sys.executable, "-m", "asr_attention.train", "model=branchformer", f"model.source={SB_HUB_ID}",
           "attention=gqa", *sizes, "trainer=cpu", "logger=none", "trainer.max_epochs=1", "data.limit_train=4",
           "data.limit_val=2", "data.limit_test=2", "data.num_workers=0", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["config"]["model"]["source"] == SB_HUB_ID
    assert results["conversion"]["attention"] == "gqa" and results["conversion"]["layers_replaced"] == 2
    assert results["global_step"] == 4  # 4 utterances at the branchformer's batch size 1
