"""The Triton linear-attention kernel against the einsum formula and the PyTorch whole-sequence path, and its
wiring into LinearAttention (inference only). Without a GPU the kernel runs in Triton's CPU interpreter
(tests/conftest.py); with one, on CUDA tensors."""

import itertools

import pytest
import torch

import asr_attention.attention.kernels as kernels
import asr_attention.attention.linear as linear_module
from asr_attention.attention import build_attention, random_mha, relative_error
from asr_attention.attention.kernels import triton
from asr_attention.attention.kernels.linear_attention import linear_attention, supported

from test_attention import inputs

pytestmark = pytest.mark.skipif(triton is None, reason="Triton is not installed")

B, T, H, HD = 2, 37, 3, 16  # T: not a multiple of any block size
D = H * HD
EPS = 1e-6
LENGTHS = (T, 23)  # valid frames per batch item
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def padding():
    return (torch.arange(T)[None, :] >= torch.tensor(LENGTHS)[:, None]).to(DEVICE)  # (B, T), True = pad


def formula(phi_q, phi_k, v, eps=EPS):
    """(B, T, H, F), (B, T, H, F), (B, T, H, hd) -> (B, T, H, hd), in float64."""
    phi_q, phi_k, v = (x.double() for x in (phi_q, phi_k, v))
    state = torch.einsum("bthf,bthd->bhfd", phi_k, v)
    numerator = torch.einsum("bthf,bhfd->bthd", phi_q, state)
    return numerator / (torch.einsum("bthf,bhf->bth", phi_q, phi_k.sum(1))[..., None] + eps)


def heads(x):
    return x.view(B, T, H, -1)


def features(feature_map, seed=0):
    """A layer with this feature map, and phi_q, phi_k as it makes them: (B, T, H, F), phi_k zeroed at padded
    frames; v: (B, T, H, hd)."""
    layer = build_attention({"name": "linear", "feature_map": feature_map}, random_mha(D, H)).to(DEVICE)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (heads(torch.randn(B, T, D, generator=g).to(DEVICE)) for _ in range(3))
    with torch.no_grad():
        phi_q = layer.feature_map(q)
        phi_k = layer.feature_map(k).masked_fill(padding()[:, :, None, None], 0.0)
    return layer, phi_q, phi_k, v


# one launch, one block; one launch, three blocks; two passes, three blocks over two programs each
PATHS = {"fused 1 block": dict(block_t=64, fused=True), "fused 3 blocks": dict(block_t=16, fused=True),
         "split": dict(block_t=16, splits=2, fused=False)}


@pytest.mark.parametrize("feature_map", ["elu", "relu", "hedgehog"])
@pytest.mark.parametrize("path", PATHS)
def test_kernel_equals_formula_and_whole_sequence(feature_map, path):
    layer, phi_q, phi_k, v = features(feature_map)
    assert phi_q.shape[-1] == (2 * HD if feature_map == "hedgehog" else HD)
    out = linear_attention(phi_q, phi_k, v, EPS, **PATHS[path])
    assert out.shape == (B, T, H, HD) and out.dtype == v.dtype
    assert relative_error(formula(phi_q, phi_k, v), out.double()) <= 1e-5
    with torch.no_grad():
        dense = layer.dense_heads(phi_q, phi_k, v)
    assert relative_error(dense, out.view(B, T, D)) <= 1e-5


@pytest.mark.parametrize("feature_map", ["elu", "relu"])
@pytest.mark.parametrize("path", PATHS)
def test_feature_map_and_padding_inside_the_kernel(feature_map, path):
    """Raw q, k and the padding mask handed over: the same as phi and the zeroing applied beforehand."""
    layer, phi_q, phi_k, v = features(feature_map)
    g = torch.Generator().manual_seed(0)
    q, k = (heads(torch.randn(B, T, D, generator=g).to(DEVICE)) for _ in range(2))  # what features() mapped
    out = linear_attention(q, k, v, EPS, padding(), feature_map=feature_map, **PATHS[path])
    assert relative_error(formula(phi_q, phi_k, v), out.double()) <= 1e-5
    unmasked = linear_attention(q, k, v, EPS, feature_map=feature_map, **PATHS[path])
    assert relative_error(out, unmasked) > 1e-2  # the mask is not a no-op here: item 1 has 14 padded frames


