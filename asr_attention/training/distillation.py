"""Distillation from the original model (optim.distill_weight): while fine-tuning, each attention site's output is
pulled towards what the unconverted model's same site returns on the same batch.

The teacher is a frozen copy of the backbone taken before conversion, in eval mode (no dropout), kept outside the
LightningModule's submodules: it is never saved in a checkpoint (a resumed run rebuilds it from the pretrained
weights, as the first start did) and DDP never sees it. Per site the loss is ||student - teacher||^2 / ||teacher||^2
over the rows that are not padding (in Whisper's decoder, teacher forcing's padded positions are left out); the term
is its mean over the sites, scale-free, so one weight suits every backbone. Each model feeds its own sites (the
student's drift from earlier layers counts), which is layer-wise feature distillation, not layer-local attention
transfer.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from ..backbones.patch import valid_frames


class SiteDistillation:
    def __init__(self, backbone: Backbone):
        self.teacher = copy.deepcopy(backbone).eval().requires_grad_(False)
        self.student_outputs: list[tuple[Tensor, Tensor | None]] = []  # filled while `recording`, emptied by `loss`

    def to(self, device: torch.device) -> SiteDistillation:
        self.teacher.to(device)
        return self

    @contextmanager
    def recording(self, student: Backbone):
        """Within: every call of the student's attention sites is recorded, output (B, T, d) and padding mask."""
        self.student_outputs = []
        with _record_sites(student, self.student_outputs):
            yield

    @torch.no_grad()
    def _teacher_outputs(self, student: Backbone, waves: Tensor, wave_lengths: Tensor,
                         targets: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
        outputs: list = []
        names = site_names(student)
        with _record_sites(self.teacher, outputs, [self.teacher.get_submodule(n) for n in names]):
            self.teacher.calibration_pass(waves, wave_lengths, targets)
        return outputs

    def loss(self, student: Backbone, waves: Tensor, wave_lengths: Tensor, targets: Tensor | None = None) -> Tensor:
        """The mean relative squared error over the sites the student called while `recording`."""
        teacher = self._teacher_outputs(student, waves, wave_lengths, targets)
        if len(teacher) != len(self.student_outputs):
            raise RuntimeError(f"distillation: the student called {len(self.student_outputs)} attention sites, "
                               f"the teacher {len(teacher)}")
        errors = []
        for (s, pad), (t, _) in zip(self.student_outputs, teacher):
            s, t = valid_frames(s, pad), valid_frames(t.to(s.dtype), pad)
            errors.append((s - t).float().pow(2).sum() / t.float().pow(2).sum().clamp_min(1e-12))
        self.student_outputs = []
        return torch.stack(errors).mean()


def site_names(backbone: Backbone) -> list[str]:
    """The qualified names of the backbone's attention sites, the same before and after patching."""
    ids = {id(module): i for i, (_, _, module) in enumerate(backbone.attention_sites())}
    found = sorted((ids[id(m)], name) for name, m in backbone.named_modules() if id(m) in ids)
    return [name for _, name in found]


@contextmanager
def _record_sites(backbone: Backbone, into: list, modules: list[nn.Module] | None = None):
    """Append (output, its padded rows) of each call of `modules` (default: the backbone's attention sites)."""
    modules = modules if modules is not None else [m for _, _, m in backbone.attention_sites()]

    def hook(module, args, kwargs, output):
        into.append((output[0], backbone.site_padding(module, args, kwargs)))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
