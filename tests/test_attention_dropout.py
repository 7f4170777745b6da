"""The original layer's attention dropout survives conversion: carried by the adapters into CanonicalMHA and applied
by the variants on the attention weights, in training mode only."""

import dataclasses

import pytest
import torch

from asr_attention.attention import build_attention, random_mha, relative_error
from asr_attention.attention.mha import MultiHeadAttention

from test_attention import inputs
from test_backbones import HF_CASES, batch, hf_cfg, make, sb_cfg

P = 0.3
CASES = {**{k: hf_cfg(**v, attention_dropout=P) for k, v in HF_CASES.items()}, "branchformer": sb_cfg(dropout=P)}


def first_attention_call(backbone):
    """(original module, args, kwargs) of the first attention call of a forward over the test batch."""
    calls = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, kw: calls.append((mod, a, kw)), with_kwargs=True)
             for _, _, m in backbone.attention_sites()]
    with torch.no_grad():
        backbone(*batch())
    for h in hooks:
        h.remove()
    return calls[0]


@pytest.mark.parametrize("case", list(CASES))
def test_mha_equals_the_original_in_train_mode_under_one_seed(case):
    """On CPU both draw their dropout mask over the same (B, H, T, S) weights in the same order (SDPA's math
    kernel, or the original's nn.Dropout after softmax), so one seed gives the same output."""
    backbone = make(CASES[case])
    original, args, kwargs = first_attention_call(backbone)
    variant = MultiHeadAttention(backbone.to_canonical(original))
    assert variant.dropout == P
    wrapped = backbone.wrap(variant)
    original.train(), wrapped.train()
    with torch.no_grad():
        torch.manual_seed(0)
        ref, _ = original(*args, **kwargs)
        torch.manual_seed(0)
        out, _ = wrapped(*args, **kwargs)
        wrapped.eval()
        without, _ = wrapped(*args, **kwargs)
    pad = backbone.variant_inputs(args, kwargs)["key_padding_mask"]
    assert relative_error(ref, out, pad) <= 1e-6
    assert relative_error(ref, without, pad) > 1e-2  # the dropout is really drawn


@pytest.mark.parametrize("cfg", [{"name": "gqa", "num_kv_heads": 4}, {"name": "mla", "latent_dim": 64}],
                         ids=["gqa g=H", "mla r=d"])
@pytest.mark.parametrize("causal", [False, True])
def test_exact_conversions_drop_as_mha_does(cfg, causal):
    mha = dataclasses.replace(random_mha(64, 4), dropout=P)
    x, pad, _ = inputs("none")
    outs = []
    for layer in (build_attention({"name": "mha"}, mha), build_attention(cfg, mha)):
        torch.manual_seed(0)
        outs.append(layer.train()(x, pad, causal=causal)[0])
    assert relative_error(outs[0], outs[1], pad) <= 1e-5
    assert relative_error(outs[0], build_attention(cfg, mha).eval()(x, pad, causal=causal)[0], pad) > 1e-2


def test_mla_latent_space_steps_drop_too():
    mha = dataclasses.replace(random_mha(64, 4), dropout=P)
    layer = build_attention({"name": "mla", "latent_dim": 16}, mha)
    x, _, _ = inputs("none")
    _, cache = layer(x[:, :-1], use_cache=True, causal=True)
    with torch.no_grad():
        step = [layer.train(mode)(x[:, -1:], cache=cache, causal=True)[0] for mode in (False, True)]
    assert relative_error(step[0], step[1]) > 1e-2


def test_linear_attention_has_no_weights_to_drop():
    """Documented: linear attention forms no attention weights; train and eval mode give the same output."""
    mha = dataclasses.replace(random_mha(64, 4), dropout=P)
    layer = build_attention({"name": "linear", "feature_map": "elu"}, mha)
    x, pad, _ = inputs("none")
    assert layer.dropout == P
    assert torch.equal(layer.train()(x, pad)[0], layer.eval()(x, pad)[0])


def test_dropout_probability_is_checked():
    with pytest.raises(ValueError, match="dropout=1.0"):
        dataclasses.replace(random_mha(64, 4), dropout=1.0)
