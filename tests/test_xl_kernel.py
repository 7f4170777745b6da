"""The fused Transformer-XL attention kernel against the SDPA path it replaces at inference.

Without a GPU the kernel runs in Triton's interpreter (tests/conftest.py), with one on CUDA. The interpreter's
bf16 tl.dot is wrong (it multiplies bit patterns), so bf16 is checked on CUDA only; fp16 checks reduced precision
everywhere. The GPU suite also reports the kernel's error against the native modules in bf16 (benchmarks/).
"""

import pytest
import torch
import torch.nn.functional as F

import asr_attention.attention.base as base
from asr_attention.attention import build_attention, random_mha, relative_error
from asr_attention.attention import kernels
from asr_attention.attention.kernels import xl_attention as xl_kernel
from asr_attention.attention.kernels.xl_attention import xl_attention
from asr_attention.attention.masks import attention_mask
from asr_attention.attention.positions import skewed_scores
from asr_attention.backbones.patch import patch_attention

from test_backbones import ALL_CASES, batch, make, valid

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA_ONLY = pytest.mark.skipif(DEVICE == "cpu", reason="Triton's interpreter gets bf16 tl.dot wrong")


def xl_inputs(b=2, h=4, kv=4, t=70, hd=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # q, k, v as head views of one projection output, as the variants produce them (non-contiguous)
    qkv = torch.randn(b, t, (h + 2 * kv) * hd, generator=g).to(dtype)
    q, k, v = qkv.split([h * hd, kv * hd, kv * hd], dim=-1)
    q, k, v = (x.view(b, t, -1, hd).transpose(1, 2) for x in (q, k, v))
    positions = torch.randn(2 * t - 1, h, hd, generator=g).to(dtype)
    u, vb = torch.randn(2, h, hd, generator=g)
    pad = torch.zeros(b, t, dtype=torch.bool)
    pad[1, t - 23:] = True
    return tuple(x.to(DEVICE) for x in (q, k, v, positions, u, vb, pad))


def sdpa_reference(q, k, v, positions, u, vb, pad, scale):
    """The SDPA path's arithmetic (skewed position scores as an additive mask), in float64."""
    q, k, v, positions, u, vb = (x.double() for x in (q, k, v, positions, u, vb))
    bias = skewed_scores((q + vb[None, :, None, :]) * scale, positions.permute(1, 2, 0)[None])
    mask, _ = attention_mask(pad, bias, q.shape[-2], k.shape[-2], False, q.device)
    out = F.scaled_dot_product_attention(q + u[None, :, None, :], k, v, attn_mask=mask,
                                         scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(1, 2)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3),
                                        pytest.param(torch.bfloat16, 1e-2, marks=CUDA_ONLY)])
@pytest.mark.parametrize("kv", [4, 2])
@pytest.mark.parametrize("block", [16, 64])
def test_kernel_equals_sdpa_path(dtype, tol, kv, block):
    q, k, v, positions, u, vb, pad = xl_inputs(kv=kv, dtype=dtype)
    scale = q.shape[-1] ** -0.5
    out = xl_attention(q, k, v, positions, u, vb, pad, scale, block=block)
    ref = sdpa_reference(q, k, v, positions, u, vb, pad, scale)
    assert out.dtype == dtype and out.shape == ref.shape
    err = relative_error(ref, out.double())
    assert err <= tol, f"relative error {err:.2e}"
    # negative control: the same kernel output against the scores without the position term is far off
    no_pos = sdpa_reference(q, k, v, positions * 0, u, vb, pad, scale)
    assert relative_error(no_pos, out.double()) > 0.3


def test_kernel_refuses_what_it_cannot_tile():
    q, k, v, positions, u, vb, pad = xl_inputs(hd=16)
    with pytest.raises(ValueError, match=r"head_dim in \(16, 32, 64, 128\), got 12"):
        xl_attention(q[..., :12], k[..., :12], v[..., :12], positions[..., :12], u[:, :12], vb[:, :12], pad, 0.3)
    with pytest.raises(ValueError, match="positions must be"):
        xl_attention(q, k, v, positions[1:], u, vb, pad, 0.3)


