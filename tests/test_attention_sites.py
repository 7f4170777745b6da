"""The three kinds of attention site through the one variant interface: encoder self-attention, causal decoder
self-attention (whole sequence, token by token, prefill chunks) and cross-attention (a cache built once from
memory). Against a reference written here from the canonical weights alone, and each variant against itself."""

import pytest
import torch

from asr_attention.attention import build_attention, cache_nbytes, random_mha, relative_error

from test_attention import inputs

D, H, T, S, B = 64, 4, 7, 9, 3
HD = D // H
EXACT = {  # conversions that must equal MHA
    "mha": {"name": "mha"},
    "gqa g=H": {"name": "gqa", "num_kv_heads": H},
    "mla r=d": {"name": "mla", "latent_dim": D},
}
VARIANTS = {
    "mha": {"name": "mha"},
    "gqa": {"name": "gqa", "num_kv_heads": 2},
    "mla": {"name": "mla", "latent_dim": 16},
    "linear": {"name": "linear", "feature_map": "elu"},
    "hedgehog": {"name": "linear", "feature_map": "hedgehog"},
}
SITES = ["encoder", "causal", "cross"]


def memory_inputs(seed=2):
    """memory (B, S, d) and its key-padding mask: utterance 1 has 3 padded frames, utterance 2 one."""
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(B, S, D, generator=g)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, S - 3:] = True
    pad[2, S - 1:] = True
    return memory, pad


