"""Generation benchmark (issue 15) on CPU: the HBM-bound arithmetic against Whisper's published sizes, our MHA
decoder emitting exactly transformers' tokens on the same weights, and the command end to end on a tiny size."""

import json

import pytest
import torch

from asr_attention.bench import generate, generate_report
from asr_attention.generation.decoders import HFGenerate, OursGreedy, OursStatic
from asr_attention.generation.step_bytes import (
    decoder_weight_bytes, limit_tokens_per_s, mean_step_bytes, mha_cache_bytes,
)
from asr_attention.generation.whisper_sizes import random_whisper, whisper_config

MIB = 2**20


def test_large_v3_step_bytes_and_limit():
    """large-v3 (d 1280, 32 decoder layers, vocab 51866), bf16, batch 64, 1500 frames: cross K/V 15,000 MiB (as
    measured from transformers' cache on the H200); decoder weights ~1.8 GB; limit <= ~15,000 tokens/s."""
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(whisper_config("large-v3")).to(torch.bfloat16)
    d, layers, vocab = 1280, 32, 51866
    # per layer: 2 attentions (4 d^2 weights, q/v/o biases) + fc1/fc2 (8 d^2, 5 d) + 3 layer norms; + embedding, final LN
    per_layer = 2 * (4 * d * d + 3 * d) + 8 * d * d + 5 * d + 3 * 2 * d
    weights = decoder_weight_bytes(model.model.decoder)
    assert weights == 2 * (layers * per_layer + vocab * d + 2 * d)
    assert 1.80e9 < weights < 1.82e9
    caches = mha_cache_bytes(d, layers, 64, 129, 1500, 2)
    assert caches["cross"] == 15_000 * MIB and caches["decoder_self"] == 1_290 * MIB
    step = mean_step_bytes(weights, lambda t: mha_cache_bytes(d, layers, 64, t, 1500, 2), 2, 128)
    # self K/V read at 2 .. 129 tokens cached: the mean is 65.5 tokens' worth
    assert step == pytest.approx(weights + 15_000 * MIB + 65.5 * 10 * MIB)
    assert 14_000 < limit_tokens_per_s(64, step) < 15_500


def test_ours_mha_emits_transformers_tokens():
    """Same random weights (fp32), batch 3, 12 forced tokens: our decoder (MHA variants of the same weights, our
    caches) emits exactly the tokens of transformers' generate, with its dynamic and its static cache."""
    model = random_whisper("test", torch.device("cpu"), torch.float32, init_std=0.3)
    memory = torch.randn(3, 1500, model.config.d_model, generator=torch.Generator().manual_seed(1))
    ours = OursGreedy(model, None)(memory, 12)
    assert ours.shape == (3, 12) and ours.unique().numel() > 6  # varied tokens: the comparison means something
    for cache in ("dynamic", "static"):
        assert torch.equal(HFGenerate(model, cache, 12)(memory, 12).cpu(), ours), cache


def test_cache_bytes_measured_equal_analytic():
    model = random_whisper("test", torch.device("cpu"), torch.bfloat16, init_std=0.3)
    memory = torch.randn(2, 1500, model.config.d_model, dtype=torch.bfloat16)
    for decoder in (HFGenerate(model, "dynamic", 5), HFGenerate(model, "static", 5), OursGreedy(model, None)):
        decoder(memory, 5)
        measured = decoder.cache_nbytes()
        assert measured == decoder.cache_bytes(2, 2 + 5 - 1, 1500)
        # 2 layers x K and V x batch 2 x d 64 x bf16
        assert measured["cross"] == 2 * 2 * 2 * 1500 * 64 * 2


