"""Backbone adapters: patched attention == the original, at module level and whole-model level, on tiny random
models of both families (HF wav2vec2, HF conformer relative + rotary, SpeechBrain Branchformer), fp32, padded batches.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import subprocess
import sys

import pytest
import torch

from asr_attention.attention import relative_error
from asr_attention.attention.mha import MultiHeadAttention
from asr_attention.backbones import (
    build_backbone,
    calibration_batch,
    capture_attention_calls,
    fidelity,
    patch_attention,
    patched_variants,
)

TINY_HF = dict(
    intermediate_size=64, conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    feat_proj_dropout=0.0, final_dropout=0.0, mask_time_prob=0.0,
)
CONFORMER = dict(hf_class="Wav2Vec2ConformerForCTC", conv_depthwise_kernel_size=3)
HF_CASES = {
    # name: arch overrides. "layer" feature extractors take the attention mask, so padding reaches attention.
    "wav2vec2-group-sdpa": dict(),
    "wav2vec2-sdpa": dict(feat_extract_norm="layer"),
    "wav2vec2-eager": dict(feat_extract_norm="layer", attn_implementation="eager"),
    "conformer-relative-sdpa": dict(CONFORMER, position_embeddings_type="relative", feat_extract_norm="layer"),
    "conformer-relative-eager": dict(CONFORMER, position_embeddings_type="relative", feat_extract_norm="layer",
                                     attn_implementation="eager"),
    "conformer-rotary-sdpa": dict(CONFORMER, position_embeddings_type="rotary", feat_extract_norm="layer"),
    "conformer-rotary-eager": dict(CONFORMER, position_embeddings_type="rotary", feat_extract_norm="layer",
                                   attn_implementation="eager"),
}
SB_ARCH = dict(csgu_linear_units=48, kernel_size=7, cnn_channels=(8, 8), dropout=0.0)
VOCAB = 11


def hf_cfg(**arch):
    return dict(family="hf_wav2vec2", source="unused", pretrained=False, d_model=32, num_heads=4, num_layers=2,
                arch={**TINY_HF, **arch})


def sb_cfg(**arch):
    return dict(family="speechbrain_branchformer", source="unused", pretrained=False, d_model=32, num_heads=4,
                num_layers=2, arch={**SB_ARCH, **arch})


ALL_CASES = {**{k: hf_cfg(**v) for k, v in HF_CASES.items()}, "branchformer": sb_cfg()}


def make(cfg, seed=0):
    torch.manual_seed(seed)
    backbone = build_backbone(cfg, VOCAB).eval()
    with torch.no_grad():  # SpeechBrain leaves the XL position biases near zero-ish; make every term count
        for _, _, original in backbone.attention_sites():
            for name in ("pos_bias_u", "pos_bias_v"):
                if hasattr(original, name):
                    getattr(original, name).normal_(0, 0.5)
    return backbone


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    waves = torch.randn(3, 8000, generator=g)
    lengths = torch.tensor([8000, 5900, 3300])
    waves[1, 5900:] = 0
    waves[2, 3300:] = 0
    return waves, lengths


# ------------------------------------------------------------------------------------------- module level


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_wrapped_mha_equals_original_module(case):
    """The original attention module vs the wrapped MHA variant, same call (captured from the model), <= 1e-5."""
    backbone = make(ALL_CASES[case])
    waves, lengths = batch()
    calls = []
    handles = [m.register_forward_pre_hook(lambda mod, a, kw: calls.append((mod, a, kw)), with_kwargs=True)
               for _, _, m in backbone.attention_sites()]
    with torch.no_grad():
        backbone(waves, lengths)
    for h in handles:
        h.remove()
    assert len(calls) == 2
    for original, args, kwargs in calls:
        wrapped = backbone.wrap(original_variants_of(backbone, original))
        with torch.no_grad():
            ref, _ = original(*args, **kwargs)
            out, weights = wrapped(*args, **kwargs)
        pad = backbone.variant_inputs(args, kwargs)["key_padding_mask"]
        err = relative_error(ref, out, pad)
        assert err <= 1e-5, f"{case}: relative error {err:.2e}"
        assert weights is None and out.shape == ref.shape
    if case != "wav2vec2-group-sdpa":  # the padding really reaches attention in these
        assert pad is not None and pad.any()


def original_variants_of(backbone, original):
    return MultiHeadAttention(backbone.to_canonical(original)).eval()


def test_speechbrain_quirks_matter():
    """Negative controls: each RelPosMHAXL quirk, done the naive way, breaks equality by far more than 1e-5."""
    backbone = make(ALL_CASES["branchformer"])
    inputs = capture_attention_calls(backbone, *batch()).inputs
    original = backbone.transformer.encoder.layers[0].mha_layer
    kw = inputs[0]
    with torch.no_grad():
        ref, _ = original(kw["x"], kw["x"], kw["x"], pos_embs=kw["pos"], key_padding_mask=kw["key_padding_mask"])
    good = backbone.to_canonical(original)
    h, d = good.num_heads, good.d_model
    naive_qkv = copy.copy(good)
    naive_qkv.q_weight, naive_qkv.k_weight, naive_qkv.v_weight = original.in_proj_weight.detach().chunk(3)
    naive_pos = copy.copy(good)
    naive_pos.pos_bias_u = original.pos_bias_u.detach().T.contiguous()
    naive_pos.pos_bias_v = original.pos_bias_v.detach().T.contiguous()
    naive_scale = copy.copy(good)
    naive_scale.scale = (d // h) ** -0.5
    errors = {}
    for name, canon in {"good": good, "chunk": naive_qkv, "transpose": naive_pos, "scale": naive_scale}.items():
        with torch.no_grad():
            out, _ = MultiHeadAttention(canon)(**kw)
        errors[name] = relative_error(ref, out, kw["key_padding_mask"])
    assert errors["good"] <= 1e-5
    for name in ("chunk", "transpose", "scale"):
        assert errors[name] > 1e-3, errors  # >= 100x the tolerance


# ------------------------------------------------------------------------------------------ whole-model level


def run(backbone):
    with torch.no_grad():
        return backbone(*batch())


def valid(log_probs, lengths):
    keep = torch.arange(log_probs.shape[1])[None] < lengths[:, None]
    return log_probs[keep]


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_patched_mha_model_equals_unpatched(case):
    backbone = make(ALL_CASES[case])
    ref, lengths = run(backbone)
    assert (lengths < ref.shape[1]).any(), "the batch must contain padding"
    params = sum(p.numel() for p in backbone.parameters())
    summary = patch_attention(backbone, {"name": "mha"})
    out, lengths2 = run(backbone)
    assert torch.equal(lengths, lengths2)
    err = relative_error(valid(ref, lengths), valid(out, lengths))
    assert err <= 1e-5, f"{case}: patched logits differ by {err:.2e}"
    assert summary["layers_replaced"] == 2
    assert summary["params_before"] == summary["params_after"] == params
    assert summary["cache_mib_per_1000_frames"] == pytest.approx(2 * 1000 * 2 * 32 * 4 / 2**20)
    assert all(type(v).__name__ == "MultiHeadAttention" for v in patched_variants(backbone))


def test_hf_mask_is_converted_once_per_forward_not_per_layer(spy):
    """The mask check is a host sync: the patched layers of one forward share one conversion, and the next
    forward (a new mask object) converts again."""
    from asr_attention.backbones import hf_attention
    calls = spy(hf_attention, "key_padding_from_hf")
    backbone = make(ALL_CASES["conformer-relative-sdpa"])
    ref, lengths = run(backbone)
    patch_attention(backbone, {"name": "mha"})
    out, _ = run(backbone)
    assert len(calls) == 1  # 2 layers, 1 conversion
    assert relative_error(valid(ref, lengths), valid(out, lengths)) <= 1e-5
    waves, lengths = batch(seed=2)
    lengths = torch.tensor([8000, 8000, 4000])  # other padding: a stale conversion would mask the wrong frames
    with torch.no_grad():
        patched, _ = backbone(waves, lengths)
    assert len(calls) == 2
    sharing = copy.deepcopy(backbone)  # a copy shares one converter among its own layers, not with the original
    keys = {id(m.key_padding) for m in sharing.modules() if hasattr(m, "key_padding") and m is not sharing}
    assert len(keys) == 1 and id(backbone.key_padding) not in keys
    unpatched = make(ALL_CASES["conformer-relative-sdpa"])
    with torch.no_grad():
        expected, _ = unpatched(waves, lengths)
    assert relative_error(valid(expected, lengths), valid(patched, lengths)) <= 1e-5


@pytest.mark.parametrize("case", ["conformer-relative-sdpa", "wav2vec2-eager"])
def test_patched_hf_model_runs_under_inference_mode(case):
    """Lightning validates and tests under torch.inference_mode, whose tensors (HF's masks among them) keep no
    version counter."""
    backbone = make(ALL_CASES[case])
    ref, lengths = run(backbone)
    patch_attention(backbone, {"name": "mha"})
    with torch.inference_mode():
        out, _ = backbone(*batch())
    assert relative_error(valid(ref, lengths), valid(out, lengths)) <= 1e-5


HOST_SYNCS = {"aten.equal.default", "aten._local_scalar_dense.default", "aten.nonzero.default",
              "aten.is_nonzero.default", "aten.masked_select.default"}


def host_syncs(backbone) -> int:
    """Ops in one forward that make a GPU wait for the host (counted on CPU, where they run the same way)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    count = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            count.append(str(func) in HOST_SYNCS)
            return func(*args, **(kwargs or {}))
    with torch.no_grad(), Count():
        backbone(*batch())
    return sum(count)


@pytest.mark.parametrize("case", ["wav2vec2-sdpa", "conformer-relative-sdpa", "conformer-rotary-sdpa", "branchformer"])
def test_patching_adds_at_most_one_host_sync_per_forward(case):
    """Batch-1 GPU forwards are launch-bound: a sync per layer would stall every layer. Three layers here, so
    a per-layer sync would add three."""
    cfg = copy.deepcopy(ALL_CASES[case])
    cfg["num_layers"] = 3
    backbone = make(cfg)
    native = host_syncs(backbone)
    patch_attention(backbone, {"name": "mla", "latent_dim": 16})
    assert host_syncs(backbone) <= native + 1


@pytest.mark.parametrize("case", ["wav2vec2-sdpa", "conformer-relative-sdpa", "conformer-rotary-eager", "branchformer"])
def test_gqa_full_heads_and_mla_full_rank_equal_original(case):
    backbone = make(ALL_CASES[case])
    ref, lengths = run(backbone)
    gqa = copy.deepcopy(backbone)
    summary = patch_attention(gqa, {"name": "gqa", "num_kv_heads": 4})
    assert relative_error(valid(ref, lengths), valid(run(gqa)[0], lengths)) <= 1e-5
    assert summary["cache_mib_per_1000_frames"] == pytest.approx(2 * 1000 * 2 * 32 * 4 / 2**20)
    mla = copy.deepcopy(backbone)
    summary = patch_attention(mla, {"name": "mla", "latent_dim": 32, "calibration": "plain"})
    assert relative_error(valid(ref, lengths), valid(run(mla)[0], lengths)) <= 1e-4
    per_frame = 2 if case == "conformer-rotary-eager" else 1  # rotary MLA keeps two latents
    assert summary["cache_mib_per_1000_frames"] == pytest.approx(2 * 1000 * per_frame * 32 * 4 / 2**20)


@pytest.mark.parametrize("case", ["conformer-relative-sdpa", "conformer-rotary-sdpa", "branchformer"])
def test_fidelity_against_the_original_modules_and_activation_aware_mla(case):
    """Captured calls of the unpatched model feed `fidelity`, whose reference is what the original modules returned:
    the MHA conversion is within 1e-5 of them, one that drops a term is not; activation-aware MLA (calibrated on the
    captured inputs of two batches) beats plain SVD per layer over both."""
    backbone = make(ALL_CASES[case])
    captured = [capture_attention_calls(backbone, *batch(seed)) for seed in (1, 2)]
    inputs, outputs, padding = captured[0]
    assert inputs[0]["x"].shape[-1] == 32 and inputs[0]["key_padding_mask"].any()
    assert torch.equal(padding[0], inputs[0]["key_padding_mask"])  # self-attention: padded rows are padded keys
    assert outputs[0].shape == inputs[0]["x"].shape
    mha = copy.deepcopy(backbone)
    patch_attention(mha, {"name": "mha"})
    assert max(r["relative_error"] for r in fidelity(patched_variants(mha), captured)) <= 1e-5
    broken = []  # each layer's own weights, with its position term (xl or rotary) dropped
    for _, _, original in backbone.attention_sites():
        canon = backbone.to_canonical(original)
        canon.position = "none"
        broken.append(MultiHeadAttention(canon).eval())
    assert min(r["relative_error"] for r in fidelity(broken, captured)) > 1e-3
    calibration = [torch.cat(layer) for layer in zip(*(calibration_batch(c) for c in captured))]
    frames = sum(int((~c.inputs[0]["key_padding_mask"]).sum()) for c in captured)
    assert calibration[0].shape == (frames, 32)
    plain, aware = copy.deepcopy(backbone), copy.deepcopy(backbone)
    patch_attention(plain, {"name": "mla", "latent_dim": 6, "calibration": "plain"})
    patch_attention(aware, {"name": "mla", "latent_dim": 6, "calibration": "activation"}, calibration=calibration)
    e_plain = [r["relative_error"] for r in fidelity(patched_variants(plain), captured)]
    e_aware = [r["relative_error"] for r in fidelity(patched_variants(aware), captured)]
    assert all(p > 1e-3 for p in e_plain)
    assert all(a <= p + 1e-6 for a, p in zip(e_aware, e_plain)), (e_aware, e_plain)


def test_activation_aware_mla_is_not_patched_without_calibration_data():
    """patch_attention called directly (bench paths, OursGreedy, API users) with no data: an error, not plain SVD."""
    backbone = make(ALL_CASES["branchformer"])
    with pytest.raises(ValueError, match="attention.calibration=activation needs calibration data"):
        patch_attention(backbone, {"name": "mla", "latent_dim": 8, "calibration": "activation"})


def test_whisper_decoder_padding_changes_neither_calibration_nor_fidelity():
    """Teacher forcing pads ragged targets (-100, read as <eot> inputs): those positions are no tokens. The
    calibration data (so the activation-aware factors) and the fidelity table over a padded batch equal those over
    its utterances one at a time, unpadded."""
    from test_whisper import D, LAYERS, audio, make as make_whisper, tokens

    backbone = make_whisper()
    backbone.select_sites("all")
    waves, lengths = audio()
    ids, ends = tokens(length=6), [6, 3, 1]
    ragged = ids.masked_fill(torch.arange(6) >= torch.tensor(ends)[:, None], -100)
    padded = capture_attention_calls(backbone, waves, lengths, ragged)
    alone = [capture_attention_calls(backbone, waves[i:i + 1], lengths[i:i + 1], ids[i:i + 1, :n])
             for i, n in enumerate(ends)]
    from_batch = calibration_batch(padded)
    from_alone = [torch.cat(layer) for layer in zip(*(calibration_batch(c) for c in alone))]
    kinds = [backbone.site_kind(parent, name) for parent, name, _ in backbone.attention_sites()]
    assert [len(c) for c, k in zip(from_batch, kinds) if k == "decoder_self"] == [sum(2 + n for n in ends)] * LAYERS
    for a, b in zip(from_batch, from_alone):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    cfg = {"name": "mla", "latent_dim": D // 4, "calibration": "activation", "sites": "all"}
    batch_mla, alone_mla = copy.deepcopy(backbone), copy.deepcopy(backbone)
    patch_attention(batch_mla, cfg, from_batch)
    patch_attention(alone_mla, cfg, from_alone)
    for a, b in zip(patched_variants(batch_mla), patched_variants(alone_mla)):  # up @ down: free of SVD signs
        assert torch.allclose(a.kv_up.weight @ a.kv_down.weight, b.kv_up.weight @ b.kv_down.weight, atol=1e-4)
    variants = [v.eval() for v in patched_variants(batch_mla)]
    on_batch = [r["relative_error"] for r in fidelity(variants, [padded])]
    assert on_batch == pytest.approx([r["relative_error"] for r in fidelity(variants, alone)], rel=1e-4)


@pytest.mark.parametrize("case", ["wav2vec2-sdpa", "conformer-relative-sdpa", "conformer-rotary-sdpa", "branchformer"])
@pytest.mark.parametrize("attention", [{"name": "native"}, {"name": "mla", "latent_dim": 8},
                                       {"name": "gqa", "num_kv_heads": 2},
                                       {"name": "linear", "feature_map": "hedgehog"}])
def test_gradients_reach_every_trainable_parameter(case, attention):
    """DDP (trainer=ddp) fails on a parameter that requires a gradient and gets none: every trainable parameter
    must get one, for every model and variant. What the original models never use is frozen at build."""
    backbone = make(ALL_CASES[case])
    if attention["name"] != "native":
        patch_attention(backbone, attention)
    backbone.train()
    log_probs, lengths = backbone(*batch())
    targets = torch.randint(1, VOCAB, (3, 4))
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, lengths, torch.full((3,), 4),
                                        blank=backbone.blank_id, zero_infinity=True)
    loss.backward()
    missing = [n for n, p in backbone.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing
    # (linear attention under xl positions freezes the position weights it cannot use itself)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad and ".variant." not in n}
    assert frozen == ({n for n, _ in backbone.named_parameters() if ".pos_conv_embed." in n}
                      if case.startswith("conformer") else set())  # built by HF's conformer, never called


def test_spec_augment_embedding_is_frozen_only_without_time_masking():
    feature_masking_only = make(hf_cfg(mask_feature_prob=0.1))
    assert not feature_masking_only.model.wav2vec2.masked_spec_embed.requires_grad  # built, never used
    time_masking = make(hf_cfg(mask_time_prob=0.05, mask_time_length=2))
    assert time_masking.model.wav2vec2.masked_spec_embed.requires_grad


# -------------------------------------------------------------------------------------------- loading / errors


def test_unknown_hf_position_type_raises():
    with pytest.raises(ValueError, match="position_embeddings_type='alibi'"):
        build_backbone(hf_cfg(**CONFORMER, position_embeddings_type="alibi"), VOCAB)


def test_hf_local_dir_round_trip_and_config_mismatch(tmp_path):
    backbone = make(ALL_CASES["conformer-relative-sdpa"])
    backbone.model.save_pretrained(tmp_path)
    cfg = dict(ALL_CASES["conformer-relative-sdpa"], pretrained=True, source=str(tmp_path),
               arch={"hf_class": "Wav2Vec2ConformerForCTC"})
    loaded = build_backbone(cfg).eval()
    assert loaded.vocab_size == VOCAB
    assert torch.equal(run(backbone)[0], run(loaded)[0])
    with pytest.raises(ValueError) as err:
        build_backbone(dict(cfg, d_model=64, num_layers=3))
    msg = str(err.value)
    assert "model.d_model=64" in msg and "hidden_size=32" in msg
    assert "model.num_layers=3" in msg and "num_hidden_layers=2" in msg and str(tmp_path) in msg
    half_dir = tmp_path / "fp16"
    backbone.model.half().save_pretrained(half_dir)
    loaded = build_backbone(dict(cfg, source=str(half_dir)))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_hub_id_offline_fails_fast_with_alternatives(tmp_path):
    """In a fresh process with HF_HUB_OFFLINE=1 and an empty cache: fails without opening a connection (the hub
    client's ~23 s of retries are what make it slow), naming the fixes."""
    code = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError('a network connection was attempted')\n"
        "socket.getaddrinfo = socket.socket.connect = socket.socket.connect_ex = refuse\n"
        "from asr_attention.backbones import build_backbone\n"
        "import asr_attention.backbones.hf_wav2vec2, asr_attention.backbones.speechbrain_branchformer\n"
        "for fam in ('hf_wav2vec2', 'speechbrain_branchformer'):\n"
        "    try:\n"
        "        build_backbone(dict(family=fam, source='facebook/not-a-real-model-xyz', pretrained=True,"
        " d_model=1024, num_heads=16, num_layers=24))\n"
        "    except OSError as e:\n"
        "        print('ERR', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    errors = [line.split(" ", 1)[1] for line in res.stdout.splitlines() if line.startswith("ERR")]
    assert len(errors) == 2, res.stdout + res.stderr
    for message in errors:
        assert "HF_HUB_OFFLINE" in message and "local checkpoint directory" in message
        assert "experiment=demo" in message


def test_speechbrain_local_dir_round_trip(tmp_path):
    backbone = make(ALL_CASES["branchformer"])
    backbone.normalize.mean.normal_()
    backbone.normalize.std.uniform_(0.5, 2.0)
    backbone.save_speechbrain(tmp_path)
    import sentencepiece as spm

    (tmp_path / "text.txt").write_text("\n".join(["abc dab cad", "bad cab dad", "add bca"] * 20))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "text.txt"), model_prefix=str(tmp_path / "tok"),
                                   vocab_size=VOCAB, model_type="unigram", minloglevel=2)
    (tmp_path / "tok.model").rename(tmp_path / "tokenizer.ckpt")
    # the recipe's checkpoint also holds the attention decoder: the loader must drop it
    state = torch.load(tmp_path / "asr.ckpt")
    state["1.decoder.layers.0.self_attn.att.in_proj_weight"] = torch.zeros(96, 32)
    torch.save(state, tmp_path / "asr.ckpt")

    cfg = dict(ALL_CASES["branchformer"], pretrained=True, source=str(tmp_path), arch={"dropout": 0.0})
    loaded = build_backbone(cfg).eval()
    assert loaded.sizes["csgu_linear_units"] == 48 and loaded.sizes["kernel_size"] == 7  # read from the checkpoint
    assert len(loaded.vocab) == VOCAB and loaded.blank_id == 0
    assert torch.equal(run(backbone)[0], run(loaded)[0])
    with pytest.raises(ValueError) as err:
        build_backbone(dict(cfg, num_heads=8))
    assert "model.num_heads=8" in str(err.value) and "nhead=4" in str(err.value)
    with pytest.raises(FileNotFoundError, match="asr.ckpt"):
        (tmp_path / "empty").mkdir()
        build_backbone(dict(cfg, source=str(tmp_path / "empty")))


