"""The fused MLA decode kernel (attention/kernels/latent_decode.py) against the PyTorch path it replaces for one new
token. Without a GPU it runs in Triton's interpreter (tests/conftest.py), with one on CUDA; fp32 here (the
interpreter's bf16 tl.dot is wrong, see test_xl_kernel.py), bf16 on CUDA only."""

import pytest
import torch

from asr_attention.attention import build_attention, kernels, random_mha
from asr_attention.attention.kernels import latent_decode as kernel
from asr_attention.attention.kernels.latent_decode import latent_decode

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(q, latent, scale, keep):
    scores = torch.einsum("bhr,bsr->bhs", q.float(), latent.float()) * scale
    if keep is not None:
        scores = scores.masked_fill(~keep.reshape(-1, 1, keep.shape[-1]), float("-inf"))
    return torch.einsum("bhs,bsr->bhr", scores.softmax(-1), latent.float())


@pytest.mark.parametrize("b, h, r, s, splits, block_s, kept", [
    (2, 6, 96, 37, 3, 16, 34),     # tiny.en's self-attention shape at r = d/4, a slice partly masked
    (3, 20, 80, 100, None, 32, 100),  # large-v3's 20 heads (padded to 32), r not a power of two
    (1, 8, 128, 70, 4, 16, 2),     # only the first 2 frames kept: three slices keep nothing
    (2, 8, 512, 40, 2, 16, 40),    # the widest latent taken (a cross-memory latent at d = 512)
])
def test_the_kernel_is_softmax_attention_over_the_kept_frames(b, h, r, s, splits, block_s, kept):
    g = torch.Generator().manual_seed(0)
    q, latent = torch.randn(b, h, r, generator=g), torch.randn(b, s, r, generator=g)
    keep = (torch.arange(s) < kept)[None, None, None, :]
    for mask in (keep, None):
        out = latent_decode(q.to(DEVICE), latent.to(DEVICE), 0.1, None if mask is None else mask.to(DEVICE),
                            splits, block_s)
        assert out.shape == (b, h, r) and out.dtype == torch.float32
        torch.testing.assert_close(out.cpu(), reference(q, latent, 0.1, mask), rtol=1e-5, atol=1e-5)


def test_per_utterance_keep_masks_and_strided_inputs():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 4, 2 * 64, generator=g)[..., ::2]  # non-contiguous
    latent = torch.randn(3, 50, 64, generator=g)
    keep = torch.rand(3, 1, 1, 50, generator=g) > 0.3
    keep[..., 0] = True
    out = latent_decode(q.to(DEVICE), latent.to(DEVICE), 0.2, keep.to(DEVICE), 3, 16)
    torch.testing.assert_close(out.cpu(), reference(q, latent, 0.2, keep), rtol=1e-5, atol=1e-5)


def test_shapes_it_does_not_take_are_refused_by_name():
    assert kernel.supported(20, 320) and not kernel.supported(20, 1280)  # large-v3: r = d/4 yes, the whole d no
    with pytest.raises(ValueError, match="H=20, r=1280"):
        latent_decode(torch.zeros(1, 20, 1280), torch.zeros(1, 4, 1280), 1.0)
    with pytest.raises(TypeError, match="bool"):
        latent_decode(torch.zeros(1, 4, 16), torch.zeros(1, 4, 16), 1.0, torch.ones(1, 4))


@pytest.mark.skipif(DEVICE == "cpu", reason="the interpreter's bf16 tl.dot is wrong")
def test_bf16_on_cuda():
    g = torch.Generator().manual_seed(2)
    q, latent = torch.randn(64, 20, 320, generator=g), torch.randn(64, 1500, 320, generator=g)
    out = latent_decode(q.cuda().bfloat16(), latent.cuda().bfloat16(), 320 ** -0.5)
    expected = reference(q.bfloat16(), latent.bfloat16(), 320 ** -0.5, None)
    torch.testing.assert_close(out.float().cpu(), expected, rtol=2e-2, atol=2e-2)


def test_an_mla_decode_step_takes_the_kernel_and_gives_the_pytorch_paths_output(monkeypatch):
    """MLA's decode_step (what the preallocated cache replays) through the kernel equals its PyTorch path."""
    layer = build_attention({"name": "mla", "latent_dim": 32}, random_mha(64, 4, "none")).eval().to(DEVICE)
    calls = []
    monkeypatch.setattr(kernels, "DEVICES", {"cuda", "cpu"})
    monkeypatch.setattr("asr_attention.attention.mla.latent_decode",
                        lambda *a, **k: calls.append(1) or latent_decode(*a, **k))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 64, generator=g).to(DEVICE)
    outs = {}
    for devices in ({"cuda", "cpu"}, set()):
        monkeypatch.setattr(kernels, "DEVICES", devices)
        buffers = layer.decode_buffers(2, 8)
        steps = []
        with torch.no_grad():
            for i in range(5):
                position = torch.tensor([i], device=DEVICE)
                keep = (torch.arange(8, device=DEVICE) <= position)[None, None, None, :]
                steps.append(layer.decode_step(x[:, i: i + 1], buffers, position, keep))
        outs[bool(devices)] = torch.cat(steps, 1)
    assert len(calls) == 5, "the kernel was not called at every step"
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-5, atol=1e-5)


def test_a_compiled_step_keeps_the_pytorch_path(monkeypatch):
    """Inside torch.compile the kernel is not taken (inductor failed to build it on an H100: see mla.py); eager
    and CUDA-graph steps take it."""
    layer = build_attention({"name": "mla", "latent_dim": 32}, random_mha(64, 4, "none")).eval()
    monkeypatch.setattr(kernels, "DEVICES", {"cuda", "cpu"})
    q, latent = torch.randn(2, 1, 4, 32), torch.randn(2, 8, 32)
    assert layer._decode_kernel_takes(q, latent, latent, None)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not layer._decode_kernel_takes(q, latent, latent, None)
