"""Decoding with every variant's own caches on tiny random Whisper models (fp32, CPU), through the one loop over
each cache object: cached = uncached (tokens and logits), batched = one by one, beam search sharing each
utterance's cross cache = beams with their own copies, and the preallocated cache (its step eager here, compiled,
or a CUDA graph on a GPU) = the growing one, for greedy decoding, beam search and the temperature fallback; and
`transcribe`'s fast path, which keeps preallocated caches between batches."""

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch

from asr_attention.backbones import patch_attention
from asr_attention.generation.beam import BeamSearchDecoder, beam_search
from asr_attention.generation.caches import GrowingCache
from asr_attention.generation.decoders import OursGreedy
from asr_attention.generation.decoding import DecodingOptions, sample, transcribe
from asr_attention.generation.fast_path import cache_pool, loop_cache
from asr_attention.generation.logit_filters import suppress_mask
from asr_attention.generation.loop import decode
from asr_attention.generation.static_decode import PreallocatedCache
from asr_attention.generation.whisper_sizes import random_whisper

VARIANTS = {
    "mha": None,
    "gqa": {"name": "gqa", "num_kv_heads": 2},
    "mla": {"name": "mla", "latent_dim": 16},  # d/4
    "linear": {"name": "linear", "feature_map": "elu"},
}
SITES = {"self": ("decoder_self",), "cross": ("cross",), "both": ("decoder_self", "cross")}
STEPS = 10


@pytest.fixture(scope="module")
def model():
    return random_whisper("test", torch.device("cpu"), torch.float32, init_std=0.3)


def memory_for(model, batch, seed=1):
    return torch.randn(batch, 300, model.config.d_model, generator=torch.Generator().manual_seed(seed))  # any length


def backbone_for(model, variant, sites=SITES["both"]):
    return OursGreedy(model, VARIANTS[variant], sites).backbone


def prompt(backbone, batch):
    return torch.tensor(backbone.tokens.prompt).repeat(batch, 1)


def cached_logits(backbone, memory, tokens):
    """Next-token logits (B, n, V) before each of `tokens` (B, n), fed one at a time through the caches."""
    cache = backbone.new_cache()
    out = [backbone.decode(prompt(backbone, memory.shape[0]), memory, cache)[:, -1]]
    for i in range(tokens.shape[1] - 1):
        out.append(backbone.decode(tokens[:, i: i + 1], None, cache)[:, -1])
    return torch.stack(out, 1)


def uncached_logits(backbone, memory, tokens):
    p = len(backbone.tokens.prompt)
    seq = torch.cat((prompt(backbone, memory.shape[0]), tokens[:, :-1]), 1)
    return backbone.decode(seq, memory, None)[:, p - 1:]


def tokens_of(hypotheses):
    return torch.tensor([h.tokens for h in hypotheses])


def preallocated(backbone, batch, steps=STEPS, **options):
    """Slots for the prompt and every token but the last (emitted, never fed)."""
    return PreallocatedCache(backbone, batch, len(backbone.tokens.prompt) + steps - 1, **options)


def recording_logits(cache):
    """cache.logits, each step's result also kept (cloned: a graph replay overwrites its output) in the list
    returned."""
    kept, real = [], cache.logits

    def logits(tokens, memory=None):
        out = real(tokens, memory)
        kept.append(out.clone())
        return out

    cache.logits = logits
    return kept


