"""Whisper adapter on a tiny random model (1-s window): every kind of site (encoder self, decoder self, cross),
patched with MHA, equals transformers' own unpatched forward; exact conversions equal MHA; cached decoding
emits what uncached decoding does; measured cache bytes equal the analytic figures; both heads learn."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

from asr_attention.backbones import build_backbone, patch_attention, patched_variants
from asr_attention.backbones.whisper.load import random_config
from asr_attention.backbones.whisper.mel import LogMel
from asr_attention.generation.caches import GrowingCache
from asr_attention.generation.decoding import DecodingOptions, sample, transcribe

D, H, LAYERS, VOCAB = 32, 4, 2, 100
TINY = dict(family="whisper", source=None, pretrained=False, d_model=D, num_heads=H, num_layers=LAYERS,
            arch=dict(max_source_positions=50, max_target_positions=32, num_mel_bins=16, dropout=0.0))
SITES = [["encoder"], ["decoder_self"], ["cross"], ["decoder_self", "cross"]]
EXACT = {"mha": {"name": "mha"}, "mla": {"name": "mla", "latent_dim": D}, "gqa": {"name": "gqa", "num_kv_heads": H}}
ALL_VARIANTS = {**EXACT, "mla_d4": {"name": "mla", "latent_dim": D // 4}, "gqa_1": {"name": "gqa", "num_kv_heads": 1},
                "linear": {"name": "linear", "feature_map": "elu"},
                # cross sites over the encoder output itself, one cache for all of them; the other sites at d/4
                "mla_d4_memory": {"name": "mla", "latent_dim": D // 4, "cross_latent": "memory"}}


def make(head="seq2seq", seed=0):
    torch.manual_seed(seed)
    return build_backbone({**TINY, "head": head}, 7 if head == "ctc" else None).eval()


def reference_model(seed=0):
    """transformers' model with make()'s weights, never wrapped."""
    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(random_config(TINY)).eval()


def audio(seed=1):
    g = torch.Generator().manual_seed(seed)
    waves = 0.1 * torch.randn(3, 12000, generator=g)
    lengths = torch.tensor([12000, 9000, 4000])
    return waves, lengths


def tokens(seed=2, length=6):
    return torch.randint(0, 90, (3, length), generator=torch.Generator().manual_seed(seed))


def logits(backbone, waves, lengths, ids):
    with torch.no_grad():
        return backbone.decode(ids, backbone.encode(waves, lengths))


def hf_logits(hf_model, backbone, waves, lengths, ids):
    """transformers' own WhisperForConditionalGeneration forward, untouched."""
    with torch.no_grad():
        return hf_model(input_features=backbone.mel(waves, lengths), decoder_input_ids=ids).logits


def test_log_mel_equals_the_feature_extractor():
    waves, lengths = audio()
    ours = LogMel(80, 3000)(waves, lengths)
    extractor = WhisperFeatureExtractor()
    ref = extractor([w[:n].numpy() for w, n in zip(waves, lengths)], sampling_rate=16000,
                    return_tensors="pt").input_features
    assert ours.shape == ref.shape == (3, 80, 3000)
    assert (ours - ref).abs().max() < 1e-5


def test_loaded_model_equals_transformers_forward():
    """At load the decoder's sites are MHA variants in our decoder loop: same logits as HF's forward."""
    backbone, reference = make(), reference_model()
    waves, lengths = audio()
    ids = tokens()
    diff = logits(backbone, waves, lengths, ids) - hf_logits(reference, backbone, waves, lengths, ids)
    assert diff.abs().max() < 1e-5


