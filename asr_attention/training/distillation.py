"""Distillation from the original model (optim.distill_weight): while fine-tuning, each attention site's output is
pulled towards what the unconverted model's same site returns on the same batch.

The teacher is the frozen copy of the backbone taken before conversion (teacher.py: eval mode, never checkpointed,
shared with the other retention terms). Per site the loss is ||student - teacher||^2 / ||teacher||^2
over the rows that are not padding (in Whisper's decoder, teacher forcing's padded positions are left out); the term
is its mean over the sites, scale-free, so one weight suits every backbone. Each model feeds its own sites (the
student's drift from earlier layers counts), which is layer-wise feature distillation, not layer-local attention
transfer.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from ..backbones.patch import valid_frames


class SiteDistillation:
    """teacher: the frozen unconverted backbone (teacher.py's Teacher.model). The student's and the teacher's site
    outputs are appended while `recording` / `recording_teacher` (each may be entered more than once in a step:
    encoder, then decoder), and `compare` turns them into the term and empties both lists."""

    def __init__(self, teacher: Backbone):
        self.teacher = teacher
        self.student_outputs: list[tuple[Tensor, Tensor | None]] = []
        self.teacher_outputs: list[tuple[Tensor, Tensor | None]] = []

    def clear(self) -> None:
        self.student_outputs, self.teacher_outputs = [], []

    @contextmanager
    def recording(self, student: Backbone):
        """Within: every call of the student's attention sites is recorded, output (B, T, d) and padding mask."""
        with _record_sites(student, self.student_outputs):
            yield

    @contextmanager
    def recording_teacher(self, student: Backbone):
        """Within: every call of the teacher's sites that the student converted (the same names) is recorded."""
        modules = [self.teacher.get_submodule(n) for n in site_names(student)]
        with _record_sites(self.teacher, self.teacher_outputs, modules):
            yield

    def loss(self, student: Backbone, waves: Tensor, wave_lengths: Tensor, targets: Tensor | None = None) -> Tensor:
        """The term over the sites the student called while `recording`, against one teacher pass over the batch
        (its encoder, and its decoder teacher-forced on targets)."""
        self.teacher_outputs = []
        with torch.no_grad(), self.recording_teacher(student):
            self.teacher.calibration_pass(waves, wave_lengths, targets)
        return self.compare()

    def compare(self) -> Tensor:
        """The mean relative squared error over the recorded sites, student against teacher; both lists emptied."""
        student, teacher = self.student_outputs, self.teacher_outputs
        self.clear()
        if len(teacher) != len(student):
            raise RuntimeError(f"distillation: the student called {len(student)} attention sites, "
                               f"the teacher {len(teacher)}")
        errors = []
        for (s, pad), (t, _) in zip(student, teacher):
            s, t = valid_frames(s, pad), valid_frames(t.to(s.dtype), pad)
            errors.append((s - t).float().pow(2).sum() / t.float().pow(2).sum().clamp_min(1e-12))
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
