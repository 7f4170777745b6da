"""The KV-cache report reproduces the seed's figures exactly and scales as the arithmetic says."""

import pytest
import torch

from asr_attention.reports.kv_cache import report, torch_dtype

# MiB (2^20 B), 1000 frames, batch 1, fp32, all layers: MHA, MLA (latent = d_model), GQA (2 KV heads),
# linear (elu: state H*hd*hd + normaliser H*hd per layer).
SEED_MIB = {
    "conformer": {"mha": 187.5, "mla": 93.75, "gqa": 23.4375, "linear": 6.0 + 0.09375},
    "branchformer": {"mha": 70.3125, "mla": 35.15625, "gqa": 17.578125, "linear": 2.25 + 0.03515625},
}


def table(stdout: str) -> list[dict[str, float]]:
    """The printed tables, one {attention: MiB} per model; a `*` marks the composed attention."""
    tables = []
    for line in stdout.splitlines():
        if line.startswith("KV cache"):
            tables.append({})
        words = line.split()
        if tables and words and words[0].lstrip("*") in ("mha", "mla", "gqa", "linear"):
            tables[-1][words[0]] = float(words[-2])
    return tables


def mib(compose_cfg, *overrides):
    return {r.attention: r.mib for r in report(compose_cfg("kv_cache", list(overrides)))}


@pytest.mark.parametrize("model", SEED_MIB)
def test_seed_figures_exactly(compose_cfg, model):
    assert mib(compose_cfg, f"model={model}") == SEED_MIB[model]


def test_cli_prints_seed_table_and_marks_composed_attention(run_module):
    out = run_module("asr_attention.reports.kv_cache", "model=branchformer", "attention=gqa").stdout
    assert table(out) == [{"mha": 70.3125, "mla": 35.15625, "*gqa": 17.578125, "linear": 2.28515625}]


def test_cli_multirun_prints_one_table_per_model(run_module, tmp_path):
    out = run_module("asr_attention.reports.kv_cache", "-m", "model=conformer,branchformer",
                     f"hydra.sweep.dir={tmp_path}").stdout
    assert table(out) == [
        {"*mha": 187.5, "mla": 93.75, "gqa": 23.4375, "linear": 6.09375},
        {"*mha": 70.3125, "mla": 35.15625, "gqa": 17.578125, "linear": 2.28515625},
    ]


@pytest.mark.parametrize("model", SEED_MIB)
def test_frames_scale_caches_but_not_the_linear_state(compose_cfg, model):
    seed = SEED_MIB[model]
    doubled = mib(compose_cfg, f"model={model}", "frames=2000")
    assert doubled == {"mha": 2 * seed["mha"], "mla": 2 * seed["mla"], "gqa": 2 * seed["gqa"], "linear": seed["linear"]}


@pytest.mark.parametrize("model", SEED_MIB)
def test_bfloat16_halves_and_batch_multiplies_everything(compose_cfg, model):
    seed = SEED_MIB[model]
    assert mib(compose_cfg, f"model={model}", "dtype=bfloat16") == {k: v / 2 for k, v in seed.items()}
    assert mib(compose_cfg, f"model={model}", "batch=4") == {k: 4 * v for k, v in seed.items()}


def test_composed_attention_options_replace_their_row(compose_cfg):
    assert mib(compose_cfg, "attention=mla", "attention.latent_dim=256")["mla"] == 23.4375  # 24*1000*256*4 B
    # sizes need no calibration data: an activation-aware MLA's cache is plain SVD's
    assert mib(compose_cfg, "attention=mla", "attention.latent_dim=256", "attention.calibration=activation")["mla"] \
        == 23.4375
    assert mib(compose_cfg, "model=branchformer", "attention=gqa", "attention.num_kv_heads=4")["gqa"] == 35.15625
    assert mib(compose_cfg, "model=branchformer", "attention=gqa", "attention.num_kv_heads=8")["gqa"] == 70.3125
    # hedgehog features are 2*hd wide: twice the elu state and normaliser
    assert mib(compose_cfg, "attention=linear", "attention.feature_map=hedgehog")["linear"] == 12.1875


@pytest.mark.parametrize("overrides,message", [
    (["dtype=int8"], "dtype='int8' is not allowed"),
    (["dtype=float33"], "dtype='float33' is not allowed"),
    (["frames=0"], "frames=0 is not allowed"),
    (["batch=-1"], "batch=-1 is not allowed"),
    (["attention=gqa", "attention.num_kv_heads=5"], "attention.num_kv_heads=5 is not allowed"),
])
def test_bad_report_settings_fail_naming_the_field(compose_cfg, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        report(compose_cfg("kv_cache", overrides))


def test_dtype_names_map_to_torch():
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("float64") is torch.float64


def test_native_attention_reports_as_mha(compose_cfg):
    rows = report(compose_cfg("kv_cache", ["attention=native"]))
    assert [(r.attention, r.chosen) for r in rows] == [("mha", True), ("gqa", False), ("mla", False), ("linear", False)]
    assert rows[0].mib == 187.5


def test_whisper_base_decoder_caches_per_token_and_per_window(run_module):
    """model=whisper_base (d 512, 8 heads, 6 decoder layers), fp32, batch 1: decoder self-attention per token and
    cross-attention per 30-s window (1500 encoder frames), all layers, as the arithmetic says: MHA keeps K and V
    (2d), MLA at r = d/4 its latent (r), GQA with 2 of 8 K/V heads 2 x 2 x head_dim."""
    d, heads, layers, fp32, window = 512, 8, 6, 4, 1500
    per_token = {"mha": 2 * layers * d * fp32, "*mla": layers * (d // 4) * fp32,
                 "gqa": 2 * layers * 2 * (d // heads) * fp32}
    out = run_module("asr_attention.reports.kv_cache", "model=whisper_base", "attention=mla",
                     f"attention.latent_dim={d // 4}", f"frames={window}").stdout
    assert "model=whisper-base: 6 + 6 layers, d_model=512, 8 heads" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["mha"], ["*mla"], ["gqa"])}
    for name, token_bytes in per_token.items():
        numbers = [int(w) for w in rows[name].split() if w.isdigit()]
        assert numbers == [token_bytes, 50 * token_bytes, window * token_bytes], name  # per token, second, window
    assert per_token["*mla"] / per_token["mha"] == 0.125 and per_token["gqa"] / per_token["mha"] == 0.25
