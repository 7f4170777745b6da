"""Evaluation mode for a block of measuring or decoding inside training: dropout off, then every submodule back in
the mode it had (not `module.train(was_training)`, which would also flip a submodule kept in eval mode on purpose)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