@pytest.mark.parametrize("sites", SITES)
@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_cached_equals_uncached(model, variant, sites):
    backbone = backbone_for(model, variant, SITES[sites])
    memory = memory_for(model, 2)
    cached = tokens_of(sample(backbone, memory, GrowingCache(backbone), STEPS))
    uncached = tokens_of(sample(backbone, memory, None, STEPS))
    assert cached.shape == (2, STEPS) and torch.equal(cached, uncached)
    assert cached.unique().numel() > 4
    ours, reference = cached_logits(backbone, memory, cached), uncached_logits(backbone, memory, cached)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_batched_equals_one_by_one(model, variant):
    backbone = backbone_for(model, variant)
    memory = memory_for(model, 3)
    batched = tokens_of(sample(backbone, memory, GrowingCache(backbone), STEPS))
    for row in range(3):
        alone = tokens_of(sample(backbone, memory[row: row + 1], GrowingCache(backbone), STEPS))
        assert torch.equal(batched[row: row + 1], alone), row


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_beam_search_shares_the_cross_cache(model, variant):
    backbone = backbone_for(model, variant)
    memory = memory_for(model, 2)
    shared = beam_search(backbone, memory, beams=4, max_tokens=STEPS)
    copied = beam_search(backbone, memory, beams=4, max_tokens=STEPS, share_cross=False)
    assert shared.tokens == copied.tokens
    torch.testing.assert_close(shared.scores, copied.scores, rtol=1e-5, atol=1e-5)
    for layer_shared, layer_copied in zip(shared.cache.layers, copied.cache.layers):
        for name, t in layer_shared.cross.items():
            assert t.shape[0] == 2 and layer_copied.cross[name].shape[0] == 2 * 4, name  # one per utterance
            torch.testing.assert_close(t, layer_copied.cross[name][::4])
        assert all(t.shape[0] == 2 * 4 for t in layer_shared.self_attn.values())  # one per beam
    # each score is its tokens' log-probability re-read without caches: the self caches followed their beams
    tokens = torch.tensor(shared.tokens)
    assert tokens.shape == (2, STEPS)
    never, first = suppress_mask(backbone.tokens, model.config.vocab_size, "cpu")
    logits = uncached_logits(backbone, memory, tokens).float()
    logits[:, 0] = logits[:, 0].masked_fill(first, float("-inf"))
    logits[:, 1:] = logits[:, 1:].masked_fill(never, float("-inf"))
    rescored = logits.log_softmax(-1).gather(2, tokens[..., None]).squeeze(2).sum(1)
    torch.testing.assert_close(shared.scores, rescored, rtol=1e-4, atol=1e-4)
    greedy = sample(backbone, memory, GrowingCache(backbone), STEPS)
    one = beam_search(backbone, memory, beams=1, max_tokens=STEPS)
    assert one.tokens == [h.tokens for h in greedy]


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_static_cache_step_equals_dynamic(model, variant):
    backbone = backbone_for(model, variant)
    memory = memory_for(model, 2)
    dynamic = tokens_of(sample(backbone, memory, GrowingCache(backbone), STEPS))
    static = preallocated(backbone, 2)
    logits = recording_logits(static)
    assert torch.equal(tokens_of(sample(backbone, memory, static, STEPS)), dynamic)
    torch.testing.assert_close(torch.stack(logits, 1), cached_logits(backbone, memory, dynamic),
                               rtol=1e-4, atol=1e-4)
    # a second batch of utterances through the same buffers
    other = memory_for(model, 2, seed=2)
    assert torch.equal(tokens_of(sample(backbone, other, static, STEPS)),
                       tokens_of(sample(backbone, other, GrowingCache(backbone), STEPS)))
    # the slots: prompt + steps - 1 tokens per self cache, whatever the variant keeps
    expected = sum(layer.self_attn.variant.cache_bytes(2 + STEPS - 1, 2, torch.float32)
                   for layer in backbone.decoder.layers)
    assert static.nbytes()["decoder_self"] == expected
    with pytest.raises(ValueError, match="holds 11 slots"):
        sample(backbone, other, static, STEPS + 1)


@pytest.mark.parametrize("variant", ["mha", "mla", "linear"])
@torch.no_grad()
def test_beam_search_through_the_preallocated_cache_equals_the_growing_one(model, variant):
    """The same loop and beam search decoder over either cache object: beams sharing each utterance's cross cache,
    self caches reordered within the fixed buffers."""
    backbone = backbone_for(model, variant)
    memory = memory_for(model, 2)
    growing = beam_search(backbone, memory, beams=3, max_tokens=STEPS)
    static = decode(preallocated(backbone, 2 * 3, beams=3), memory, BeamSearchDecoder(3, backbone.tokens.eot),
                    backbone.tokens, STEPS)
    assert [c.tokens for c in static] == growing.tokens
    torch.testing.assert_close(torch.tensor([c.sum_logprob for c in static]), growing.scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["mha", "gqa", "mla"])
