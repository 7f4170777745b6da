"""Feature maps phi for linear attention: softmax(q·k) is replaced by phi(q)·phi(k), which must stay positive."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EluPlusOne(nn.Module):
    """phi(x) = elu(x) + 1 (Katharopoulos et al., 2020)."""

    kernel = "elu"  # the Triton kernel applies it as it loads q and k

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x) + 1


class Relu(nn.Module):
    kernel = "relu"

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class Hedgehog(nn.Module):
    """Learnable per-head map phi(x) = [softmax(Wx), softmax(-Wx)] (Zhang et al., 2024), W initialised to the
    identity so training starts from a plain exponential feature map. Doubles the feature dimension."""

    expansion = 2

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(num_heads, 1, 1))

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, H, hd)
        z = torch.einsum("bthd,hde->bthe", x, self.weight)
        return torch.cat((z.softmax(-1), (-z).softmax(-1)), dim=-1)


FEATURE_MAPS = {"elu": EluPlusOne, "relu": Relu, "hedgehog": Hedgehog}


def build_feature_map(name: str, num_heads: int, head_dim: int) -> nn.Module:
    if name not in FEATURE_MAPS:
        raise ValueError(f"attention.feature_map={name!r} is not one of {sorted(FEATURE_MAPS)}")
    return Hedgehog(num_heads, head_dim) if name == "hedgehog" else FEATURE_MAPS[name]()
