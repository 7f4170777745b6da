"""Conversion fidelity: how far each converted layer's output is from the original's on the same inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def relative_error(reference: Tensor, candidate: Tensor, key_padding_mask: Tensor | None = None) -> float:
    """||candidate - reference|| / ||reference|| over the non-padded frames."""
    if key_padding_mask is not None:
        keep = ~key_padding_mask
        reference, candidate = reference[keep], candidate[keep]
    return ((candidate - reference).norm() / reference.norm().clamp_min(1e-12)).item()


@torch.no_grad()
def fidelity_table(
    originals: Sequence[nn.Module],
    converted: Sequence[nn.Module],
    inputs: Sequence[dict],
) -> list[dict]:
    """One row per layer. Each `inputs[i]` holds that layer's x, key_padding_mask and pos (captured from the
    unpatched backbone); originals and converted are variants (the original wrapped as MHA, which tests prove
    equal to the backbone's own module)."""
    rows = []
    for i, (ref, new, kw) in enumerate(zip(originals, converted, inputs, strict=True)):
        y_ref, _ = ref(**kw)
        y_new, _ = new(**kw)
        rows.append({"layer": i, "relative_error": relative_error(y_ref, y_new, kw.get("key_padding_mask"))})
    return rows
