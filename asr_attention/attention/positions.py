"""Position schemes shared by every variant: Transformer-XL relative bias and rotary-on-inputs.

Both act on Q (and, for rotary, K inputs) only, never on cached K/V, which is why GQA and MLA keep them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .canonical import CanonicalMHA


def rel_shift(scores: Tensor) -> Tensor:
    """(B, H, T, 2T-1) scores against relative positions T-1 … -(T-1) -> (B, H, T, T) scores against keys.

    The Transformer-XL skew, as both SpeechBrain RelPosMHAXL and HF's conformer "relative" attention do it.
    """
    b, h, t, p = scores.shape
    scores = nn.functional.pad(scores, (1, 0)).view(b, h, p + 1, t)
    return scores[:, :, 1:].reshape(b, h, t, p)[..., :t]


class XLPosition(nn.Module):
    """The Transformer-XL terms: u is added to q for the content score, (q + v)·linear_pos(pos) is a score bias."""

    def __init__(self, mha: CanonicalMHA):
        super().__init__()
        self.num_heads, self.head_dim = mha.num_heads, mha.head_dim
        self.pos_bias_u = nn.Parameter(mha.pos_bias_u.clone())
        self.pos_bias_v = nn.Parameter(mha.pos_bias_v.clone())
        self.linear_pos = nn.Linear(mha.d_model, mha.d_model, bias=False)
        self.linear_pos.weight.data.copy_(mha.linear_pos_weight)

    def content_query(self, q: Tensor) -> Tensor:
        """q: (B, H, T, hd) -> q + u."""
        return q + self.pos_bias_u[None, :, None, :]

    def score_bias(self, q: Tensor, pos: Tensor, scale: float) -> Tensor:
        """Scaled position scores (B, H, T, T) for q: (B, H, T, hd), pos: (1, 2T-1, d)."""
        if pos is None or pos.shape[-2] != 2 * q.shape[-2] - 1:
            got = None if pos is None else tuple(pos.shape)
            raise ValueError(f"xl attention needs pos of shape (1, {2 * q.shape[-2] - 1}, d); got {got}")
        p = self.linear_pos(pos).view(pos.shape[0], -1, self.num_heads, self.head_dim).permute(0, 2, 3, 1)
        q_v = (q + self.pos_bias_v[None, :, None, :]) * scale
        return rel_shift(torch.matmul(q_v, p))


def rotate_inputs(x: Tensor, pos: Tensor, num_heads: int) -> Tensor:
    """Rotary on the inputs of the Q/K projections (HF conformer "rotary"). pos = stack(cos, sin): (2, T, hd)."""
    if pos is None or pos.shape[1] < x.shape[1]:
        raise ValueError(f"rotary attention needs pos = stack(cos, sin) of shape (2, >={x.shape[1]}, head_dim)")
    b, t, d = x.shape
    cos, sin = pos[0, :t, None, :], pos[1, :t, None, :]  # (T, 1, hd): broadcast over heads
    h = x.view(b, t, num_heads, d // num_heads)
    half = h.shape[-1] // 2
    rotated = torch.cat((-h[..., half:], h[..., :half]), dim=-1)
    return (h * cos + rotated * sin).reshape(b, t, d)


def key_padding_to_sdpa(key_padding_mask: Tensor | None, bias: Tensor | None) -> Tensor | None:
    """SpeechBrain convention (True = padding) -> an SDPA attn_mask: bool keep-mask, or additive float with bias."""
    if key_padding_mask is None:
        return bias
    keep = ~key_padding_mask[:, None, None, :]
    if bias is None:
        return keep
    return bias.masked_fill(~keep, float("-inf"))
