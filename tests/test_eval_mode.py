"""backbones/eval_mode: measuring or decoding inside training turns dropout off for the block and then gives every
submodule back the mode it had, a frozen part kept in eval mode included (module.train(True) would flip it)."""

import pytest
import torch
from torch import nn

from asr_attention.backbones.eval_mode import eval_mode


def model_with_a_frozen_part() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    model.train()
    model[2].eval()  # e.g. a frozen encoder: no dropout while the rest trains
    return model


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_the_block_runs_in_eval_mode_and_every_submodule_gets_its_own_mode_back():
    model = model_with_a_frozen_part()
    before = modes(model)
    x = torch.ones(8, 4)
    with eval_mode(model):
        assert not any(modes(model))
        assert torch.equal(model(x), model(x))  # no dropout inside
    assert modes(model) == before and before.count(False) == 3


def test_modes_come_back_when_the_block_raises():
    model = model_with_a_frozen_part()
    before = modes(model)
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("decoding failed")
    assert modes(model) == before