@pytest.mark.parametrize("path", PATHS)
def test_padded_frames_do_not_reach_valid_outputs(path):
    """Item 1 trimmed to its valid frames gives the same outputs as its padded form, mask or zeroed phi_k."""
    _, phi_q, phi_k, v = features("elu")
    padded = linear_attention(phi_q, phi_k, v, EPS, **PATHS[path])
    valid = LENGTHS[1]
    trimmed = linear_attention(*(x[1:2, :valid] for x in (phi_q, phi_k, v)), EPS, **PATHS[path])
    assert relative_error(trimmed, padded[1:2, :valid]) <= 1e-6
    garbage = phi_k.masked_fill(padding()[:, :, None, None], 7.0)  # padded keys the mask must hide
    masked = linear_attention(phi_q, garbage, v, EPS, padding(), **PATHS[path])
    assert relative_error(trimmed, masked[1:2, :valid]) <= 1e-6


def test_strided_views_equal_contiguous_copies():
    _, phi_q, phi_k, v = features("hedgehog")
    q_strided = phi_q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, T, H, F) view of a (B, H, T, F) tensor
    k_strided = phi_k.transpose(1, 2).contiguous().transpose(1, 2)
    v_strided = v.reshape(B, T, D).view(B, T, HD, H).transpose(2, 3)  # head_dim not unit-stride
    assert not any(x.is_contiguous() for x in (q_strided, k_strided, v_strided))
    for values, path in itertools.product((v, v_strided), PATHS.values()):
        strided = linear_attention(q_strided, k_strided, values, EPS, **path)
        dense = linear_attention(phi_q.contiguous(), phi_k.contiguous(), values.contiguous(), EPS, **path)
        assert relative_error(dense, strided) <= 1e-6


@pytest.mark.skipif(DEVICE == "cpu", reason="Triton's CPU interpreter returns garbage for bf16 tl.dot")
def test_bfloat16_inputs_follow_the_fp32_formula():
    _, phi_q, phi_k, v = features("elu")
    for path in [{}, *PATHS.values()]:  # {}: the tiles chosen for 16-bit inputs
        out = linear_attention(*(x.bfloat16() for x in (phi_q, phi_k, v)), EPS, **path)
        assert out.dtype == torch.bfloat16
        assert relative_error(formula(phi_q, phi_k, v), out.double()) <= 2e-2


def test_unsupported_shapes_and_options_are_refused():
    assert supported(64, 64) and supported(128, 64) and not supported(24, 24) and not supported(256, 128)
    x = torch.rand(1, 4, 1, 24, device=DEVICE)
    with pytest.raises(ValueError, match="F=24"):
        linear_attention(x, x, x, EPS)
    x = torch.rand(1, 4, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="feature_map='tanh'"):
        linear_attention(x, x, x, EPS, feature_map="tanh")
    with pytest.raises(ValueError, match="key_padding_mask"):
        linear_attention(x, x, x, EPS, torch.zeros(1, 5, dtype=torch.bool, device=DEVICE))


def hand_cpu_to_the_kernels(monkeypatch):
    """runs_on as on a GPU, gradient rule included, for CPU tensors (the interpreter runs the kernel)."""
    monkeypatch.setattr(kernels, "DEVICES", {"cuda", "cpu"})


@pytest.mark.parametrize("feature_map", ["elu", "hedgehog"])
@pytest.mark.parametrize("position", ["none", "xl", "rotary_input"])
def test_layer_inference_uses_the_kernel(monkeypatch, spy, feature_map, position):
    layer = build_attention({"name": "linear", "feature_map": feature_map}, random_mha(D, H, position))
    layer = layer.to(DEVICE).eval()
    x, _, pos = inputs(position, batch=B, t=T, seed=5, d=D, h=H)
    x, pos, pad = x.to(DEVICE), None if pos is None else pos.to(DEVICE), padding()
    monkeypatch.setattr(kernels, "DEVICES", set())
    with torch.no_grad():
        expected, _ = layer(x, pad, pos)  # the PyTorch whole-sequence path
    hand_cpu_to_the_kernels(monkeypatch)
    calls = spy(linear_module, "linear_attention")
    with torch.no_grad():
        out, cache = layer(x, pad, pos)
    assert calls and cache is None
    assert relative_error(expected, out, pad) <= 1e-5


def test_training_keeps_the_autograd_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the kernel has no backward; training must not reach it")

    hand_cpu_to_the_kernels(monkeypatch)
    monkeypatch.setattr(linear_module, "linear_attention", refuse)
    layer = build_attention({"name": "linear", "feature_map": "hedgehog"}, random_mha(D, H)).to(DEVICE)
    x = torch.randn(B, T, D, device=DEVICE)
    out, _ = layer(x, padding())
    out[~padding()].pow(2).sum().backward()
    assert layer.q_proj.weight.grad is not None and layer.feature_map.weight.grad is not None