@pytest.fixture
def kernel_on_cpu(monkeypatch, spy):
    """Inference calls on CPU take the kernel too (through the interpreter); returns the list of its calls."""
    monkeypatch.setattr(kernels, "DEVICES", {"cuda", "cpu"})
    # fp32 too, on CUDA as well: the wiring is checked at fp32 tolerances
    monkeypatch.setattr(xl_kernel, "DTYPES", {torch.bfloat16, torch.float16, torch.float32})
    return spy(base, "xl_attention")


@pytest.mark.parametrize("config", [{"name": "mha"}, {"name": "gqa", "num_kv_heads": 2},
                                    {"name": "mla", "latent_dim": 48}, {"name": "mla", "latent_dim": 12}])
def test_variants_through_the_kernel_equal_their_sdpa_path(config, kernel_on_cpu, monkeypatch):
    d, h, t = 64, 4, 40
    layer = build_attention(config, random_mha(d, h, "xl")).eval().to(DEVICE)
    g = torch.Generator().manual_seed(3)
    x, pos = torch.randn(3, t, d, generator=g).to(DEVICE), torch.randn(1, 2 * t - 1, d, generator=g).to(DEVICE)
    pad = torch.zeros(3, t, dtype=torch.bool, device=DEVICE)
    pad[2, 25:] = True
    with torch.no_grad():
        fused, _ = layer(x, pad, pos)
        assert len(kernel_on_cpu) == 1, "the kernel was not called"
        monkeypatch.setattr(kernels, "DEVICES", set())
        plain, _ = layer(x, pad, pos)
        assert len(kernel_on_cpu) == 1
    err = relative_error(plain, fused, pad)
    assert err <= 1e-5, f"{config}: relative error {err:.2e}"


@pytest.mark.parametrize("case", ["conformer-relative-sdpa", "branchformer"])
def test_patched_model_through_the_kernel_equals_the_original_model(case, kernel_on_cpu):
    """Whole model: HF conformer (relative) and SpeechBrain Branchformer (RelPosMHAXL), head_dim 16."""
    backbone = make({**ALL_CASES[case], "num_heads": 2}).to(DEVICE)
    waves, wave_lengths = (x.to(DEVICE) for x in batch())
    with torch.no_grad():
        ref, lengths = backbone(waves, wave_lengths)
        patch_attention(backbone, {"name": "mha"})
        out, _ = backbone(waves, wave_lengths)
    assert len(kernel_on_cpu) == 2  # one call per layer
    err = relative_error(valid(ref.cpu(), lengths.cpu()), valid(out.cpu(), lengths.cpu()))
    assert err <= 1e-5, f"{case}: patched logits through the kernel differ by {err:.2e}"


def test_training_and_fp32_take_the_sdpa_path(kernel_on_cpu, monkeypatch):
    layer = build_attention({"name": "mha"}, random_mha(64, 4, "xl")).train().to(DEVICE)
    x, pos = torch.randn(2, 10, 64, device=DEVICE), torch.randn(1, 19, 64, device=DEVICE)
    out, _ = layer(x, None, pos)
    out.sum().backward()
    assert not kernel_on_cpu, "a call that needs gradients went to the forward-only kernel"
    assert layer.xl.pos_bias_v.grad is not None
    with torch.no_grad():
        layer(x, None, pos)
    assert len(kernel_on_cpu) == 1
    monkeypatch.setattr(xl_kernel, "DTYPES", {torch.bfloat16, torch.float16})
    with torch.no_grad():
        layer(x, None, pos)  # fp32: the SDPA path, faster than tl.dot without tensor cores
    assert len(kernel_on_cpu) == 1