def test_the_step_projection_is_stacked_once_from_the_variants_own_weights(model, variant):
    """A decode step's one Q/K/V (or Q/latent) GEMM reads a matrix stacked when the variant is built, whose slices
    the variant's Parameters are (the same Parameter objects and values, no second copy): a later change to a
    Parameter is what the step reads. A move (dtype, device) or a copy gives the Parameters storage of their own:
    they are stacked again."""
    attn = backbone_for(model, variant).decoder.layers[0].self_attn.variant
    names = ["q_proj", "kv_down"] if variant == "mla" else ["q_proj", "k_proj", "v_proj"]
    before = {n: getattr(attn, n).weight.detach().clone() for n in names}
    params = {n: getattr(attn, n).weight for n in names}

    def reads_its_parameters(attn):
        (weight, _), sizes = attn.step_projection
        assert sizes[0] == attn.d_model and len(sizes) == len(names)
        for n in names:
            assert getattr(attn, n).weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
            assert torch.equal(getattr(attn, n).weight, before[n].to(weight.dtype))
        return weight

    copied = copy.deepcopy(attn)
    for variant_ in (attn, copied, attn.to(torch.float64)):
        weight = reads_its_parameters(variant_)
        with torch.no_grad():
            variant_.q_proj.weight.mul_(2)
        assert torch.equal(weight[: attn.d_model], 2 * before["q_proj"].to(weight.dtype))
        with torch.no_grad():
            variant_.q_proj.weight.div_(2)
    assert all(getattr(attn, n).weight is params[n] for n in names)  # moved in place, as modules are


@pytest.mark.parametrize("variant", ["gqa", "mla"])
@torch.no_grad()
def test_a_second_static_cache_leaves_the_first_reading_the_weights(variant):
    """Two preallocated caches on one backbone step through its variants' stacked projections: after a weight
    changes, both step with the changed weights (as the growing caches, which read the Parameters)."""
    backbone = backbone_for(random_whisper("test", torch.device("cpu"), torch.float32, init_std=0.3), variant)
    memory = memory_for(backbone.model, 2)
    first, second = preallocated(backbone, 2), preallocated(backbone, 2)
    unchanged = tokens_of(sample(backbone, memory, first, STEPS))
    for layer in backbone.decoder.layers:
        layer.self_attn.variant.q_proj.weight.add_(0.2 * torch.randn_like(layer.self_attn.variant.q_proj.weight))
    tokens = tokens_of(sample(backbone, memory, GrowingCache(backbone), STEPS))
    assert not torch.equal(tokens, unchanged)  # the change matters to decoding
    want = cached_logits(backbone, memory, tokens)
    for cache in (first, second):
        logits = recording_logits(cache)
        assert torch.equal(tokens_of(sample(backbone, memory, cache, STEPS)), tokens)
        torch.testing.assert_close(torch.stack(logits, 1), want, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_compiled_step_equals_eager(model):
    """torch.compile of the whole step (fullgraph: no part left eager) on CPU, for MLA's absorbed step: the same
    tokens and logits, through the same buffers on a second batch. Every variant, with a CUDA graph: below."""
    torch._dynamo.reset()
    backbone = backbone_for(model, "mla")
    memory, other = memory_for(model, 2), memory_for(model, 2, seed=2)
    eager, compiled = preallocated(backbone, 2), preallocated(backbone, 2, compile=True)
    eager_logits, compiled_logits = recording_logits(eager), recording_logits(compiled)
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]
    assert torch.equal(tokens_of(sample(backbone, memory, compiled, STEPS)),
                       tokens_of(sample(backbone, memory, eager, STEPS)))
    assert graphs["unique_graphs"] == before + 1  # compiled once, for every step
    torch.testing.assert_close(torch.stack(compiled_logits, 1), torch.stack(eager_logits, 1), rtol=1e-4, atol=1e-4)
    assert torch.equal(tokens_of(sample(backbone, other, compiled, STEPS)),
                       tokens_of(sample(backbone, other, eager, STEPS)))
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("compile", [False, True], ids=["graph", "compiled+graph"])
@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_cuda_graph_step_equals_eager(variant, compile):
    torch._dynamo.reset()
    model = random_whisper("test", torch.device("cuda"), torch.float32, init_std=0.3)
    backbone = backbone_for(model, variant)
    memory = memory_for(model, 2).cuda()
    eager = tokens_of(sample(backbone, memory, preallocated(backbone, 2), STEPS))
    graphed = preallocated(backbone, 2, graph=True, compile=compile)
    assert torch.equal(tokens_of(sample(backbone, memory, graphed, STEPS)), eager)
    assert graphed._graph is not None
    other = memory_for(model, 2, seed=2).cuda()
    assert torch.equal(tokens_of(sample(backbone, other, graphed, STEPS)),
                       tokens_of(sample(backbone, other, preallocated(backbone, 2), STEPS)))


