"""Position schemes shared by every variant: Transformer-XL relative bias and rotary-on-inputs.

Both act on Q (and, for rotary, K inputs) only, never on cached K/V, which is why GQA and MLA keep them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .canonical import CanonicalMHA


# SDPA's memory-efficient kernel reads an additive mask in place when its rows start on 16-element boundaries;
# otherwise it pads (copies) the whole (B, H, T, T) mask first.
MASK_ALIGN = 16


def skewed_scores(q: Tensor, p: Tensor) -> Tensor:
    """Scores of q (B, H, T, hd) against relative positions p (1, H, hd, 2T-1), ordered T-1 … -(T-1), as a
    (B, H, T, T) view against keys: out[i, j] = (q_i · p[T-1-i+j]).

    The Transformer-XL skew (SpeechBrain RelPosMHAXL and HF's conformer "relative" pad, reshape and slice the
    scores, copying them twice) as a strided view of the one matmul output: row i starts one column earlier than
    row i-1, so its row stride is width - 1. Zero position columns around the real ones (never read) make that
    stride and the first read element 16-aligned.
    """
    t = q.shape[-2]
    lead = -(t - 1) % MASK_ALIGN
    width = lead + 2 * t - 1
    width += (1 - width) % MASK_ALIGN
    p = nn.functional.pad(p, (lead, width - lead - (2 * t - 1)))
    full = torch.matmul(q, p)  # (B, H, T, width), a new contiguous tensor
    b, h = full.shape[:2]
    return full.as_strided((b, h, t, t), (h * t * width, t * width, width - 1, 1),
                           full.storage_offset() + lead + t - 1)


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
        return q + self.pos_bias_u.view(1, self.num_heads, 1, self.head_dim)

    def projected(self, pos: Tensor, frames: int) -> Tensor:
        """linear_pos(pos) as a (2T-1, H, hd) view, for pos: (1, 2T-1, d) relative embeddings."""
        if pos is None or pos.shape[0] != 1 or pos.shape[-2] != 2 * frames - 1:
            got = None if pos is None else tuple(pos.shape)
            raise ValueError(f"xl attention needs pos of shape (1, {2 * frames - 1}, d); got {got}")
        return self.linear_pos(pos[0]).view(-1, self.num_heads, self.head_dim)

    def score_bias(self, q: Tensor, pos: Tensor, scale: float) -> Tensor:
        """Scaled position scores (B, H, T, T) for q: (B, H, T, hd), pos: (1, 2T-1, d)."""
        p = self.projected(pos, q.shape[-2]).permute(1, 2, 0)[None]
        q_v = (q + self.pos_bias_v.view(1, self.num_heads, 1, self.head_dim)) * scale
        return skewed_scores(q_v, p)


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
    """SpeechBrain convention (True = padding) -> an SDPA attn_mask: bool keep-mask, or additive float with bias.
    Written in as few ops as it takes: a batch-1 forward is bound by the host's time per op."""
    if key_padding_mask is None:
        return bias
    pad = key_padding_mask.reshape(key_padding_mask.shape[0], 1, 1, -1)
    if bias is None:
        return pad.logical_not()
    return bias.masked_fill(pad, float("-inf"))


def causal_keep(mask: Tensor | None, queries: int, keys: int, device) -> Tensor | None:
    """A bool keep-mask where query i (the last `queries` of `keys` positions) sees keys up to its own position,
    combined with an SDPA keep-mask (B, 1, 1, S) if given."""
    if queries == 1:  # one new token sees every key: no mask, so SDPA may take its flash kernel while decoding
        return mask
    keep = torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)
    return keep if mask is None else mask & keep