@pytest.mark.parametrize("sites", SITES, ids="+".join)
@pytest.mark.parametrize("variant", list(EXACT))
def test_exact_conversions_equal_the_unpatched_model(sites, variant):
    """MHA, MLA at r = d and GQA with g = H on each kind of site: logits within 1e-5 of transformers' forward."""
    backbone, reference = make(), reference_model()
    summary = patch_attention(backbone, {**EXACT[variant], "sites": sites})
    assert summary["layers_replaced"] == LAYERS * len(sites)
    assert all(v.name == variant for v in patched_variants(backbone))
    waves, lengths = audio()
    ids = tokens()
    diff = (logits(backbone, waves, lengths, ids) - hf_logits(reference, backbone, waves, lengths, ids)).abs().max()
    assert diff < 1e-5


@pytest.mark.parametrize("variant", list(ALL_VARIANTS))
def test_cached_decoding_emits_the_uncached_tokens(variant):
    backbone = make()
    patch_attention(backbone, {**ALL_VARIANTS[variant], "sites": "all"})
    waves, lengths = audio()
    memory = backbone.encode(waves, lengths)
    backbone.tokens.suppress_begin = list(range(backbone.tokens.eot, VOCAB))  # no early stop: 12 real steps
    cached = sample(backbone, memory, GrowingCache(backbone), max_tokens=12)
    uncached = sample(backbone, memory, None, max_tokens=12)
    assert [h.tokens for h in cached] == [h.tokens for h in uncached]
    assert len(cached[0].tokens) >= 1


@pytest.mark.parametrize("variant", list(ALL_VARIANTS))
def test_measured_decoder_cache_bytes_equal_analytic(variant):
    backbone = make()
    patch_attention(backbone, {**ALL_VARIANTS[variant], "sites": ["decoder_self", "cross"]})
    waves, lengths = audio()
    memory = backbone.encode(waves, lengths)
    cache, ids = backbone.new_cache(), tokens(length=5)
    with torch.no_grad():
        for t in range(ids.shape[1]):  # one token per step, as decoding does
            backbone.decode(ids[:, t: t + 1], memory if t == 0 else None, cache)
    measured = cache.nbytes()
    self_sites = [layer.self_attn.variant for layer in backbone.decoder.layers]
    cross_sites = [layer.encoder_attn.variant for layer in backbone.decoder.layers]
    assert measured["decoder_self"] == sum(v.cache_bytes(5, 3, torch.float32) for v in self_sites) > 0
    assert measured["cross"] == sum(v.cache_bytes(memory.shape[1], 3, torch.float32) for v in cross_sites) > 0


def test_fallback_redecodes_only_failing_rows_reusing_cross_caches():
    """An impossible probability threshold sends every row through every temperature; a passable one none."""
    backbone = make()
    waves, lengths = audio()
    memory = backbone.encode(waves, lengths)
    greedy = transcribe(backbone, memory, DecodingOptions(max_tokens=8, logprob_threshold=-1e9,
                                                          compression_ratio_threshold=1e9))
    assert {h.temperature for h in greedy} == {0.0}
    forced = transcribe(backbone, memory, DecodingOptions(max_tokens=8, logprob_threshold=1.0))
    assert {h.temperature for h in forced} == {1.0}
    again = transcribe(backbone, memory, DecodingOptions(max_tokens=8, logprob_threshold=1.0))
    assert [h.tokens for h in again] == [h.tokens for h in forced]  # seeded


@pytest.mark.parametrize("cache", ["growing", "preallocated"])
def test_fallback_and_beam_search_run_through_either_cache(cache):
    """The same loop over the growing caches or preallocated ones: the forced fallback (sampling, every row
    restarted from its cross caches) writes the same tokens; transcribe with beam_size is beam search at
    temperature 0."""
    from asr_attention.generation.beam import beam_search
    from asr_attention.generation.static_decode import PreallocatedCache

    backbone = make()
    memory = backbone.encode(*audio())
    options = DecodingOptions(max_tokens=8, logprob_threshold=1.0)
    loop_cache = None if cache == "growing" else PreallocatedCache(backbone, 3, 2 + 8 - 1)
    hyps = transcribe(backbone, memory, options, loop_cache)
    reference = transcribe(backbone, memory, options)
    assert [(h.tokens, h.temperature) for h in hyps] == [(h.tokens, h.temperature) for h in reference]
    assert {h.temperature for h in hyps} == {1.0}
    beams = DecodingOptions(max_tokens=8, beam_size=3, temperatures=(0.0,))
    loop_cache = None if cache == "growing" else PreallocatedCache(backbone, 3 * 3, 2 + 8 - 1, beams=3)
    beamed = transcribe(backbone, memory, beams, loop_cache)
    assert [h.tokens for h in beamed] == beam_search(backbone, memory, 3, 8).tokens
    with pytest.raises(ValueError, match="model.decoding.beam_size=0"):
        DecodingOptions(beam_size=0)


