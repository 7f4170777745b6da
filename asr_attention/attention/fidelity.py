"""How far a converted layer's output is from the original's on the same inputs (the per-layer table of a run:
`backbones.patch.fidelity`)."""

from __future__ import annotations

from torch import Tensor


def relative_error(reference: Tensor, candidate: Tensor, key_padding_mask: Tensor | None = None) -> float:
    """||candidate - reference|| / ||reference|| over the non-padded frames."""
    if key_padding_mask is not None:
        keep = ~key_padding_mask
        reference, candidate = reference[keep], candidate[keep]
    return ((candidate - reference).norm() / reference.norm().clamp_min(1e-12)).item()
