"""The unconverted model as teacher: one frozen copy of the backbone, taken before conversion, that every retention
term reads (distillation.py's per-site term, output_distillation.py's KL at the decoder output, teacher_text.py's
transcripts).

It is a plain object, not an nn.Module, so the LightningModule does not adopt it as a submodule: it is never saved
in a checkpoint (a resumed run rebuilds it from the pretrained weights, as the first start did), DDP never sees it,
and module.train() never reaches it. It stays in eval mode (no dropout, no SpecAugment) and takes no gradient.
"""

from __future__ import annotations

import copy

import torch

from ..backbones import Backbone


class Teacher:
    def __init__(self, backbone: Backbone):
        self.model = copy.deepcopy(backbone).eval().requires_grad_(False)

    def to(self, device: torch.device) -> Teacher:
        self.model.to(device)
        return self