class EagerCapture:
    """torch.cuda's stream and graph calls on a CPU: what would be captured runs eagerly instead, so a write past
    a buffer's end fails here as an IndexError (on a GPU it corrupts memory or trips a device-side assert)."""

    def __init__(self, monkeypatch):
        stream = SimpleNamespace(wait_stream=lambda other: None)
        monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", SimpleNamespace)


@pytest.mark.parametrize("max_steps", [1, 2, 3])
@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_graph_warm_up_stays_inside_the_buffers(model, variant, max_steps, monkeypatch):
    """The capture's warm-up and captured steps run after the prompt, where the buffers may have no slot left
    (prompt + max_steps - 1 slots): they write the first one, and the state they change (position, self caches)
    is put back, so decoding after a capture emits what it did before."""
    backbone = backbone_for(model, variant)
    memory = memory_for(model, 2)
    static = preallocated(backbone, 2, max_steps)
    before = tokens_of(sample(backbone, memory, static, max_steps))
    state = [t.clone() for t in static._state()]
    EagerCapture(monkeypatch)
    static._capture()
    assert all(torch.equal(t, s) for t, s in zip(static._state(), state))
    static._graph = None  # the stand-in captured nothing to replay
    assert torch.equal(tokens_of(sample(backbone, memory, static, max_steps)), before)
    assert torch.equal(before, tokens_of(sample(backbone, memory, GrowingCache(backbone), max_steps)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("max_steps", [2, 3])
@torch.no_grad()
def test_cuda_graph_of_few_steps_equals_eager(max_steps):
    model = random_whisper("test", torch.device("cuda"), torch.float32, init_std=0.3)
    backbone = backbone_for(model, "mla")
    memory = memory_for(model, 2).cuda()
    graphed = preallocated(backbone, 2, max_steps, graph=True)
    assert torch.equal(tokens_of(sample(backbone, memory, graphed, max_steps)),
                       tokens_of(sample(backbone, memory, preallocated(backbone, 2, max_steps), max_steps)))
    assert graphed._graph is not None


# ---- the fast path: transcribe through pooled preallocated caches (generation/fast_path.py) ----------------------
MODES = {"greedy": {}, "beam": {"beam_size": 3},
         # every hypothesis is below a log-probability threshold of 0: each utterance is sampled again at 0.5
         "fallback": {"logprob_threshold": 0.0, "temperatures": (0.0, 0.5)}}


def transcribed(backbone, memory, fast, **options):
    options = {"temperatures": (0.0,), **options}
    return transcribe(backbone, memory, DecodingOptions(max_tokens=STEPS, fast=fast, **options))


def same_hypotheses(ours, reference):
    assert [h.tokens for h in ours] == [h.tokens for h in reference]
    assert [h.temperature for h in ours] == [h.temperature for h in reference]
    assert [h.truncated for h in ours] == [h.truncated for h in reference]
    torch.testing.assert_close(torch.tensor([h.avg_logprob for h in ours]),
                               torch.tensor([h.avg_logprob for h in reference]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["mha", "mla", "linear"])
@torch.no_grad()
def test_transcribe_through_the_pooled_preallocated_cache_equals_the_growing_one(model, variant, mode):
    """fast=true on a CPU: the preallocated cache, its step eager; the same hypotheses as growing caches (fast=false),
    for greedy decoding, beam search and the temperature fallback (whose retries restart from the pooled cache)."""
    backbone = backbone_for(model, variant)
    memory = memory_for(model, 3)
    ours, reference = transcribed(backbone, memory, True, **MODES[mode]), transcribed(backbone, memory, False,
                                                                                        **MODES[mode])
    same_hypotheses(ours, reference)
    assert len({tuple(h.tokens) for h in ours}) == 3  # three different transcripts
    if mode == "fallback":
        assert {h.temperature for h in ours} == {0.5}
    (cache,) = cache_pool(backbone).caches.values()
    assert isinstance(cache, PreallocatedCache) and not cache.graph and cache.beams == (3 if mode == "beam" else 1)
    assert len(cache.slots) == len(backbone.tokens.prompt) + STEPS - 1


@pytest.mark.parametrize("variant", ["mha", "gqa", "linear"])
@torch.no_grad()
def test_the_preallocated_cache_keeps_the_autocast_dtype(model, variant):
    """Under autocast (a bf16-mixed trainer's test step) the step writes bf16 entries: the self caches are bf16, and
    decoding equals the growing caches' under the same autocast. (MLA's step attends in latent space, its growing
    cache over expanded K/V: in bf16 the two round differently, so its tokens may part.)"""
    backbone = backbone_for(model, variant)
    memory = memory_for(model, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same_hypotheses(transcribed(backbone, memory, True), transcribed(backbone, memory, False))
    (cache,) = cache_pool(backbone).caches.values()
    assert {t.dtype for buffers in cache.self_buffers for t in buffers.values()} == {torch.bfloat16}


def test_fast_settings_and_where_auto_takes_the_fast_path(model):
    assert [DecodingOptions(fast=v).fast for v in ("auto", "on", "off", "true", "False", True, False)] == [
        "auto", True, False, True, False, True, False]
    with pytest.raises(ValueError, match="model.decoding.fast='fastest': expected auto"):
        DecodingOptions(fast="fastest")
    backbone = backbone_for(model, "mha").eval()
    memory = memory_for(model, 2)
    assert isinstance(loop_cache(backbone, memory, 1, STEPS, "auto"), GrowingCache)  # auto on a CPU: growing
    assert isinstance(loop_cache(backbone, memory, 1, STEPS, False), GrowingCache)
    cache = loop_cache(backbone, memory, 2, STEPS, True)
    assert isinstance(cache, PreallocatedCache) and not cache.graph and (cache.batch, cache.beams) == (4, 2)


@torch.no_grad()
def test_the_pool_keeps_a_cache_per_shape_follows_in_place_updates_and_drops_moved_weights():
    """One cache per batch shape, reused by later batches of that shape (its graph captured once). An optimizer
    step writes the weights in place: the same cache decodes what the changed weights give. A move (`.to()`) or a
    converted site gives the decoder other tensors: the pool drops its caches and builds new ones. A copy of the
    backbone starts with an empty pool of its own. Inference mode gets caches of its own (its tensors take no
    in-place write outside it)."""
    backbone = backbone_for(random_whisper("test", torch.device("cpu"), torch.float32, init_std=0.3), "mha")
    pool = cache_pool(backbone)
    memory, other, last = memory_for(backbone.model, 3), memory_for(backbone.model, 3, seed=2), memory_for(
        backbone.model, 2, seed=3)
    transcribed(backbone, memory, True)
    first = next(iter(pool.caches.values()))
    same_hypotheses(transcribed(backbone, other, True), transcribed(backbone, other, False))
    transcribed(backbone, last, True)  # a smaller last batch: a cache of its own
    assert pool.built == 2 and len(pool) == 2 and first in pool.caches.values()

    params = [p for p in backbone.decoder.parameters()]
    before = transcribed(backbone, memory, False)
    optimizer = torch.optim.AdamW(params, lr=0.05)
    with torch.enable_grad():
        backbone.decode(prompt(backbone, 3), memory).float().square().mean().backward()
    optimizer.step()
    after = transcribed(backbone, memory, False)
    assert [h.tokens for h in after] != [h.tokens for h in before]  # the step changed what is decoded
    same_hypotheses(transcribed(backbone, memory, True), after)
    assert pool.built == 2 and first in pool.caches.values()  # the same cache, the same buffers

    copied = copy.deepcopy(backbone)
    assert len(cache_pool(copied)) == 0 and len(pool) == 2

    backbone.to(torch.float64)  # new storage for every weight: every cache is dropped
    same_hypotheses(transcribed(backbone, memory.double(), True), transcribed(backbone, memory.double(), False))
    assert pool.built == 3 and len(pool) == 1 and first not in pool.caches.values()
    backbone.to(torch.float32)
    patch_attention(backbone, {"name": "gqa", "num_kv_heads": 2, "sites": ["decoder_self"]})
    same_hypotheses(transcribed(backbone, memory, True), transcribed(backbone, memory, False))
    assert pool.built == 4 and len(pool) == 1
    for batch in range(1, 10):  # past its capacity the least recently used cache goes
        transcribed(backbone, memory_for(backbone.model, batch), True)
    assert len(pool) == pool.capacity == 8 and pool.built == 4 + 8  # batch 3 reused its cache
    with torch.inference_mode():  # Lightning's val and test steps: inference tensors, a cache of their own
        same_hypotheses(transcribed(backbone, memory, True), transcribed(backbone, memory, False))
    assert [k[-1] for k in pool.caches][-1] is True and sum(k[-1] for k in pool.caches) == 1
    same_hypotheses(transcribed(backbone, memory, True), transcribed(backbone, memory, False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_transcribe_on_a_gpu_replays_a_graph_equal_to_the_growing_caches(variant, mode):
    """fast=auto on CUDA: a pooled preallocated cache whose step is a captured CUDA graph; the same hypotheses as the
    growing caches, and after an in-place weight change (a training step between val passes) the same graph
    replays the changed weights."""
    model = random_whisper("test", torch.device("cuda"), torch.float32, init_std=0.3)
    backbone = backbone_for(model, variant).eval()
    memory = memory_for(model, 3).cuda()
    before = transcribed(backbone, memory, False, **MODES[mode])
    same_hypotheses(transcribed(backbone, memory, "auto", **MODES[mode]), before)
    (cache,) = cache_pool(backbone).caches.values()
    graph = cache._graph
    assert cache.graph and graph is not None
    torch.manual_seed(0)
    for layer in backbone.decoder.layers:
        w = layer.self_attn.variant.o_proj.weight
        w.add_(0.3 * torch.randn_like(w))
    after = transcribed(backbone, memory, False, **MODES[mode])
    assert [h.tokens for h in after] != [h.tokens for h in before]  # the change matters to decoding
    same_hypotheses(transcribed(backbone, memory, "auto", **MODES[mode]), after)
    assert list(cache_pool(backbone).caches.values()) == [cache] and cache._graph is graph  # replayed, not rebuilt


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("variant", ["mha", "mla"])
@torch.no_grad()
def test_a_graph_captured_under_autocast_reads_the_weights_not_a_cast_copy(variant):
    """bf16 autocast with its weight-cast cache on (Lightning's bf16-mixed): the graph, captured with that cache off,
    equals the eager preallocated step under the same autocast, before and after an in-place weight change."""
    model = random_whisper("test", torch.device("cuda"), torch.float32, init_std=0.3)
    backbone = backbone_for(model, variant).eval()
    for p in backbone.parameters():
        p.requires_grad_(True)  # autocast caches casts of leaf tensors that require grad only
    memory = memory_for(model, 2).cuda()
    decoded = []
    for change in (False, True):
        if change:
            torch.manual_seed(0)
            for layer in backbone.decoder.layers:
                layer.fc1.weight.add_(0.5 * torch.randn_like(layer.fc1.weight))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            graphed = transcribed(backbone, memory, "auto")
            eager = sample(backbone, memory, preallocated(backbone, 2, dtype=torch.bfloat16), STEPS)
        assert [h.tokens for h in graphed] == [h.tokens for h in eager]
        decoded.append([h.tokens for h in graphed])
    assert decoded[0] != decoded[1]  # the change matters to decoding
    (cache,) = cache_pool(backbone).caches.values()
    assert cache._graph is not None and cache.dtype == torch.bfloat16
