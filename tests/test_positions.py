"""The Transformer-XL skew as a strided view must equal the pad/reshape/slice skew the backbones run."""

import pytest
import torch
from torch import nn

from asr_attention.attention.positions import MASK_ALIGN, skewed_scores


def reference_skew(q, p):
    """SpeechBrain RelPosMHAXL's rel_shift of q·p, written out as the backbones do it (two copies)."""
    scores = torch.matmul(q, p)
    b, h, t, n = scores.shape
    scores = nn.functional.pad(scores, (1, 0)).view(b, h, n + 1, t)
    return scores[:, :, 1:].reshape(b, h, t, n)[..., :t]


@pytest.mark.parametrize("t", [1, 2, 7, 16, 17, 33, 100])
def test_skewed_view_equals_the_copying_skew(t):
    torch.manual_seed(t)
    q, p = torch.randn(2, 3, t, 8), torch.randn(1, 3, 8, 2 * t - 1)
    view = skewed_scores(q, p)
    assert view.shape == (2, 3, t, t)
    torch.testing.assert_close(view, reference_skew(q, p), rtol=0, atol=1e-5)
    # i - j is the relative position: entry (i, j) is q_i · p[T-1-i+j]
    i, j = min(t - 1, 3), 0
    torch.testing.assert_close(view[1, 2, i, j], q[1, 2, i] @ p[0, 2, :, t - 1 - i + j])


@pytest.mark.parametrize("t", [5, 999, 1000])
def test_skewed_view_rows_are_aligned_for_sdpa(t):
    view = skewed_scores(torch.zeros(1, 1, t, 4), torch.zeros(1, 1, 4, 2 * t - 1))
    assert view.stride(-1) == 1 and view.stride(-2) % MASK_ALIGN == 0 and view.storage_offset() % MASK_ALIGN == 0


def test_skewed_view_backpropagates_like_the_copying_skew():
    q = torch.randn(2, 2, 9, 4, dtype=torch.double, requires_grad=True)
    p = torch.randn(1, 2, 4, 17, dtype=torch.double, requires_grad=True)
    weights = torch.randn(2, 2, 9, 9, dtype=torch.double)
    grads = torch.autograd.grad((skewed_scores(q, p) * weights).sum(), (q, p))
    expected = torch.autograd.grad((reference_skew(q, p) * weights).sum(), (q, p))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