def test_unknown_family():
    with pytest.raises(ValueError, match="model.family='nemo'"):
        build_backbone({"family": "nemo"})


def test_wave_normalisation_matches_the_hf_feature_extractor():
    import numpy as np
    from transformers import Wav2Vec2FeatureExtractor

    from asr_attention.backbones.hf_wav2vec2 import zero_mean_unit_var

    waves = torch.randn(2, 100) * 0.1 + 0.3
    lengths = torch.tensor([100, 60])
    waves[1, 60:] = 0
    ours = zero_mean_unit_var(waves, lengths)
    mask = (torch.arange(100)[None] < lengths[:, None]).int().numpy()
    ref = Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm([w.numpy() for w in waves], mask, padding_value=0.0)
    for i in range(2):
        assert np.abs(ours[i].numpy() - ref[i]).max() < 1e-5


def test_fp32_stays_fp32_after_speechbrain_is_imported():
    """SpeechBrain turns TF32 matmuls on at import; importing asr_attention first keeps torch's default."""
    check = "import torch, speechbrain; print(torch.backends.cuda.matmul.allow_tf32)"
    env = {k: v for k, v in os.environ.items() if k != "SB_DISABLE_QUIRKS"}
    alone = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, check=True)
    ours = subprocess.run([sys.executable, "-c", "import asr_attention; " + check], capture_output=True, text=True,
                          env=env, check=True)
    assert alone.stdout.split()[-1] == "True"  # the quirk this guards against
    assert ours.stdout.split()[-1] == "False"