def reference(mha, x, site, memory=None, key_pad=None, groups=H):
    """Per query head h, from the canonical weights: softmax(scale q_h.k_g + mask) v_g with g = h // (H / groups),
    K/V weights mean-pooled over each group of H / groups consecutive heads; then the output projection."""
    source = memory if site == "cross" else x
    q = torch.nn.functional.linear(x, mha.q_weight, mha.q_bias)
    pooled = []
    for w, b in ((mha.k_weight, mha.k_bias), (mha.v_weight, mha.v_bias)):
        w_g = w.view(groups, H // groups, HD, D).mean(1).reshape(groups * HD, D)
        b_g = b.view(groups, H // groups, HD).mean(1).reshape(groups * HD)
        pooled.append(torch.nn.functional.linear(source, w_g, b_g))
    k, v = pooled
    t, s = x.shape[1], source.shape[1]
    heads = []
    for h in range(H):
        g = h // (H // groups)
        scores = q[..., h * HD:(h + 1) * HD] @ k[..., g * HD:(g + 1) * HD].transpose(1, 2) * mha.scale
        if site == "causal":
            scores = scores.masked_fill(~torch.ones(t, s, dtype=torch.bool).tril(), float("-inf"))
        if key_pad is not None:
            scores = scores.masked_fill(key_pad[:, None, :], float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., g * HD:(g + 1) * HD])
    return torch.nn.functional.linear(torch.cat(heads, -1), mha.o_weight, mha.o_bias)


def call(layer, x, site, memory=None, pad=None, **kw):
    """The uncached call for a site: pad is x's padding (self-attention) or memory's (cross-attention)."""
    if site == "cross":
        return layer(x, pad, memory=memory, **kw)
    return layer(x, pad, causal=site == "causal", **kw)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", list(EXACT))
@pytest.mark.parametrize("cached", [False, True])
def test_exact_conversions_equal_the_reference(site, name, cached):
    """MHA equals the reference written above; GQA with g = H and MLA at r = d equal it too; building a cache
    (use_cache) changes nothing."""
    mha = random_mha(D, H)
    layer = build_attention(EXACT[name], mha)
    x, x_pad, _ = inputs("none", batch=B, t=T, d=D, h=H)
    memory, memory_pad = memory_inputs()
    pad = memory_pad if site == "cross" else x_pad
    out, cache = call(layer, x, site, memory, pad, use_cache=cached)
    assert (cache is not None) == cached
    ref = reference(mha, x, site, memory, pad)
    assert ref.shape == out.shape
    err = relative_error(ref, out)
    assert err <= 1e-5, f"{name} {site}: {err:.2e}"


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("position", ["none", "rotary_input"])
@pytest.mark.parametrize("calls", [
    [(i, i + 1) for i in range(T)],  # token by token
    [(0, 3), (3, 6), (6, 7)],  # a prompt, then a chunk against the cache (causal within it), then a token
])
def test_token_by_token_decoding_equals_the_causal_whole_sequence(name, position, calls):
    """Frames fed in calls against the growing cache: every output equals the uncached causal pass over the
    whole sequence, padding included (right-padded)."""
    layer = build_attention(VARIANTS[name], random_mha(D, H, position))
    x, pad, pos = inputs(position, batch=B, t=T, d=D, h=H)

    def pos_of(a, b):
        return None if pos is None else pos[:, a:b]

    whole, none = layer(x, pad, pos, causal=True)
    assert none is None
    steps, cache = [], None
    for a, b in calls:
        out, cache = layer(x[:, a:b], pad[:, :b], pos_of(a, b), cache=cache, use_cache=True, causal=True)
        steps.append(out)
    err = relative_error(whole, torch.cat(steps, dim=1))
    assert err <= 1e-5, f"{name}: {err:.2e}"
    assert cache_nbytes(cache) == layer.cache_bytes(T, B, torch.float32)
    # a causal pass is not the non-causal one: the comparison can tell them apart
    assert relative_error(layer(x, pad, pos)[0], whole, pad) > 1e-2


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cross_attention_cache_is_built_once_and_reused_unchanged(name):
    layer = build_attention(VARIANTS[name], random_mha(D, H))
    x, _, _ = inputs("none", batch=B, t=T, d=D, h=H)
    memory, memory_pad = memory_inputs()
    whole, _ = layer(x, memory_pad, memory=memory)
    first, cache = layer(x[:, :1], memory_pad, memory=memory, use_cache=True)
    assert cache.from_memory and cache_nbytes(cache) == layer.cache_bytes(S, B, torch.float32)
    held = {k: t.clone() for k, t in cache.items()}
    steps = [first]
    for i in range(1, T):
        out, again = layer(x[:, i:i + 1], memory_pad, cache=cache, use_cache=True)
        assert again is cache
        steps.append(out)
    assert all(torch.equal(held[k], cache[k]) for k in held), "the cross cache changed"
    err = relative_error(whole, torch.cat(steps, dim=1))
    assert err <= 1e-5, f"{name}: {err:.2e}"


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("cached", [False, True])
def test_padded_memory_frames_change_nothing(name, cached):
    layer = build_attention(VARIANTS[name], random_mha(D, H))
    x, _, _ = inputs("none", batch=B, t=T, d=D, h=H)
    memory, memory_pad = memory_inputs()
    scrambled = torch.where(memory_pad[..., None], 100 * torch.randn(B, S, D), memory)
    outs = []
    for m in (memory, scrambled):
        if cached:
            _, cache = layer(x[:, :0], memory_pad, memory=m, use_cache=True)
            outs.append(layer(x, memory_pad, cache=cache)[0])
        else:
            outs.append(layer(x, memory_pad, memory=m)[0])
    assert relative_error(outs[0], outs[1]) <= 1e-6, name
    # and the mask is what makes it so: without it, the scrambled frames are read
    assert relative_error(layer(x, memory=memory)[0], layer(x, memory=scrambled)[0]) > 1e-2


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measured_cache_bytes_equal_analytic_at_every_site(name, dtype):
    layer = build_attention(VARIANTS[name], random_mha(D, H)).to(dtype)
    x, pad, _ = inputs("none", batch=B, t=T, d=D, h=H)
    memory, memory_pad = memory_inputs()
    x, memory = x.to(dtype), memory.to(dtype)
    _, encoder = layer(x, pad, use_cache=True)
    _, decoder = layer(x[:, :2], pad[:, :2], use_cache=True, causal=True)
    _, decoder = layer(x[:, 2:], pad, cache=decoder, use_cache=True, causal=True)
    _, cross = layer(x[:, :1], memory_pad, memory=memory, use_cache=True)
    for cache, frames in ((encoder, T), (decoder, T), (cross, S)):
        assert cache_nbytes(cache) == layer.cache_bytes(frames, B, dtype), name
        assert all(t.dtype == dtype for t in cache.values())


def test_mla_decode_steps_attend_in_latent_space(spy):
    """After the first token, each step (self and cross) reads the latent through the absorbed path and never
    runs the up-projection; the result equals the uncached pass (the test above), so both paths agree."""
    layer = build_attention(VARIANTS["mla"], random_mha(D, H))
    x, _, _ = inputs("none", batch=B, t=T, d=D, h=H)
    memory, memory_pad = memory_inputs()
    _, own = layer(x[:, :1], use_cache=True, causal=True)
    _, cross = layer(x[:, :1], memory_pad, memory=memory, use_cache=True)
    up_calls = []
    layer.kv_up.register_forward_hook(lambda *args: up_calls.append(1))
    absorbed = spy(layer, "absorbed")
    for i in range(1, T):
        _, own = layer(x[:, i:i + 1], cache=own, use_cache=True, causal=True)
        layer(x[:, i:i + 1], memory_pad, cache=cross)
    assert not up_calls and len(absorbed) == 2 * (T - 1)
    assert list(own) == ["latent"] and own["latent"].shape == (B, T, 16)


@pytest.mark.parametrize("name", ["mha", "linear"])
def test_bad_site_calls_are_refused(name):
    layer = build_attention(VARIANTS[name], random_mha(D, H))
    x, _, _ = inputs("none", batch=B, t=T, d=D, h=H)
    memory, _ = memory_inputs()
    _, cache = layer(x, memory=memory, use_cache=True)
    with pytest.raises(ValueError, match="not both"):
        layer(x, memory=memory, cache=cache)
    with pytest.raises(ValueError, match="cannot be causal"):
        layer(x, memory=memory, causal=True)
    xl = build_attention(VARIANTS[name], random_mha(D, H, "xl"))
    with pytest.raises(ValueError, match="position 'none'"):
        xl(x, memory=memory)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("groups", [1, 2])
def test_gqa_query_head_reads_its_groups_kv_head(site, groups):
    """Query head h reads K/V head h // (H / g), pooled over that run of consecutive heads: against the reference
    written above, and against SDPA's enable_gqa on the layer's own projections (the same grouping)."""
    mha = random_mha(D, H)
    layer = build_attention({"name": "gqa", "num_kv_heads": groups}, mha)
    x, x_pad, _ = inputs("none", batch=B, t=T, d=D, h=H)
    memory, memory_pad = memory_inputs()
    pad = memory_pad if site == "cross" else x_pad
    out, _ = call(layer, x, site, memory, pad)
    err = relative_error(reference(mha, x, site, memory, pad, groups=groups), out)
    assert err <= 1e-5, f"against the per-head reference: {err:.2e}"
    source = memory if site == "cross" else x
    q = layer.q_proj(x).view(B, T, H, HD).transpose(1, 2)
    k, v = (p(source).view(B, -1, groups, HD).transpose(1, 2) for p in (layer.k_proj, layer.v_proj))
    keep = ~pad[:, None, None, :]
    if site == "causal":
        keep = keep & torch.ones(T, T, dtype=torch.bool).tril()
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=mha.scale,
                                                            enable_gqa=True)
    err = relative_error(layer.o_proj(sdpa.transpose(1, 2).flatten(2)), out)
    assert err <= 1e-5, f"against SDPA's enable_gqa: {err:.2e}"
