"""Distillation at Whisper's decoder output (optim.kl_weight): KL(teacher || student) between the unconverted
model's and the converted model's next-token distributions, teacher-forced on the same tokens.

Both distributions are softened at temperature T and the KL is scaled by T^2 (Hinton et al., 2015), so the
gradient's size does not shrink as T grows and one weight suits every T. The term is the mean over the target
positions the cross-entropy counts (labels != -100: each text token and <|endoftext|>; the prompt's first position
and teacher forcing's padding are left out).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..backbones.whisper.tokens import IGNORE


def decoder_kl(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """student_logits, teacher_logits (B, T, V); labels (B, T), IGNORE where a position predicts nothing. -> the
    mean over the other positions of T^2 x KL(softmax(teacher / T) || softmax(student / T))."""
    keep = labels != IGNORE
    student = F.log_softmax(student_logits[keep].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits[keep].float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, reduction="sum", log_target=True)
    return kl * temperature**2 / keep.sum().clamp_min(1)
