"""The canonical description of one pretrained multi-head attention layer.

Backbone adapters turn each original attention module into this; variants are built from it and never see a
backbone's quirks (fused or interleaved projections, score scale, where positions enter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

# none: no position term inside attention (HF wav2vec2, positions come from a conv embedding before the layers).
# xl: Transformer-XL relative: score = (q+u)·k + rel_shift((q+v)·P), P = linear_pos(pos_emb) (SpeechBrain
#     RelPosMHAXL, HF conformer "relative"). The position term uses neither K nor V.
# rotary_input: rotary applied to the *inputs* of the Q and K projections (HF conformer "rotary").
Position = Literal["none", "xl", "rotary_input"]


@dataclass
class CanonicalMHA:
    """Q/K/V/O as nn.Linear-style (out, in) = (d, d) weights and (d,) biases (None = no bias)."""

    q_weight: Tensor
    k_weight: Tensor
    v_weight: Tensor
    o_weight: Tensor
    q_bias: Tensor | None
    k_bias: Tensor | None
    v_bias: Tensor | None
    o_bias: Tensor | None
    num_heads: int
    scale: float
    position: Position = "none"
    pos_bias_u: Tensor | None = None  # (H, hd), xl only
    pos_bias_v: Tensor | None = None  # (H, hd), xl only
    linear_pos_weight: Tensor | None = None  # (d, d), xl only, no bias
    dropout: float = 0.0  # the original's dropout on attention weights (training mode only)

    @property
    def d_model(self) -> int:
        return self.q_weight.shape[0]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def __post_init__(self):
        d = self.q_weight.shape[0]
        for name in ("q_weight", "k_weight", "v_weight", "o_weight"):
            if getattr(self, name).shape != (d, d):
                raise ValueError(f"CanonicalMHA.{name} must be ({d}, {d}), got {tuple(getattr(self, name).shape)}")
        if d % self.num_heads:
            raise ValueError(f"CanonicalMHA: num_heads={self.num_heads} does not divide d_model={d}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CanonicalMHA.dropout={self.dropout} must be in [0, 1)")
        if self.position == "xl" and any(
            t is None for t in (self.pos_bias_u, self.pos_bias_v, self.linear_pos_weight)
        ):
            raise ValueError("CanonicalMHA: position='xl' needs pos_bias_u, pos_bias_v and linear_pos_weight")


def random_mha(
    d_model: int, num_heads: int, position: Position = "none", bias: bool = True, seed: int = 0
) -> CanonicalMHA:
    """A randomly initialised description, for tests, cache reports and random-weight benchmarks."""
    g = torch.Generator().manual_seed(seed)
    hd = d_model // num_heads

    def w(*shape):
        return torch.randn(*shape, generator=g) / shape[-1] ** 0.5

    def b():
        return 0.1 * torch.randn(d_model, generator=g) if bias else None

    xl = position == "xl"
    return CanonicalMHA(
        w(d_model, d_model), w(d_model, d_model), w(d_model, d_model), w(d_model, d_model),
        b(), b(), b(), b(),
        num_heads=num_heads,
        scale=hd**-0.5,
        position=position,
        pos_bias_u=0.1 * torch.randn(num_heads, hd, generator=g) if xl else None,
        pos_bias_v=0.1 * torch.randn(num_heads, hd, generator=g) if xl else None,
        linear_pos_weight=w(d_model, d_model) if xl else None,
    )
