"""Variant-level behaviour: conversions keep the weights' function, caches are exactly what cache_bytes says."""

import pytest
import torch

from asr_attention.attention import build_attention, cache_nbytes, random_mha, relative_error
from asr_attention.attention.mla import MultiHeadLatentAttention

D, H, T = 64, 4, 12
POSITIONS = ["none", "xl", "rotary_input"]
CONFIGS = {
    "mha": {"name": "mha"},
    "gqa": {"name": "gqa", "num_kv_heads": 2},
    "mla": {"name": "mla", "latent_dim": 16},
    "linear": {"name": "linear", "feature_map": "elu"},
}


def inputs(position, batch=3, t=T, seed=1, d=D, h=H):
    """x: (batch, t, d); a key-padding mask; pos as the position scheme takes it (None, XL embeddings, rotary
    cos/sin)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, t, d, generator=g)
    pad = torch.zeros(batch, t, dtype=torch.bool)
    pad[1 % batch, t - 4 :] = True
    pad[2 % batch, t - 1 :] = True
    pos = None
    if position == "xl":
        pos = torch.randn(1, 2 * t - 1, d, generator=g)
    elif position == "rotary_input":
        angles = torch.arange(t)[:, None] * torch.rand(d // h // 2, generator=g).repeat(2)[None]
        pos = torch.stack((angles.cos(), angles.sin()))
    return x, pad, pos


def reference(position):
    mha = random_mha(D, H, position)
    return mha, build_attention({"name": "mha"}, mha)


@pytest.mark.parametrize("position", POSITIONS)
def test_gqa_with_all_heads_equals_mha(position):
    mha, ref = reference(position)
    x, pad, pos = inputs(position)
    gqa = build_attention({"name": "gqa", "num_kv_heads": H}, mha)
    assert relative_error(ref(x, pad, pos)[0], gqa(x, pad, pos)[0], pad) <= 1e-6


@pytest.mark.parametrize("position", POSITIONS)
def test_mla_at_full_rank_equals_mha(position):
    mha, ref = reference(position)
    x, pad, pos = inputs(position)
    mla = build_attention({"name": "mla", "latent_dim": D}, mha)
    assert relative_error(ref(x, pad, pos)[0], mla(x, pad, pos)[0], pad) <= 1e-4


@pytest.mark.parametrize("position", POSITIONS)
def test_mla_error_falls_as_latent_grows(position):
    mha, ref = reference(position)
    x, pad, pos = inputs(position)
    y = ref(x, pad, pos)[0]
    errors = [
        relative_error(y, build_attention({"name": "mla", "latent_dim": r}, mha)(x, pad, pos)[0], pad)
        for r in (4, 8, 16, 32, 48, 64)
    ]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] <= 1e-4 and errors[0] > 0.1


def anisotropic_activations(n, seed=3):
    """Activations with a few dominant directions, as real hidden states have; where whitening pays off."""
    basis = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0]
    scales = torch.logspace(1, -2, D)
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * scales @ basis.T


@pytest.mark.parametrize("rank", [4, 8, 16, 32])
def test_activation_aware_svd_beats_plain_svd(rank):
    mha, ref = reference("none")
    calib = anisotropic_activations(512)
    x = anisotropic_activations(3 * T, seed=4).view(3, T, D)
    y = ref(x)[0]
    plain = build_attention({"name": "mla", "latent_dim": rank}, mha)
    aware = build_attention({"name": "mla", "latent_dim": rank, "calibration": "activation"}, mha, calib)
    plain_err, aware_err = relative_error(y, plain(x)[0]), relative_error(y, aware(x)[0])
    assert aware_err <= plain_err, (aware_err, plain_err)


def test_activation_aware_at_full_rank_is_exact():
    mha, ref = reference("none")
    x, pad, _ = inputs("none")
    aware = build_attention({"name": "mla", "latent_dim": D, "calibration": "activation"}, mha, x.view(-1, D))
    assert relative_error(ref(x, pad)[0], aware(x, pad)[0], pad) <= 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("position", ["none", "rotary_input"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measured_cache_bytes_equal_analytic(name, position, dtype):
    mha, _ = reference(position)
    layer = build_attention(CONFIGS[name], mha).to(dtype)
    batch, frames = 2, 10
    x, _, pos = inputs(position, batch=batch, t=frames)
    _, cache = layer(x.to(dtype), pos=None if pos is None else pos.to(dtype), use_cache=True)
    assert cache_nbytes(cache) == layer.cache_bytes(frames, batch, dtype)


def test_cache_bytes_grow_with_frames_except_linear():
    mha, _ = reference("none")
    for name, cfg in CONFIGS.items():
        layer = build_attention(cfg, mha)
        one, two = layer.cache_bytes(100, 1, torch.float32), layer.cache_bytes(200, 1, torch.float32)
        assert two == (one if name == "linear" else 2 * one), name


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("position", ["none", "rotary_input"])
def test_last_chunk_over_cache_equals_full_sequence(name, position):
    """Streaming: a chunk attends to the cache plus itself, so the last chunk sees the whole sequence."""
    mha, _ = reference(position)
    layer = build_attention(CONFIGS[name], mha)
    x, _, pos = inputs(position, batch=2)
    full, _ = layer(x, pos=pos)
    split = 8
    _, cache = layer(x[:, :split], pos=None if pos is None else pos[:, :split], use_cache=True)
    last, cache = layer(x[:, split:], pos=None if pos is None else pos[:, split:], cache=cache)
    assert relative_error(full[:, split:], last) <= 1e-5
    assert cache_nbytes(cache) == layer.cache_bytes(T, 2, torch.float32)


def test_mla_absorbed_step_equals_up_projected_step():
    mha, _ = reference("none")
    layer = build_attention({"name": "mla", "latent_dim": 16}, mha)
    x, _, _ = inputs("none", batch=2)
    _, cache = layer(x[:, :8], use_cache=True)
    outs = []
    for absorb in (True, False):
        layer.absorb = absorb
        outs.append(layer(x[:, 8:], cache=cache)[0])
    assert relative_error(outs[1], outs[0]) <= 1e-5


def test_mla_cache_holds_only_the_latent():
    mha, _ = reference("none")
    layer = build_attention({"name": "mla", "latent_dim": 16}, mha)
    _, cache = layer(inputs("none")[0], use_cache=True)
    assert list(cache) == ["latent"] and cache["latent"].shape == (3, T, 16)


@pytest.mark.parametrize("name", list(CONFIGS) + ["hedgehog"])
@pytest.mark.parametrize("position", POSITIONS)
def test_gradients_reach_every_trainable_parameter(name, position):
    cfg = {"name": "linear", "feature_map": "hedgehog"} if name == "hedgehog" else CONFIGS[name]
    layer = build_attention(cfg, random_mha(D, H, position))
    x, pad, pos = inputs(position)
    out, _ = layer(x, pad, pos)
    out[~pad].pow(2).sum().backward()
    trainable = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_linear_attention_has_no_t_by_t_intermediate():
    """O(T): at T=4096 a T x T fp32 score matrix per head would be 4096*4096*4*H bytes; check none is made."""
    layer = build_attention(CONFIGS["linear"], random_mha(D, H))
    x = torch.randn(1, 4096, D)
    biggest = []

    def track(t):
        biggest.append(t.numel())
        return t

    from torch.utils._python_dispatch import TorchDispatchMode

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                track(out)
            return out

    with Sizes(), torch.no_grad():
        layer(x)
    assert max(biggest) < 4096 * 4096


def test_padding_does_not_change_valid_outputs():
    for name, cfg in CONFIGS.items():
        layer = build_attention(cfg, random_mha(D, H))
        x, pad, _ = inputs("none")
        out_padded, _ = layer(x[1:2], pad[1:2])
        valid = (~pad[1]).sum()
        out_trimmed, _ = layer(x[1:2, :valid])
        assert relative_error(out_trimmed, out_padded[:, :valid]) <= 1e-5, name


def test_invalid_options_name_the_field():
    mha = random_mha(D, H)
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        build_attention({"name": "gqa", "num_kv_heads": 3}, mha)
    with pytest.raises(ValueError, match="latent_dim=129"):
        MultiHeadLatentAttention(mha, latent_dim=129)
    with pytest.raises(ValueError, match="feature_map='tanh'"):
        build_attention({"name": "linear", "feature_map": "tanh"}, mha)
    with pytest.raises(ValueError, match="attention.name='flash'"):
        build_attention({"name": "flash"}, mha)


def test_xl_streaming_is_refused_not_silently_wrong():
    layer = build_attention(CONFIGS["mha"], random_mha(D, H, "xl"))
    x, _, pos = inputs("xl")
    _, cache = layer(x, pos=pos, use_cache=True)  # a cache of a whole sequence is fine ...
    assert cache_nbytes(cache) == layer.cache_bytes(T, 3, torch.float32)
    with pytest.raises(NotImplementedError, match="xl"):  # ... a chunk against it is not
        layer(x, pos=pos, cache=cache)


@pytest.mark.parametrize("name", ["mha", "gqa", "mla", "linear"])
def test_inference_keeps_stacked_weights_until_a_parameter_changes(name):
    cfg = {"name": "mla", "latent_dim": 56} if name == "mla" else CONFIGS[name]  # 56: merged for inference
    layer = build_attention(cfg, random_mha(D, H)).eval()
    x, pad, _ = inputs("none")
    with torch.no_grad():
        first, _ = layer(x, pad)
        assert torch.equal(layer(x, pad)[0], first)
        layer.q_proj.weight.mul_(0.5)  # an in-place update (an optimizer step) must invalidate the stack
        changed, _ = layer(x, pad)
    assert not torch.allclose(changed, first)
    with_grad, _ = layer(x, pad)  # the autograd path stacks afresh; both paths agree
    assert relative_error(with_grad, changed, pad) <= 1e-5


@pytest.mark.parametrize("name", ["mha", "linear"])
def test_inference_stack_is_cast_once_for_autocast(name):
    """Autocast keeps its casts of parameters, not of the stacked weight built from them: the stack is kept in
    the autocast dtype instead, so a bf16 forward casts no weight; outside autocast the fp32 stack comes back."""
    layer = build_attention(CONFIGS[name], random_mha(D, H)).eval()
    x, pad, _ = inputs("none")
    with torch.no_grad():
        reference, _ = layer(x, pad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            weight = layer.input_projection(x)[0]
            assert weight.dtype == torch.bfloat16 and layer.input_projection(x)[0] is weight
            out, _ = layer(x, pad)
        assert layer.input_projection(x)[0].dtype == torch.float32
    assert out.dtype == torch.bfloat16
    assert relative_error(reference, out.float(), pad) <= 2e-2


@pytest.mark.parametrize("feature_map", ["elu", "relu", "hedgehog"])
@pytest.mark.parametrize("position", POSITIONS)
def test_linear_dense_whole_sequence_equals_per_head_states(feature_map, position):
    """The whole-sequence path (one dense state, masked to per-head blocks) against the per-head einsum path the
    cache uses, on the same padded batch."""
    layer = build_attention({"name": "linear", "feature_map": feature_map}, random_mha(D, H, position))
    x, pad, pos = inputs(position)
    dense, _ = layer(x, pad, pos)
    per_head, state = layer(x, pad, pos, use_cache=True)
    assert state is not None
    assert relative_error(dense[~pad], per_head[~pad]) <= 1e-5


@pytest.mark.parametrize("position", POSITIONS)
def test_gqa_shares_kv_heads_only_where_flash_takes_the_call(position, monkeypatch, spy):
    """SDPA's grouped heads run in its flash or math kernel only; the math kernel would build (B, H, T, T) scores.
    Where flash cannot take the call (here: CPU, a padding mask) K/V are copied per head instead; where it can,
    the kv_heads are shared. Both give the same output."""
    import asr_attention.attention.base as base

    layer = build_attention(CONFIGS["gqa"], random_mha(D, H, position)).eval()
    x, pad, pos = inputs(position)
    flash_takes = base.flash_takes
    calls = spy(base.F, "scaled_dot_product_attention")
    with torch.no_grad():
        copied, _ = layer(x, pad, pos)
        monkeypatch.setattr(base, "flash_takes", lambda q, mask: True)
        shared, _ = layer(x, pad, pos)
    assert [(args[1].shape[1], kwargs["enable_gqa"]) for args, kwargs in calls] == [(H, False), (2, True)]
    assert relative_error(copied, shared, pad) <= 1e-6
    assert not flash_takes(torch.zeros(1, H, T, D // H, dtype=torch.bfloat16), None)  # CPU


def causal_reference(x: torch.Tensor, mha) -> torch.Tensor:
    """Masked softmax attention written out from the canonical weights: position t sees positions <= t."""
    b, t, d = x.shape
    heads = [(x @ w.T + bias).view(b, t, H, d // H).transpose(1, 2)
             for w, bias in ((mha.q_weight, mha.q_bias), (mha.k_weight, mha.k_bias), (mha.v_weight, mha.v_bias))]
    scores = heads[0] @ heads[1].transpose(-1, -2) * mha.scale
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    out = (scores.softmax(-1) @ heads[2]).transpose(1, 2).reshape(b, t, d)
    return out @ mha.o_weight.T + mha.o_bias


@pytest.mark.parametrize("name", ["mha", "gqa_all", "mla_full"])
def test_causal_exact_variants_equal_masked_attention(name):
    cfg = {"mha": {"name": "mha"}, "gqa_all": {"name": "gqa", "num_kv_heads": H},
           "mla_full": {"name": "mla", "latent_dim": D}}[name]
    mha = random_mha(D, H)
    x, _, _ = inputs("none")
    out, _ = build_attention(cfg, mha)(x, causal=True)
    assert relative_error(causal_reference(x, mha), out) <= 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_prefix_equals_token_by_token_with_cache(name):
    """Decoder self-attention: teacher forcing over the prefix == one token at a time against the variant's own
    cache (a 2-token prompt first), and the cache holds what cache_bytes says."""
    layer = build_attention(CONFIGS[name], random_mha(D, H))
    x, _, _ = inputs("none", batch=2)
    full, _ = layer(x, causal=True)
    steps, cache = layer(x[:, :2], causal=True, use_cache=True)
    steps = [steps]
    for t in range(2, T):
        out, cache = layer(x[:, t: t + 1], causal=True, cache=cache, use_cache=True)
        steps.append(out)
    assert relative_error(full, torch.cat(steps, dim=1)) <= 1e-5
    assert cache_nbytes(cache) == layer.cache_bytes(T, 2, torch.float32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cross_attention_reuses_the_cache_built_from_memory(name):
    """Cross-attention: K/V (or the latent, or the state) come from memory once; later calls pass the cache and
    get the same outputs as re-reading memory; padded memory frames are ignored."""
    layer = build_attention(CONFIGS[name], random_mha(D, H))
    x, _, _ = inputs("none", batch=3, t=4, seed=5)
    memory, pad, _ = inputs("none", batch=3, t=T)
    direct, cache = layer(x, key_padding_mask=pad, memory=memory, use_cache=True)
    again, same = layer(x, key_padding_mask=pad, memory=cache, use_cache=True)
    assert same is cache and torch.allclose(direct, again, atol=1e-6)
    assert cache_nbytes(cache) == layer.cache_bytes(T, 3, torch.float32)
    cut, _ = layer(x[1:2], memory=memory[1:2, : T - 4])  # row 1 has its last 4 frames padded
    assert relative_error(cut, direct[1:2]) <= 1e-5
    if name == "mha":  # and it is the attention of x's queries over memory's keys
        mha = random_mha(D, H)
        q = (x @ mha.q_weight.T + mha.q_bias).view(3, 4, H, -1).transpose(1, 2)
        k, v = ((memory @ w.T + b).view(3, T, H, -1).transpose(1, 2) for w, b in
                ((mha.k_weight, mha.k_bias), (mha.v_weight, mha.v_bias)))
        scores = (q @ k.transpose(-1, -2) * mha.scale).masked_fill(pad[:, None, None], float("-inf"))
        ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 4, D) @ mha.o_weight.T + mha.o_bias
        assert relative_error(ref, direct) <= 1e-5
