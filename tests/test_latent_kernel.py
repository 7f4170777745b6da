"""The fused latent-attention kernel (MLA's absorbed decode step) against the PyTorch path it replaces.

Without a GPU the kernel runs in Triton's interpreter (tests/conftest.py); bf16 is checked on CUDA only, since the
interpreter's bf16 tl.dot is wrong.
"""

import pytest
import torch
import torch.nn.functional as F

import asr_attention.attention.mla as mla
from asr_attention.attention import build_attention, random_mha, relative_error
from asr_attention.attention import kernels
from asr_attention.attention.kernels import latent_attention as latent_kernel
from asr_attention.attention.kernels.latent_attention import keep_per_key, latent_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA_ONLY = pytest.mark.skipif(DEVICE == "cpu", reason="Triton's interpreter gets bf16 tl.dot wrong")


def reference(q, k, v, keep, scale):
    """Softmax attention of q (B, Q, r) over k, v (B, S, r) in float64; keep (B or 1, S)."""
    mask = None if keep is None else keep[:, None, :]
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, scale=scale)


def inputs(b=3, queries=6, frames=150, r=40, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, queries, r, generator=g).to(dtype).to(DEVICE)
    latent = torch.randn(b, frames, r, generator=g).to(dtype).to(DEVICE)
    return q, latent


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3),
                                        pytest.param(torch.bfloat16, 1e-2, marks=CUDA_ONLY)])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("keep_kind", ["none", "per_utterance", "shared"])
def test_kernel_equals_softmax_attention(dtype, tol, splits, keep_kind):
    q, latent = inputs(dtype=dtype)
    b, s = latent.shape[:2]
    keep = None
    if keep_kind == "per_utterance":  # key padding: the second utterance's last 70 frames
        keep = torch.ones(b, s, dtype=torch.bool, device=DEVICE)
        keep[1, s - 70:] = False
    elif keep_kind == "shared":  # unwritten cache slots, one row for the batch
        keep = (torch.arange(s, device=DEVICE) < 37)[None]
    out = latent_attention(q, latent, latent, keep, scale=0.2, splits=splits, block=16)
    ref = reference(q, latent, latent, keep, 0.2)
    assert out.dtype == dtype and out.shape == q.shape
    err = relative_error(ref, out.double())
    assert err <= tol, f"relative error {err:.2e}"
    if keep is not None:  # negative control: the mask matters to the result
        assert relative_error(reference(q, latent, latent, None, 0.2), out.double()) > 0.05


def test_separate_k_and_v_latents():
    """Rotary on inputs keeps two latents: scores read one, the weighted sum the other."""
    q, k = inputs()
    _, v = inputs(seed=1)
    out = latent_attention(q, k, v, None, scale=0.2, splits=2, block=16)
    assert relative_error(reference(q, k, v, None, 0.2), out.double()) <= 1e-5


def test_keep_per_key_takes_only_masks_the_kernel_can_read():
    b, s = 2, 9
    per_key = torch.ones(b, 1, 1, s, dtype=torch.bool)
    assert keep_per_key(None, b, s) is None
    assert keep_per_key(per_key, b, s).shape == (b, s)
    assert keep_per_key(torch.ones(1, 1, 1, s, dtype=torch.bool), b, s).shape == (1, s)
    assert keep_per_key(torch.ones(b, 1, 4, s, dtype=torch.bool), b, s) is False  # varies by query
    assert keep_per_key(torch.zeros(b, 1, 1, s), b, s) is False  # additive (a position bias)


def test_kernel_refuses_what_it_cannot_hold():
    q, latent = inputs(queries=65)
    with pytest.raises(ValueError, match="<= 64 queries"):
        latent_attention(q, latent, latent, None, 0.2)


@pytest.fixture
def kernel_on_cpu(monkeypatch, spy):
    """Inference calls on CPU take the kernel too (through the interpreter), fp32 as well; -> its calls."""
    monkeypatch.setattr(kernels, "DEVICES", {"cuda", "cpu"})
    monkeypatch.setattr(latent_kernel, "DTYPES", {torch.bfloat16, torch.float16, torch.float32})
    return spy(mla, "latent_attention")


@pytest.mark.parametrize("latent_dim", [48, 20])
def test_mla_decode_through_the_kernel_equals_its_pytorch_path(latent_dim, kernel_on_cpu, monkeypatch):
    """A decode step of MLA at both decoder sites: self-attention over its growing cache, cross-attention over
    a padded memory. Through the kernel, then with the kernel off."""
    d, h, steps = 64, 4, 3
    layer = build_attention({"name": "mla", "latent_dim": latent_dim}, random_mha(d, h, "none")).eval().to(DEVICE)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, steps, d, generator=g).to(DEVICE)
    memory = torch.randn(2, 30, d, generator=g).to(DEVICE)
    pad = torch.zeros(2, 30, dtype=torch.bool, device=DEVICE)
    pad[1, 21:] = True

    def decode():
        outs, own, cross = [], None, None
        for i in range(steps):
            token = x[:, i:i + 1]
            a, own = layer(token, None, None, own, True, causal=True)
            c, cross = layer(token, pad, None, cross, True, memory=memory if cross is None else None)
            outs.append(a + c)
        return torch.cat(outs, 1)

    with torch.no_grad():
        fused = decode()
        calls = len(kernel_on_cpu)
        monkeypatch.setattr(kernels, "DEVICES", set())
        plain = decode()
    assert calls >= 2 * (steps - 1) and len(kernel_on_cpu) == calls, "the kernel was not called, or called off"
    err = relative_error(plain, fused)
    assert err <= 1e-5, f"relative error {err:.2e}"


def test_training_takes_the_pytorch_path(kernel_on_cpu):
    layer = build_attention({"name": "mla", "latent_dim": 48}, random_mha(64, 4, "none")).train().to(DEVICE)
    x, memory = torch.randn(2, 1, 64, device=DEVICE), torch.randn(2, 30, 64, device=DEVICE)
    out, _ = layer(x, None, None, None, False, memory=memory)
    out.sum().backward()
    assert not kernel_on_cpu, "a call that needs gradients went to the forward-only kernel"