def test_teacher_forcing_inputs_and_labels():
    backbone = make()
    t = backbone.tokens
    targets = torch.tensor([[5, 6, 7], [8, -100, -100]])
    inputs, labels = t.teacher_forcing(targets)
    assert inputs.tolist() == [[t.sot, t.no_timestamps, 5, 6, 7], [t.sot, t.no_timestamps, 8, t.eot, t.eot]]
    assert labels.tolist() == [[-100, 5, 6, 7, t.eot], [-100, 8, t.eot, -100, -100]]


@pytest.mark.parametrize("head", ["seq2seq", "ctc"])
def test_one_fine_tune_step_lowers_the_loss(head):
    from asr_attention.data.text import CharTokenizer
    from asr_attention.training.ctc_module import CTCFineTuner
    from asr_attention.training.seq2seq_module import Seq2SeqFineTuner

    backbone = make(head)
    patch_attention(backbone, {"name": "mla", "latent_dim": D // 2, "sites": "all"})
    waves, lengths = audio()
    if head == "ctc":
        tok = CharTokenizer.from_texts(["AB C"])
        module = CTCFineTuner(backbone, tok)
        batch = {"targets": torch.tensor([[2, 3, 1, 4], [2, 3, -100, -100], [4, -100, -100, -100]]),
                 "target_lengths": torch.tensor([4, 2, 1])}
    else:
        module = Seq2SeqFineTuner(backbone)
        batch = {"targets": tokens(length=4), "utt_ids": ["a", "b", "c"]}
    batch.update(waves=waves, wave_lengths=lengths, utt_ids=["a", "b", "c"])
    backbone.train()
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-3)
    before, _ = module.loss_and_hyps(batch, decode=False)
    before.backward()
    optimizer.step()
    after, _ = module.loss_and_hyps(batch, decode=False)
    assert after.item() < before.item()


def test_attention_only_steps_train_a_new_ctc_head_too():
    """During optim.attention_only_steps only the converted attention learns, and a CTC head that starts random:
    through a frozen random head the attention could not learn at all. A head that does not start random (a
    checkpoint's own) stays frozen with the rest."""
    from asr_attention.data.text import CharTokenizer
    from asr_attention.training.ctc_module import CTCFineTuner

    backbone = make("ctc")
    patch_attention(backbone, {"name": "mla", "latent_dim": D // 2, "sites": "all"})
    module = CTCFineTuner(backbone, CharTokenizer.from_texts(["AB C"]), attention_only_steps=5)
    waves, lengths = audio()
    batch = {"waves": waves, "wave_lengths": lengths, "utt_ids": ["a", "b", "c"],
             "targets": torch.tensor([[2, 3, 1, 4], [2, 3, -100, -100], [4, -100, -100, -100]]),
             "target_lengths": torch.tensor([4, 2, 1])}

    def trained_after_one_step() -> dict[str, bool]:
        backbone.zero_grad(set_to_none=True)
        module.loss_and_hyps(batch, decode=False)[0].backward()
        module.on_before_optimizer_step(None)
        return {name: p.grad is not None for name, p in backbone.named_parameters()}

    trained = trained_after_one_step()
    assert all(trained[n] for n in trained if n.startswith("ctc_head.") or ".variant." in n)
    assert not any(trained[n] for n in trained if not n.startswith("ctc_head.") and ".variant." not in n)
    backbone.fresh_head = False  # as if the head came with the checkpoint
    trained = trained_after_one_step()
    assert not any(trained[n] for n in trained if n.startswith("ctc_head."))
    assert any(trained[n] for n in trained if ".variant." in n)


def test_head_lr_puts_the_ctc_head_in_its_own_group():
    from asr_attention.data.text import CharTokenizer
    from asr_attention.training.ctc_module import CTCFineTuner

    backbone = make("ctc")
    module = CTCFineTuner(backbone, CharTokenizer.from_texts(["AB C"]), lr=1e-4, head_lr=1e-3)
    rest, head = module.param_groups()
    assert head["lr"] == 1e-3 and "lr" not in rest  # the rest take AdamW's lr (optim.lr)
    assert {id(p) for p in head["params"]} == {id(p) for p in backbone.ctc_head.parameters()}
    trainable = {id(p) for p in backbone.parameters() if p.requires_grad}
    assert {id(p) for p in rest["params"]} == trainable - {id(p) for p in head["params"]}
    assert len(CTCFineTuner(backbone, CharTokenizer.from_texts(["AB"])).param_groups()) == 1  # head_lr None
    with pytest.raises(ValueError, match="optim.head_lr=0.001 needs a trainable CTC head"):
        CTCFineTuner(make("seq2seq"), None, head_lr=1e-3).param_groups()


def collated(folder, waves, lengths, utt_ids):
    """The batch the datamodule would give for these waves, read back from WAV files in `folder` (float samples:
    exact)."""
    import soundfile as sf

    from asr_attention.data import ASRDataset, Utterance, collate

    utts = []
    for k, (wave, n, utt_id) in enumerate(zip(waves, lengths, utt_ids)):
        path = folder / f"{k}_{utt_id}.wav"
        sf.write(path, wave[:n].numpy(), 16000, subtype="FLOAT")
        utts.append(Utterance(utt_id, str(path), "HI", int(n) / 16000, "spk"))
    ds = ASRDataset(utts, [[5, 6]] * len(utts), ["HI"] * len(utts))
    return collate([ds[i] for i in range(len(ds))])


def test_frozen_encoder_output_is_computed_once_per_utterance(monkeypatch, tmp_path):
    from asr_attention.training.seq2seq_module import Seq2SeqFineTuner

    backbone = make()
    backbone.encoder.requires_grad_(False)
    module = Seq2SeqFineTuner(backbone)
    calls = []
    encode = backbone.encode
    monkeypatch.setattr(backbone, "encode", lambda w, n: calls.append(len(w)) or encode(w, n))
    waves, lengths = audio()
    batch = collated(tmp_path, waves, lengths, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"model.cache_encoder=true needs batch\['audio_ids'\]"):
        module.memory({k: v for k, v in batch.items() if k != "audio_ids"})
    first = module.memory(batch)
    second = module.memory(batch)
    assert calls == [3] and torch.equal(first, second)
    patch_attention(backbone, {"name": "mha", "sites": ["encoder"]})  # a converted encoder: computed again
    module.memory(batch)
    assert calls == [3, 3]


def test_encoder_store_keys_on_the_audio_not_the_utterance_id(tmp_path):
    """A test utterance whose id a val utterance also has is encoded from its own audio: the stored encoder output
    of the val one is not served for it."""
    from asr_attention.training.seq2seq_module import Seq2SeqFineTuner

    backbone = make()
    backbone.encoder.requires_grad_(False)
    module = Seq2SeqFineTuner(backbone)
    waves, lengths = audio()
    (tmp_path / "val").mkdir()
    (tmp_path / "test").mkdir()
    val = collated(tmp_path / "val", waves[:1], lengths[:1], ["u1"])
    test = collated(tmp_path / "test", waves[1:2], lengths[:1], ["u1"])  # same id and length, other audio
    from_val = module.memory(val)
    with torch.no_grad():
        own = backbone.encode(test["waves"], test["wave_lengths"])
    assert (from_val - own).abs().max() > 1e-4  # the two audios do encode differently
    served = module.memory(test)
    assert torch.equal(served, own), f"served another audio's encoder output (max diff {(served - own).abs().max()})"


@pytest.mark.parametrize("trains", ["whole encoder", "converted encoder attention"])
def test_a_training_encoder_is_never_served_from_the_store(trains, tmp_path):
    """With cache_encoder on, an encoder with any trainable parameter (unfrozen, or frozen with its attention
    converted) is run afresh each step, so every such parameter gets a gradient, on the first step and on a
    repeated batch (where a store would answer)."""
    from asr_attention.training.seq2seq_module import Seq2SeqFineTuner

    backbone = make()
    if trains == "converted encoder attention":
        backbone.encoder.requires_grad_(False)  # model.freeze_encoder: the original weights stay
        patch_attention(backbone, {"name": "mla", "latent_dim": D // 2, "sites": ["encoder"]})
    module = Seq2SeqFineTuner(backbone, cache_encoder=True)
    backbone.train()  # TINY has dropout 0: only requires_grad says the encoder's output changes
    waves, lengths = audio()
    batch = collated(tmp_path, waves, lengths, ["a", "b", "c"])
    batch["targets"] = tokens(length=4)
    trainable = [(n, p) for n, p in backbone.encoder.named_parameters() if p.requires_grad]
    assert trainable
    for _ in range(2):
        backbone.zero_grad(set_to_none=True)
        module.loss_and_hyps(batch, decode=False)[0].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), \
            [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0][:3]


def test_audio_longer_than_the_window_is_bad_audio_of_the_run(tmp_path):
    """The run's datamodule takes Whisper's window as its limit (30 s for the released models; TINY's is 1 s): with
    data.on_bad_audio=skip a longer file is skipped and counted and the rest is decoded; with error, setup stops
    naming the file, its length and the limit."""
    import soundfile as sf
    from omegaconf import OmegaConf

    from asr_attention.data import AudioError, Utterance, write_manifest
    from asr_attention.data.text import CharTokenizer
    from asr_attention.training.experiment import build_datamodule_for
    from asr_attention.training.seq2seq_module import Seq2SeqFineTuner

    long_arch = {**TINY["arch"], "max_source_positions": 1500}
    assert build_backbone({**TINY, "arch": long_arch, "head": "seq2seq"}, None).max_audio_seconds == 30.0
    backbone = make()
    assert backbone.max_audio_seconds == 1.0
    waves, _ = audio()
    sf.write(tmp_path / "short.wav", waves[0, :8000].numpy(), 16000)
    sf.write(tmp_path / "long.wav", waves[:2].flatten().numpy(), 16000)  # 1.5 s: over the window
    for split in ("train", "val", "test"):
        write_manifest([Utterance("short", str(tmp_path / "short.wav"), "HI", 0.5, split),
                        Utterance("long", str(tmp_path / "long.wav"), "HI", 1.5, split)], tmp_path / f"{split}.tsv")
    data = dict(corpus="manifest", root=str(tmp_path), train_split="train.tsv", val_split="val.tsv",
                test_split="test.tsv", batch_size=2, num_workers=0, on_bad_audio="skip")
    with pytest.warns(UserWarning, match="long.wav: 1.50 s long, over the 1 s the model reads per utterance"):
        datamodule = build_datamodule_for(OmegaConf.create({"data": data}), CharTokenizer.from_texts(["HI"]), backbone)
    assert [(s["utt_id"], s["path"]) for s in datamodule.skipped] == [("long", str(tmp_path / "long.wav"))]
    (batch,) = datamodule.test_dataloader()
    assert batch["utt_ids"] == ["short"]
    backbone.encoder.requires_grad_(False)
    assert Seq2SeqFineTuner(backbone).memory(batch).shape == (1, 50, D)
    with pytest.raises(AudioError, match=r"long.wav: 1.50 s long, over the 1 s .*data.on_bad_audio=skip"):
        build_datamodule_for(OmegaConf.create({"data": {**data, "on_bad_audio": "error"}}),
                             CharTokenizer.from_texts(["HI"]), backbone)


def test_spec_augment_masks_spans_within_the_audio_in_training_only():
    """model.arch turns on transformers' SpecAugment: in training, time spans inside each utterance's audio (not
    its padding) and mel bands become 0, the rest stays; in eval nothing is masked; the frozen encoder's output
    is then not cached in training (each step masks afresh)."""
    import numpy as np

    from asr_attention.training.seq2seq_module import Seq2SeqFineTuner

    arch = {**TINY["arch"], "apply_spec_augment": True, "mask_time_prob": 0.3, "mask_time_length": 3,
            "mask_feature_prob": 0.3, "mask_feature_length": 2, "mask_feature_min_masks": 1}
    torch.manual_seed(0)
    backbone = build_backbone({**TINY, "arch": arch}, None)
    plain = make()
    assert backbone.masks_input and not plain.masks_input
    waves, lengths = audio()
    clean = backbone.mel(waves, lengths)
    np.random.seed(0)  # transformers draws the spans with numpy
    masked = backbone.train().spec_augment(clean, lengths)
    assert not torch.equal(masked, clean) and not (clean == 0).any()  # clean: unchanged, no zeros of its own
    zero = masked == 0
    time_masked, mel_masked = zero.all(dim=1), zero.all(dim=2)  # (B, frames), (B, mels)
    audio_frames = (lengths + 159) // 160
    for b in range(len(lengths)):
        masked_frames = time_masked[b].nonzero().flatten()
        assert len(masked_frames) > 0 and masked_frames.max() < audio_frames[b]
        assert mel_masked[b].any()
    unmasked = ~(time_masked[:, None, :] | mel_masked[:, :, None])
    assert torch.equal(masked[unmasked], clean[unmasked]) and zero.eq(~unmasked).all()
    # eval: the encoder reads the clean features (dropout is 0 in TINY, so training differs only by the masks)
    backbone.eval()
    with torch.no_grad():
        assert torch.equal(backbone.encode(waves, lengths), backbone.encoder(clean).last_hidden_state)
        backbone.train()
        assert not torch.equal(backbone.encode(waves, lengths), backbone.encoder(clean).last_hidden_state)
    backbone.encoder.requires_grad_(False)
    assert Seq2SeqFineTuner(backbone).encoder_key() is None  # training with masks: nothing to cache
    assert Seq2SeqFineTuner(backbone.eval()).encoder_key() is not None


def test_pretrained_whisper_takes_only_spec_augment_fields_from_arch():
    from transformers import WhisperConfig

    from asr_attention.backbones.whisper.load import set_run_time_fields

    config = WhisperConfig()
    set_run_time_fields(config, {"apply_spec_augment": True, "mask_time_prob": 0.1})
    assert config.apply_spec_augment and config.mask_time_prob == 0.1
    with pytest.raises(ValueError, match=r"model.arch.dropout: a pretrained Whisper takes only"):
        set_run_time_fields(config, {"dropout": 0.1})


def test_sites_are_validated_naming_the_field():
    backbone = make()
    with pytest.raises(ValueError, match="attention.sites"):
        backbone.select_sites(["decoder"])
    from asr_attention.training.config_check import validate_sites

    with pytest.raises(ValueError, match="attention.sites"):
        validate_sites({"sites": ["cross"]}, {"family": "hf_wav2vec2"})
    with pytest.raises(ValueError, match="attention.sites"):
        validate_sites({"sites": "encoder"}, {"family": "whisper"})
    validate_sites({"sites": ["encoder", "cross"]}, {"family": "whisper"})
    backbone.select_sites("all")
    assert backbone.site_kinds == ("encoder", "decoder_self", "cross")


def test_a_ctc_head_keeps_the_encoder_alone():
    """model.head=ctc never runs the decoder: it is dropped (not counted, not converted, no cache figures), and
    a decoder site on a CTC model is an error naming the field, not a conversion of layers that never run."""
    from asr_attention.backbones import count_parameters
    from asr_attention.training.config_check import validate_sites

    ctc, seq2seq = make("ctc"), make()
    assert ctc.site_kinds == ("encoder",) and ctc.decoder_layers == [] and ctc.cache_per_site() == {}
    encoder = sum(p.numel() for p in seq2seq.encoder.parameters())
    assert count_parameters(ctc) == encoder + sum(p.numel() for p in ctc.ctc_head.parameters())
    ctc.select_sites("all")
    assert ctc.site_kinds == ("encoder",)
    with pytest.raises(ValueError, match=r"attention.sites=\['cross'\] is not allowed.*model.head=ctc"):
        ctc.select_sites(["cross"])
    with pytest.raises(ValueError, match=r"attention.sites.*model.head=ctc"):
        validate_sites({"sites": ["encoder", "decoder_self"]}, {"family": "whisper", "head": "ctc"})
    with pytest.raises(ValueError, match="no decoder"):
        ctc.decode(torch.zeros(1, 1, dtype=torch.long), None)


def test_kv_cache_report_per_kind_of_site(compose_cfg, run_module):
    from asr_attention.reports.kv_cache import whisper_sites

    cfg = compose_cfg("kv_cache", ["model=whisper", "frames=1500", "attention=mla", "attention.latent_dim=96"])
    columns = whisper_sites(cfg.model, cfg.attention, 1500, 1, torch.float32)
    bytes_of = {col: {r.attention: r.total_bytes for r in rows} for col, rows in columns.items()}
    layers, d = 4, 384
    assert bytes_of["decoder self /token"] == {"mha": layers * 2 * d * 4, "mla": layers * 96 * 4,
                                               "gqa": layers * 2 * 2 * 64 * 4, "linear": layers * 6 * 64 * 65 * 4}
    assert bytes_of["decoder self /token"]["mla"] / bytes_of["decoder self /token"]["mha"] == 0.125  # -87.5 %
    assert bytes_of["cross /s of audio"]["mha"] == 50 * layers * 2 * d * 4
    assert bytes_of["cross /1500 frames"]["mla"] == 1500 * layers * 96 * 4
    out = run_module("asr_attention.reports.kv_cache", "model=whisper").stdout
    assert "decoder self /token" in out and "cross /s of audio" in out and " 12288 (1.000)" in out
    # cross_latent=memory: the decoder self column keeps latent_dim, the cross columns hold one d-wide tensor for
    # every layer; the same figures as the converted model's own accounting (cache_per_site)
    cfg = compose_cfg("kv_cache", ["model=whisper", "frames=1500", "+study/variant=mla_d2_act_memory"])
    rows = {col: {r.attention: r.total_bytes for r in rows}
            for col, rows in whisper_sites(cfg.model, cfg.attention, 1500, 1, torch.float32).items()}
    assert rows["decoder self /token"]["mla"] == layers * 192 * 4
    assert rows["cross /1500 frames"]["mla"] == 1500 * d * 4 == rows["cross /1500 frames"]["mha"] // 8
    backbone = build_backbone({**cfg.model, "pretrained": False})
    patch_attention(backbone, {**cfg.attention, "calibration": "plain"})
    assert backbone.cache_per_site()["cross_per_second"] == rows["cross /s of audio"]["mla"]
    assert backbone.cache_per_site()["decoder_self_per_token"] == rows["decoder self /token"]["mla"]


def test_real_tiny_en_transcribes_an4_test_through_our_decoder():
    """The packaged tiny.en (CTranslate2 weights), our mel front end, encoder call, decoder loop over the
    variants' caches and greedy decoding: five AN4 test utterances come out as the reference, once normalised."""
    from asr_attention.data.audio import load_audio
    from asr_attention.data.corpora import read_corpus
    from asr_attention.data.scoring import normalise_for_scoring

    wanted = ["an407-fcaw-b", "an408-fcaw-b", "an409-fcaw-b", "cen1-fcaw-b", "cen3-fcaw-b"]
    utts = {u.utt_id: u for u in read_corpus("an4", None, "test")}
    utts = [utts[i] for i in wanted]
    waves = [load_audio(u.path) for u in utts]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    backbone = build_backbone({"family": "whisper", "source": None, "d_model": 384, "num_heads": 6,
                               "num_layers": 4}).eval()
    with torch.no_grad():
        hyps = transcribe(backbone, backbone.encode(batch, lengths))
    texts = [backbone.tokens.decode(h.tokens) for h in hyps]
    assert texts[0] == "Erase CQQF7"  # Whisper's own spelling, as transformers' generate writes it
    assert not any(h.truncated for h in hyps)  # each ended with <|endoftext|> within the model's limit
    assert [normalise_for_scoring(t, cased=True) for t in texts] == [normalise_for_scoring(u.text) for u in utts]
    assert {h.temperature for h in hyps} == {0.0}


def test_the_default_token_limit_is_the_models_positions_less_the_prompt(compose_cfg):
    """model=whisper decodes up to the model's own limit (Whisper's 448 target positions, 32 here, less the
    2-token prompt), not a fixed count that cuts long transcripts."""
    from asr_attention.training.experiment import build_module

    cfg = compose_cfg("train", ["model=whisper"])
    assert cfg.model.decoding.max_tokens is None
    backbone = make()
    assert backbone.model.config.max_target_positions == 32 and len(backbone.tokens.prompt) == 2
    assert build_module(cfg, backbone, None).decoding.max_tokens == 30


def test_a_limit_below_the_models_warns_and_one_above_is_refused(caplog):
    from asr_attention.generation.token_limit import with_token_limit

    backbone = make()
    with caplog.at_level("WARNING"):
        assert with_token_limit(backbone, DecodingOptions(max_tokens=5)).max_tokens == 5
    assert "model.decoding.max_tokens=5 is below this model's limit (30)" in caplog.text
    with pytest.raises(ValueError, match=r"model.decoding.max_tokens=31: must be 1..30"):
        with_token_limit(backbone, DecodingOptions(max_tokens=31))


def test_every_utterance_the_token_limit_cuts_is_recorded_in_results(tmp_path):
    """<|endoftext|> suppressed: every utterance reaches the 3-token limit and is listed under the phase that
    decoded it, then in results.json (merged with what it holds, as a resumed run's)."""
    from asr_attention.runs.results import Results
    from asr_attention.training.seq2seq_module import Seq2SeqFineTuner
    from asr_attention.train import record_truncated

    backbone = make()
    backbone.tokens.suppress = [backbone.tokens.eot]
    backbone.tokens.tokenizer = SimpleNamespace(decode=lambda ids: " ".join(map(str, ids)))  # random weights
    waves, lengths = audio()
    batch = {"waves": waves, "wave_lengths": lengths, "targets": tokens(length=2), "utt_ids": ["u0", "u1", "u2"],
             "texts": ["a", "b", "c"]}
    module = Seq2SeqFineTuner(backbone, DecodingOptions(max_tokens=3, temperatures=(0.0,))).eval()
    with torch.no_grad():
        module.evaluate(batch, "val")
        module.test_prefix = "before_test"
        module.evaluate(batch, "test")
    assert [len(p["hyp"]) > 0 for p in module.last_predictions] == [True] * 3
    assert module.truncated == {"val": {"u0", "u1", "u2"}, "before_test": {"u0", "u1", "u2"}}
    results = Results(tmp_path / "results.json", decoding={"max_tokens": 3, "truncated": {"val": ["u9"]}})
    record_truncated(results, module)
    assert Results(tmp_path / "results.json").get("decoding") == {
        "max_tokens": 3, "truncated": {"val": ["u0", "u1", "u2", "u9"], "before_test": ["u0", "u1", "u2"]}}
