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


def test_activation_aware_mla_without_calibration_data_is_an_error():
    """Not plain SVD in its place: the bench paths, OursGreedy and API users build and patch without data."""
    mha, _ = reference("none")
    cfg = {"name": "mla", "latent_dim": 16, "calibration": "activation"}
    with pytest.raises(ValueError, match="attention.calibration=activation needs calibration data"):
        build_attention(cfg, mha)
    with pytest.raises(ValueError, match="attention.calibration='svd' is not one of"):
        build_attention({**cfg, "calibration": "svd"}, mha)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("position", POSITIONS)
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


@pytest.mark.parametrize("cfg", [*CONFIGS.values(), {"name": "mla", "latent_dim": 8}],
                         ids=[*CONFIGS, "mla-latent-space"])  # r=8 < head_dim: a whole sequence absorbs too
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("causal", [False, True])
def test_building_a_cache_changes_nothing(cfg, position, causal):
    """Same frames, only use_cache differs: the same output, the Transformer-XL term included."""
    layer = build_attention(cfg, random_mha(D, H, position))
    x, pad, pos = inputs(position)
    plain, none = layer(x, pad, pos, causal=causal)
    cached, cache = layer(x, pad, pos, use_cache=True, causal=causal)
    assert none is None and cache is not None
    err = relative_error(plain, cached, pad)
    assert err <= 1e-5, f"{cfg}: {err:.2e}"


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


def test_mla_cache_holds_only_the_latent():
    mha, _ = reference("none")
    layer = build_attention({"name": "mla", "latent_dim": 16}, mha)
    _, cache = layer(inputs("none")[0], use_cache=True)
    assert list(cache) == ["latent"] and cache["latent"].shape == (3, T, 16)


@pytest.mark.parametrize("mask", ["none", "padding", "additive", "causal"])
def test_a_decode_step_in_latent_space_equals_sdpa(mask, monkeypatch):
    """A few queries (a decode step's heads) attend over the latent through two GEMMs, not SDPA: same output."""
    from asr_attention.attention import mla as mla_module

    layer = build_attention({"name": "mla", "latent_dim": 24}, random_mha(D, H)).eval()
    g = torch.Generator().manual_seed(3)
    q, latent = torch.randn(3, H, 2, D // H, generator=g), torch.randn(3, T, 24, generator=g)
    keep = {"none": None, "padding": ~inputs("none")[1][:, None, None, :], "causal": None,
            "additive": torch.randn(3, 1, 1, T, generator=g)}[mask]
    outputs = []
    for few in (H * 2, 0):  # the two-GEMM path, then SDPA
        monkeypatch.setattr(mla_module, "FEW_QUERIES", few)
        outputs.append(layer.absorbed(q, latent, latent, keep, mask == "causal"))
    assert relative_error(*outputs) <= 1e-6


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
def test_inference_reads_weights_written_through_data(name):
    """Writes through .data (load_state_dict-style copies, EMA updates) do not bump a tensor's version counter;
    inference must still read the new weights (no stacked copy kept across calls can go stale)."""
    cfg = {"name": "mla", "latent_dim": 56} if name == "mla" else CONFIGS[name]  # 56: the merged K/V map
    layer = build_attention(cfg, random_mha(D, H)).eval()
    x, pad, _ = inputs("none")
    with torch.no_grad():
        first, _ = layer(x, pad)
        layer.q_proj.weight.data.mul_(0.5)
        halved, _ = layer(x, pad)
        layer.q_proj.weight.mul_(2.0)  # in place, as an optimizer step
        restored, _ = layer(x, pad)
    assert relative_error(first, halved, pad) > 1e-2
    assert relative_error(first, restored, pad) <= 1e-6


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
    import asr_attention.attention.fast_paths as fast_paths

    layer = build_attention(CONFIGS["gqa"], random_mha(D, H, position)).eval()
    x, pad, pos = inputs(position)
    flash_takes = fast_paths.flash_takes
    calls = spy(fast_paths.F, "scaled_dot_product_attention")
    with torch.no_grad():
        copied, _ = layer(x, pad, pos)
        monkeypatch.setattr(fast_paths, "flash_takes", lambda q, mask: True)
        shared, _ = layer(x, pad, pos)
    assert [(args[1].shape[1], kwargs["enable_gqa"]) for args, kwargs in calls] == [(H, False), (2, True)]
    assert relative_error(copied, shared, pad) <= 1e-6
    assert not flash_takes(torch.zeros(1, H, T, D // H, dtype=torch.bfloat16), None)  # CPU


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float32])
def test_kernels_refuse_a_padding_mask_that_is_not_bool(dtype):
    """The kernels read the mask's bytes as bool: any other dtype is refused, not misread."""
    from asr_attention.attention import kernels
    from asr_attention.attention.kernels.linear_attention import linear_attention
    from asr_attention.attention.kernels.xl_attention import xl_attention

    mask = torch.zeros(2, 16, dtype=dtype)
    with pytest.raises(TypeError, match=f"key_padding_mask must be a bool tensor.*{dtype}"):
        kernels.key_padding_arg(mask, mask)
    if kernels.triton is None:
        return
    qkv = torch.randn(2, 16, 2, 16)
    with pytest.raises(TypeError, match="bool"):
        linear_attention(qkv, qkv, qkv, 1e-6, mask)
    heads = qkv.transpose(1, 2)
    with pytest.raises(TypeError, match="bool"):
        xl_attention(heads, heads, heads, torch.randn(31, 2, 16), torch.zeros(2, 16), torch.zeros(2, 16), mask, 0.25)


@pytest.mark.parametrize("rows", [600, D // 2])  # D // 2: fewer rows than d (a few decoder tokens): C is singular
def test_activation_aware_mla_from_streamed_second_moment_equals_from_the_rows(rows):
    """convert() adds each batch's K/V inputs into a SecondMoment instead of concatenating them: its d rows must give
    the same conversion as the rows themselves."""
    from asr_attention.attention.mla import SecondMoment

    mha, _ = reference("none")
    calib = anisotropic_activations(rows)
    moment = SecondMoment()
    for part in calib.split([rows // 3, 7, rows - rows // 3 - 7]):
        moment.add(part)
    assert moment.count == rows and moment.rows().shape == (D, D)
    cfg = {"name": "mla", "latent_dim": 16, "calibration": "activation"}
    direct, streamed = build_attention(cfg, mha, calib), build_attention(cfg, mha, moment.rows())
    for name, tensor in direct.state_dict().items():
        torch.testing.assert_close(streamed.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    plain = build_attention({"name": "mla", "latent_dim": 16}, mha)
    assert not torch.allclose(plain.state_dict()["kv_down.weight"], direct.state_dict()["kv_down.weight"], atol=1e-3)
