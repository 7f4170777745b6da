"""The benchmark command on tiny random models on CPU: results.json has positive RTFx, ratios against native
measured in the same run, and measured cache bytes equal to the analytic figure."""

import json

import pytest

TINY = {
    "conformer_relpos": [
        "model.d_model=32", "model.num_heads=4", "model.num_layers=2", "model.position=xl",
        "++model.arch.hf_class=Wav2Vec2ConformerForCTC", "++model.arch.position_embeddings_type=relative",
        "++model.arch.intermediate_size=64", "++model.arch.conv_dim=[16,16,16,16,16,16,16]",
        "++model.arch.num_conv_pos_embeddings=16", "++model.arch.conv_depthwise_kernel_size=3",
    ],
    "branchformer": [
        "model=branchformer", "model.d_model=32", "model.num_heads=4", "model.num_layers=2",
        "++model.arch.csgu_linear_units=64", "++model.arch.kernel_size=3", "++model.arch.cnn_channels=[8,8]",
        "++model.arch.vocab_size=10",
    ],
}
FAST = ["device=cpu", "seconds=1", "batches=[2,1]", "dtypes=[fp32,bf16]", "long_seconds=2", "warmup=1", "repeats=2",
        "min_seconds=0", "relpos_batch=2", "relpos_frames=25"]


@pytest.mark.parametrize("model", TINY)
def test_bench_tiny_cpu(run_module, tmp_path, model):
    out = tmp_path / model
    run_module("asr_attention.bench", *TINY[model], *FAST, "attention=mha", "variants=[mha,gqa]",
               f"hydra.run.dir={out}")
    data = json.loads((out / "results.json").read_text())
    assert (out / "results.md").exists()
    rows, long_rows = data["rows"], data["long"]
    assert {r["variant"] for r in rows} == {"native", "mha", "gqa"}
    assert len(rows) == 3 * 4 and len(long_rows) == 3
    for r in rows + long_rows:
        assert r["rtfx"] > 0 and r["ms"] > 0 and r["attn_ms"] > 0
        assert r["rtfx_x"] > 0 and r["attn_x"] > 0
        if r["variant"] == "native":
            assert r["rtfx_x"] == 1.0 and "native_ms_paired" not in r
        else:  # timed in alternation with native: the ratio comes from that pair, not native's own row
            assert r["native_ms_paired"] > 0 and r["rtfx_x"] == pytest.approx(r["native_ms_paired"] / r["ms"])
    assert {(r["batch"], r["dtype"]) for r in rows} == {(2, "fp32"), (2, "bf16"), (1, "fp32"), (1, "bf16")}
    assert long_rows[0]["frames"] > rows[0]["frames"]
    for name, c in data["cache"].items():
        assert c["measured_bytes"] == c["analytic_bytes"] > 0, name
    # K and V of d = 32 per frame, 2 layers, fp32, batch 1; GQA keeps 2 of 4 heads. Native caches nothing itself:
    # its row is what MHA, its exact re-expression, caches.
    mha = data["cache"]["mha"]
    assert mha["measured_bytes"] == 2 * 32 * mha["frames"] * 1 * 2 * 4 and mha["batch"] == 1 and mha["layers"] == 2
    assert data["cache"]["gqa"]["measured_bytes"] * 2 == mha["measured_bytes"]
    assert data["cache"]["native"]["measured_bytes"] == mha["measured_bytes"]
    # both models have relative-position attention: the native-module-alone vs fused-path row is there
    assert [r["dtype"] for r in data["relpos"]] == ["fp32", "bf16"]
    assert all(r["speedup"] > 0 and r["frames"] == 25 for r in data["relpos"])


def test_suite_report_merges_runs(run_module, tmp_path):
    out = tmp_path / "run"
    run_module("asr_attention.bench", *TINY["branchformer"], *FAST, "attention=linear", "long_seconds=null",
               "relpos=false", f"hydra.run.dir={out}")
    run_module("asr_attention.bench.report", "--out", str(tmp_path / "gpu_{card}"), str(out / "results.json"))
    merged = json.loads((tmp_path / "gpu_cpu.json").read_text())
    assert merged["meta"]["card"] == "cpu" and len(merged["runs"]) == 1
    assert "| linear |" in (tmp_path / "gpu_cpu.md").read_text()


def test_eager_timing_samples_at_least_min_seconds():
    import time

    import torch

    from asr_attention.bench.measure import eager_ms
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.002)
    ms = eager_ms(work, torch.device("cpu"), warmup=0, repeats=2, min_seconds=0.04)
    assert ms >= 2.0 and len(calls) >= 15  # 40 ms of 2 ms calls, not just the 2 repeats
    calls.clear()
    eager_ms(work, torch.device("cpu"), warmup=0, repeats=3)
    assert len(calls) == 3


def test_interleaved_timing_alternates_and_times_each_function():
    import time

    import torch

    from asr_attention.bench.measure import interleaved_ms
    order = []

    def fast():
        order.append("f")

    def slow():
        order.append("s")
        time.sleep(0.003)
    fast_ms, slow_ms = interleaved_ms([fast, slow], torch.device("cpu"), warmup=1, repeats=4)
    assert order == ["f", "s"] * 5  # one warmup round, then 4 alternating pairs
    assert slow_ms >= 3.0 > fast_ms
