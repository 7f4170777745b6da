"""The analytic FLOP counts beside the GPU layer timings (the timings themselves need a GPU)."""

from asr_attention.bench.layers import layer_flops

B, T, D, H = 16, 1000, 1024, 16


def test_mha_is_four_projections_and_two_attention_matmuls():
    projections = 4 * 2 * B * T * D * D
    attention = 2 * 2 * B * H * T * T * (D // H)
    assert layer_flops({"name": "mha"}, B, T, D, H) == projections + attention == 199_753_728_000


def test_gqa_with_all_heads_and_full_rank_mla_cost_what_mha_costs():
    mha = layer_flops({"name": "mha"}, B, T, D, H)
    assert layer_flops({"name": "gqa", "num_kv_heads": H}, B, T, D, H) == mha
    assert layer_flops({"name": "mla", "latent_dim": D}, B, T, D, H) == mha  # merged map for inference


def test_narrow_variants_cost_less_and_linear_is_linear_in_frames():
    mha = layer_flops({"name": "mha"}, B, T, D, H)
    assert layer_flops({"name": "gqa", "num_kv_heads": 2}, B, T, D, H) < 0.75 * mha
    assert layer_flops({"name": "mla", "latent_dim": D // 4}, B, T, D, H) < 0.8 * mha
    linear = [layer_flops({"name": "linear"}, 1, t, D, H) for t in (1000, 2000)]
    assert linear[1] == 2 * linear[0]


def test_absorbed_cached_mla_step_counts_latent_space_attention():
    cfg = {"name": "mla", "latent_dim": 256}
    absorbed = layer_flops(cfg, B, 40, D, H, s=1040, absorbed=True)
    up = layer_flops(cfg, B, 40, D, H, s=1040, absorbed=False)
    assert absorbed < up
    # the latent attention term alone: scores and weighted sum over r = 256 for every head
    assert absorbed > 2 * 2 * B * H * 40 * 1040 * 256