def test_cross_layers_sharing_the_encoder_output_store_it_once_and_each_read_it():
    """attention.cross_latent=memory at the cross sites (decoder self-attention left MHA): transformers' tokens (it
    is exact), the cache measured = analytic = one d-wide tensor, and the HBM-bound arithmetic counts one read of it
    per cross layer."""
    model = random_whisper("test", torch.device("cpu"), torch.float32, init_std=0.3)
    d, layers = model.config.d_model, model.config.decoder_layers
    memory = torch.randn(2, 1500, d, generator=torch.Generator().manual_seed(1))
    shared = OursGreedy(model, {"name": "mla", "latent_dim": d, "cross_latent": "memory"}, sites=("cross",))
    tokens = shared(memory, 8)
    assert torch.equal(tokens, HFGenerate(model, "dynamic", 8)(memory, 8).cpu()) and tokens.unique().numel() > 4
    stored, read = shared.cache_bytes(2, 2 + 8 - 1, 1500), shared.cache_bytes(2, 2 + 8 - 1, 1500, read=True)
    assert shared.cache_nbytes() == stored and stored["cross"] == 2 * 1500 * d * 4
    assert read == {"decoder_self": stored["decoder_self"], "cross": layers * stored["cross"]}


def test_generate_command_on_cpu(tmp_path):
    """Both baselines and each variant (growing and preallocated caches) at batch 2, a max-batch search capped at
    4; files written; cache ratios exact."""
    out = tmp_path / "gen"
    decoders = ["hf-static", "hf-dynamic", "mha", "mla", "mla-graph", "gqa", "linear-graph", "mla-self"]
    generate.main(["--sizes", "test", "--device", "cpu", "--batches", "2", "--decoders", *decoders,
                   "--max-batch", "mla", "--max-start", "2", "--max-limit", "4", "--new-tokens", "4",
                   "--repeats", "1", "--memory-batch", "1", "--init-std", "0.3", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").stat().st_size > 0
    assert data["meta"]["card"] == "cpu" and data["meta"]["new_tokens"] == 4
    rows = {(r["decoder"], r["batch"]): r for r in data["rows"]}
    assert len(rows) == len(decoders)
    for key, r in rows.items():
        assert "error" not in r, (key, r.get("error"))
        assert r["tokens_per_s"] > 0 and r["ttft_ms"] > 0 and 0 < r["limit_fraction"]
        assert r["cache_measured"] == r["cache_analytic"], key
    mha = rows[("hf-dynamic", 2)]["cache_measured"]
    for name, self_x, cross_x in (("mha", 1, 1), ("mla", 1 / 8, 1 / 8), ("gqa", 1 / 2, 1 / 2),
                                  ("mla-self", 1 / 8, 1)):  # r = d/4 against K+V = 2d; 2 of 4 KV heads
        for decoder in (name, f"{name}-graph"):  # the preallocated slots hold exactly the tokens fed
            if decoder in decoders:
                got = rows[(decoder, 2)]["cache_measured"]
                assert got["decoder_self"] == mha["decoder_self"] * self_x, decoder
                assert got["cross"] == mha["cross"] * cross_x, decoder
    # linear: a state per site and batch row, H x hd x (hd + 1), whatever the length: 2 sites x 2 layers x batch 2
    assert sum(rows[("linear-graph", 2)]["cache_measured"].values()) == 2 * 2 * 2 * 4 * 16 * 17 * 2
    assert rows[("mla-graph", 2)]["cuda_graph"] is False  # on CPU the static path runs eagerly
    searched = {m["decoder"]: m for m in data["max_batch"]}
    assert searched["mla"]["max_batch"] == 4 and [p["batch"] for p in searched["mla"]["probes"]] == [2, 4]
    assert "| test | mla | 2 |" in out.with_suffix(".md").read_text()


def test_every_variant_has_a_graph_and_a_compiled_decoder():
    assert {f"{v}-{how}" for v in generate.VARIANTS for how in ("graph", "compiled")} <= set(generate.DECODERS)
    model = random_whisper("test", torch.device("cpu"), torch.float32)
    graph, compiled = (generate.build_decoder(f"mla-{how}", model, 4) for how in ("graph", "compiled"))
    assert isinstance(graph, OursStatic) and isinstance(compiled, OursStatic)
    assert (graph.compile, compiled.compile) == (False, True)


def test_plot_lines_tell_baseline_growing_graph_and_compiled_apart():
    assert [generate_report.line_of(n) for n in ("hf-static", "mla", "mla-graph", "mla-self-compiled")] == [
        ("hf-static", "--"), ("mla", ":"), ("mla", "-"), ("mla-self", "-.")]


def test_max_batch_search_doubles_then_bisects(tmp_path, monkeypatch):
    """Against a card where up to 37 rows fit: 2, 4 ... 32 fit, 64 does not, bisection ends on 37 (to 1 row)."""
    args = generate.parse_args(["--device", "cpu", "--max-start", "2", "--max-resolution", "0", "--out",
                                str(tmp_path / "m")])
    args.command_line = "test"
    bench = generate.Bench(args)
    monkeypatch.setattr(bench, "fits", lambda decoder, memory, batch: (batch <= 37, 1000.0 if batch <= 37 else None))
    row = bench.max_batch("test", "mla", None, None)
    probes = [p["batch"] for p in row["probes"]]
    assert probes[:6] == [2, 4, 8, 16, 32, 64] and row["max_batch"] == 37 and row["resolution"] == 1
    assert [p["batch"] for p in row["probes"] if not p["fits"]][-1] == 38


def test_budget_stops_the_run_and_keeps_the_files(tmp_path):
    out = tmp_path / "gen"
    data = generate.main(["--sizes", "test", "--device", "cpu", "--decoders", "hf-dynamic", "--batches", "1",
                          "--max-batch", "--budget", "0", "--repeats", "1", "--memory-batch", "1", "--out", str(out)])
    assert data["rows"] == [] and "time budget" in data["meta"]["stopped"]
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["stopped"] == data["meta"]["stopped"]
    assert "stopped early" in out.with_suffix(".md").read_text()


def test_step_profile_groups_the_kernels_it_saw_on_the_h200():
    """Kernel names as torch.profiler reported them for large-v3 decode steps (benchmarks/generate/step_profile_*)."""
    from asr_attention.bench.step_profile import group

    assert group("cudnn_generated_fort_native_sdpa_sm80_flash_fprop_wmma_f16_knob_35_16x128x64") == "attention"
    assert group("void (anonymous namespace)::softmax_warp_forward<float, float, float, 11, false, false>") == "attention"
    assert group("nvjet_sm90_tst_64x16_64x16_2x4_h_bz_bias_TNT") == "gemm"
    assert group("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_bf16_256x64_32x4_nn_align2>") == "gemm"
    assert group("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16>") == "other"
    assert group("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>") == "other"
    # inductor (the "-compiled" decoders): a matmul template is a GEMM, its fused elementwise kernels are not
    assert group("triton_tem_fused_addmm_3") == "gemm" and group("triton_tem_fused_bmm_0") == "gemm"
    assert group("triton_poi_fused_add_native_layer_norm_5") == "other"
    assert group("triton_red_fused__softmax_2") == "attention"
    assert group("triton_tem_fused_flex_attention_0") == "attention"


def test_step_profile_keeps_the_decode_steps_alone():
    """The prompt step's kernels (every cross cache built from the encoder output) are in both calls and cancel;
    the longer call's extra kernels are split over its extra steps."""
    from collections import Counter

    from asr_attention.bench.step_profile import per_decode_step

    short = Counter({"cross_cache_gemm": 26.0, "decode_gemm": 1.0, "flash": 0.5})
    long = Counter({"cross_cache_gemm": 25.9, "decode_gemm": 17.0, "flash": 8.5, "argmax": 1.6})
    assert per_decode_step(long, short, 16) == {"cross_cache_gemm": 0.0, "decode_gemm": 1.0, "flash": 0.5,
                                                "argmax": 0.1}
