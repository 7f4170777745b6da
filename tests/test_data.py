"""Data layer: readers, audio, tokenizer, sampler, datamodule — each test checks real values."""

from __future__ import annotations

import warnings
from dataclasses import replace

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from asr_attention.data import (AN4_VAL_SPEAKERS, ASRDataModule, AudioError, BadAudioWarning, BucketBatchSampler,
                                CharTokenizer, Utterance, build_datamodule, collate, load_audio,
                                normalise, read_an4, read_librispeech, read_manifest, read_tedlium,
                                write_manifest)
from asr_attention.data.dataset import ASRDataset, Example, Skipped

SR = 16_000


def an4_tokenizer() -> CharTokenizer:
    """The characters of AN4's training transcripts (val speakers removed), as the training entry builds them."""
    return CharTokenizer.from_texts(ASRDataModule(validate_audio=False).corpus_texts())


def sine(seconds: float, sr: int = SR, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---- AN4 ----------------------------------------------------------------------------------------------------
def test_an4_counts_and_speaker_disjoint_splits():
    train, val, test = read_an4("train"), read_an4("val"), read_an4("test")
    assert (len(train), len({u.speaker for u in train})) == (948, 74)
    assert (len(test), len({u.speaker for u in test})) == (130, 10)
    assert (len(val), {u.speaker for u in val}) == (103, set(AN4_VAL_SPEAKERS))
    assert not {u.speaker for u in train} & {u.speaker for u in test}
    assert all(set(u.text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ ") for u in train + test)

    tok = an4_tokenizer()
    dm = ASRDataModule(tokenizer=tok, batch_size=4, validate_audio=False)
    dm.setup()
    spk = {p: {u.speaker for u in ds.utterances} for p, ds in dm.datasets.items()}
    assert {p: len(ds) for p, ds in dm.datasets.items()} == {"train": 845, "val": 103, "test": 130}
    assert not spk["train"] & spk["val"] and not spk["train"] & spk["test"] and not spk["val"] & spk["test"]
    assert len(tok) == 28 and tok.vocab["<blank>"] == 0 and tok.vocab["|"] == 1


def test_one_real_an4_batch():
    tok = an4_tokenizer()
    dm = ASRDataModule(tokenizer=tok, batch_size=4, limit_test=8)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    by_id = {u.utt_id: u for u in read_an4("test")}
    assert batch["waves"].dtype == torch.float32 and batch["waves"].shape[0] == 4
    assert batch["waves"].shape[1] == int(batch["wave_lengths"].max())
    assert batch["targets"].shape == (4, int(batch["target_lengths"].max()))
    assert dm.skipped == []
    for k, utt in enumerate(batch["utt_ids"]):
        u = by_id[utt]
        assert int(batch["wave_lengths"][k]) == round(u.duration * SR)  # tsv durations are exact
        assert batch["texts"][k] == u.text
        n = int(batch["target_lengths"][k])
        assert n == len(u.text) and tok.decode(batch["targets"][k, :n].tolist()) == u.text
        assert (batch["targets"][k, n:] == -100).all()
        assert (batch["waves"][k, int(batch["wave_lengths"][k]):] == 0).all()


# ---- speechocean762 (the out-of-domain evaluation set) -------------------------------------------------------
def test_speechocean762_is_vendored_as_one_test_split_of_600_utterances():
    from asr_attention.data.corpora import check_split, read_corpus

    utts = read_corpus("speechocean762", None, "test")  # root null: the copy inside the package
    assert (len(utts), len({u.speaker for u in utts})) == (600, 125)
    assert (utts[0].utt_id, utts[0].text, utts[0].speaker) == ("so762-0001-000010011", "WE CALL IT BEAR", "0001")
    assert "LET'S GO TO THE RESTROOM" in {u.text for u in utts}  # prompts keep their apostrophes
    assert sf.info(utts[0].path).samplerate == SR and sum(u.duration for u in utts) == pytest.approx(2424.2, abs=0.1)
    for split in ("train", "val"):  # an evaluation set only: nothing to train, validate or calibrate on
        with pytest.raises(ValueError, match=rf"split '{split}': allowed \('test',\) \(an evaluation set only"):
            check_split("speechocean762", None, split)


# ---- LibriSpeech and TED-LIUM 2 layouts ----------------------------------------------------------------------
def test_librispeech_reader(tmp_path):
    chap = tmp_path / "dev-clean" / "84" / "121123"
    chap.mkdir(parents=True)
    sf.write(chap / "84-121123-0000.flac", sine(1.5), SR)
    sf.write(chap / "84-121123-0001.flac", sine(0.75), SR)
    (chap / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN\n")
    utts = read_librispeech("dev-clean", tmp_path)
    assert [(u.utt_id, u.speaker, u.text, u.duration) for u in utts] == [
        ("84-121123-0000", "84", "GO DO YOU HEAR", 1.5), ("84-121123-0001", "84", "BUT IN LESS THAN", 0.75)]
    assert load_audio(utts[1].path).shape == (12_000,)


def test_tedlium_reader_cuts_segments(tmp_path):
    assert "NIST" in sf.available_formats()
    (tmp_path / "test" / "stm").mkdir(parents=True)
    (tmp_path / "test" / "sph").mkdir()
    audio = sine(4.0)
    sf.write(tmp_path / "test" / "sph" / "TalkA_2010.sph", audio, SR, format="NIST", subtype="PCM_16")
    (tmp_path / "test" / "stm" / "TalkA_2010.stm").write_text(
        ";; a comment\n"
        "TalkA_2010 1 TalkA_2010 0.00 1.00 <o,f0,male> ignore_time_segment_in_scoring\n"
        "TalkA_2010 1 TalkA_2010 1.00 2.50 <o,f0,male> so it 's <unk> a story\n"
        "TalkA_2010 1 TalkA_2010 2.50 3.25 <o,f0,male> thank you\n"
        "TalkA_2010 1 TalkA_2010 3.25 4.00 <o,f0,male> the(2) end of a(2) talk(10)\n")
    utts = read_tedlium("test", tmp_path)
    assert [(u.utt_id, u.text, u.start, u.end, u.speaker) for u in utts] == [
        ("TalkA_2010-0000100-0000250", "so it's a story", 1.0, 2.5, "TalkA_2010"),
        ("TalkA_2010-0000250-0000325", "thank you", 2.5, 3.25, "TalkA_2010"),
        ("TalkA_2010-0000325-0000400", "the end of a talk", 3.25, 4.0, "TalkA_2010")]  # variant marks stripped
    assert not set("0123456789") & set(CharTokenizer.from_texts(u.text for u in utts).vocab)  # no "THE2"
    seg = load_audio(utts[1].path, utts[1].start, utts[1].end)
    assert seg.shape == (12_000,)
    expected = torch.from_numpy(audio[40_000:52_000])
    assert torch.allclose(seg, expected, atol=1 / 32768 + 1e-6)  # PCM_16 quantisation only


# ---- audio --------------------------------------------------------------------------------------------------
def test_stereo_44k_to_mono_16k(tmp_path):
    left = sine(1.0, 44_100, 440.0, 0.5)
    stereo = np.stack([left, -0.5 * left], axis=1)  # channel mean = (0.5 - 0.25) / 2 = 0.125 x sin
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44_100, subtype="FLOAT")
    wave = load_audio(str(path))
    assert wave.dtype == torch.float32 and wave.shape == (16_000,)
    spectrum = torch.fft.rfft(wave).abs()
    assert int(spectrum.argmax()) == 440  # 1 s at 16 kHz: bin k = k Hz
    ref = torch.from_numpy(sine(1.0, SR, 440.0, 0.125))
    assert torch.allclose(wave[500:-500], ref[500:-500], atol=5e-3)  # resampler edges excluded


def test_corrupt_and_empty_audio_raise_audio_error_with_path(tmp_path):
    corrupt, empty, zero = tmp_path / "corrupt.wav", tmp_path / "empty.wav", tmp_path / "zero_bytes.flac"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    sf.write(empty, np.zeros(0, np.float32), SR)  # a valid WAV header with 0 frames
    zero.write_bytes(b"")
    with pytest.raises(AudioError, match="corrupt.wav: unreadable") as e:
        load_audio(str(corrupt))
    assert e.value.path == str(corrupt)
    with pytest.raises(AudioError, match=r"empty.wav: empty \(0 samples\)"):
        load_audio(str(empty))
    with pytest.raises(AudioError, match="zero_bytes.flac: unreadable"):
        load_audio(str(zero))
    with pytest.raises(AudioError, match="missing.wav: unreadable"):
        load_audio(str(tmp_path / "missing.wav"))


# ---- datamodule with bad files -------------------------------------------------------------------------------
def _manifest_with_bad_files(tmp_path):
    good = []
    for i, seconds in enumerate([0.5, 0.75, 1.0, 1.25]):
        p = tmp_path / f"good{i}.wav"
        sf.write(p, sine(seconds), SR)
        good.append(Utterance(f"good{i}", str(p), "HELLO WORLD", seconds, "spk1"))
    corrupt, empty = tmp_path / "corrupt.wav", tmp_path / "empty.wav"
    corrupt.write_bytes(np.random.default_rng(1).bytes(3000))
    sf.write(empty, np.zeros(0, np.float32), SR)
    # the bad pair is the shortest, so duration bucketing puts both in one batch
    bad = [Utterance("bad_corrupt", str(corrupt), "HELLO", 0.3, "spk2"),
           Utterance("bad_empty", str(empty), "WORLD", 0.3, "spk2")]
    write_manifest(good + bad, tmp_path / "train.tsv")
    # val/test speakers differ from train's (the datamodule drops val speakers from train)
    write_manifest([replace(u, speaker="spk_val") for u in good[:2]], tmp_path / "val.tsv")
    write_manifest([replace(u, speaker="spk_test") for u in bad], tmp_path / "test.tsv")
    return corrupt, empty


def _dm(tmp_path, **kw):
    tok = CharTokenizer.from_texts(["HELLO WORLD"])
    return ASRDataModule("manifest", str(tmp_path), tok, batch_size=2, train_split="train.tsv",
                         val_split="other_val.tsv" if kw.pop("other_val", False) else "val.tsv",
                         test_split="test.tsv", **kw)


def test_manifest_round_trip(tmp_path):
    utts = [Utterance("a", str(tmp_path / "a.wav"), "HI THERE", 1.25, "s1"),
            Utterance("b", "rel/b.sph", "YES", 0.5, "s2", start=3.0, end=3.5)]
    write_manifest(utts, tmp_path / "m.tsv")
    back = read_manifest(tmp_path / "m.tsv")
    assert back[0] == utts[0]
    assert back[1] == Utterance("b", str(tmp_path / "rel/b.sph"), "YES", 0.5, "s2", 3.0, 3.5)


def test_the_test_stage_reads_the_test_split_alone(tmp_path):
    """evaluate.py tests on a corpus that may hold no train or val split (here: neither train.tsv nor val.tsv)."""
    sf.write(tmp_path / "a.wav", sine(0.5), SR)
    write_manifest([Utterance("a", str(tmp_path / "a.wav"), "HELLO", 0.5, "s1")], tmp_path / "test.tsv")
    dm = _dm(tmp_path)
    dm.setup("test")
    assert list(dm.datasets) == ["test"] and len(dm.datasets["test"]) == 1
    with pytest.raises(FileNotFoundError, match="manifest not found: .*val.tsv"):
        dm.setup("fit")  # training still needs its splits


def test_datamodule_skips_bad_audio_at_setup(tmp_path):
    corrupt, empty = _manifest_with_bad_files(tmp_path)
    write_manifest([], tmp_path / "other_val.tsv")
    dm = _dm(tmp_path, other_val=True)
    with pytest.warns(BadAudioWarning) as rec:
        dm.setup()
    messages = [str(w.message) for w in rec]
    assert any(str(corrupt) in m for m in messages) and any(str(empty) in m for m in messages)
    # train and test both list the two bad files; each utterance is counted once
    assert sorted((s["utt_id"], s["path"]) for s in dm.skipped) == [
        ("bad_corrupt", str(corrupt)), ("bad_empty", str(empty))]
    assert "empty (0 samples)" in {s["utt_id"]: s["reason"] for s in dm.skipped}["bad_empty"]
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["test"]) == 0
    ids = sorted(u for b in dm.train_dataloader() for u in b["utt_ids"])
    assert ids == ["good0", "good1", "good2", "good3"]


def test_datamodule_on_bad_audio_error_names_path(tmp_path):
    corrupt, _ = _manifest_with_bad_files(tmp_path)
    with pytest.raises(AudioError, match=str(corrupt)):
        _dm(tmp_path, on_bad_audio="error").setup()


def test_an_utt_id_may_repeat_across_splits_but_not_within_one(tmp_path):
    """Within a split a repeated utt_id is an error naming the manifest and the id. Across splits it is allowed,
    and the bad files of two splits' utterances that share an id are each counted."""
    corrupt, empty = _manifest_with_bad_files(tmp_path)
    good0 = read_manifest(tmp_path / "val.tsv")[0]
    write_manifest([replace(good0, speaker="spk_val"), replace(good0, speaker="spk_val")], tmp_path / "other_val.tsv")
    with pytest.raises(ValueError) as err:
        _dm(tmp_path, other_val=True).setup()
    assert str(err.value).startswith(f"manifest {tmp_path / 'other_val.tsv'} (data.val_split): repeated utt_id "
                                     "'good0' (2 rows)")
    bad_corrupt, bad_empty = read_manifest(tmp_path / "test.tsv")
    write_manifest([replace(bad_corrupt, utt_id="u1"), good0], tmp_path / "other_val.tsv")
    write_manifest([replace(bad_empty, utt_id="u1")], tmp_path / "test.tsv")
    dm = _dm(tmp_path, other_val=True)
    with pytest.warns(BadAudioWarning):
        dm.setup()
    assert sorted((s["utt_id"], s["path"]) for s in dm.skipped if s["utt_id"] == "u1") == [
        ("u1", str(corrupt)), ("u1", str(empty))]


def test_audio_longer_than_the_model_reads_is_bad_audio(tmp_path):
    """max_audio_seconds (the backbone's: Whisper's 30-s window) makes a longer utterance, a whole file or a
    segment, bad audio: skipped and counted with on_bad_audio=skip, at setup or (no header check) at read time;
    with error, one line naming the file, its length, the limit and how to skip."""
    long, tail = tmp_path / "long.wav", tmp_path / "tail.wav"
    sf.write(long, sine(2.0), SR)
    sf.write(tail, sine(3.0), SR)
    good = Utterance("good", str(long), "HELLO", 2.0, "spk", start=0.0, end=1.0)  # a 1-s segment of long.wav
    utts = [good, Utterance("long", str(long), "HELLO", 2.0, "spk"),
            Utterance("tail", str(tail), "WORLD", 2.0, "spk", start=1.0)]  # to the file's end: 2 s
    for split in ("train", "val", "test"):
        write_manifest([replace(u, speaker=f"spk_{split}") for u in utts], tmp_path / f"{split}.tsv")
    dm = _dm(tmp_path, max_audio_seconds=1.5)
    with pytest.warns(BadAudioWarning) as warned:
        dm.setup()
    assert f"skipping utterance long: audio {long}: 2.00 s long, over the 1.5 s" in str(warned[0].message)
    assert {p: [u.utt_id for u in ds.utterances] for p, ds in dm.datasets.items()} == {
        "train": ["good"], "val": ["good"], "test": ["good"]}
    assert [(s["utt_id"], s["path"], s["reason"]) for s in dm.skipped] == [
        ("long", str(long), "2.00 s long, over the 1.5 s the model reads per utterance"),
        ("tail", str(tail), "2.00 s long, over the 1.5 s the model reads per utterance")]
    with pytest.raises(AudioError) as err:
        _dm(tmp_path, max_audio_seconds=1.5, on_bad_audio="error").setup()
    assert str(err.value) == (f"{long}: 2.00 s long, over the 1.5 s the model reads per utterance; split it, or set "
                              "data.on_bad_audio=skip to skip such files (counted in results.json)")
    ds = ASRDataset(utts, [[1]] * 3, ["HELLO"] * 3, max_seconds=1.5)  # no header check: read time
    with pytest.warns(BadAudioWarning) as warned:
        items = [ds[i] for i in range(3)]
    assert isinstance(items[0], Example) and [s.reason for s in items[1:]] == [
        "2.00 s long, over the 1.5 s the model reads per utterance"] * 2 and len(warned) == 2
    with pytest.raises(AudioError, match="long.wav: 2.00 s long, over the 1.5 s .*data.on_bad_audio=skip"):
        ASRDataset(utts, [[1]] * 3, ["HELLO"] * 3, on_bad_audio="error", max_seconds=1.5)[1]


def test_read_time_failure_is_dropped_by_collate(tmp_path):
    corrupt, empty = _manifest_with_bad_files(tmp_path)
    utts = read_manifest(tmp_path / "train.tsv")
    ds = ASRDataset(utts, [[1]] * len(utts), [u.text for u in utts])
    with pytest.warns(BadAudioWarning, match=str(corrupt)):
        item = ds[4]
    assert isinstance(item, Skipped) and item.path == str(corrupt)
    with pytest.warns(BadAudioWarning):
        batch = collate([ds[0], ds[4], ds[5]])
    assert batch["utt_ids"] == ["good0"] and batch["waves"].shape == (1, 8000)
    assert [s["utt_id"] for s in batch["skipped"]] == ["bad_corrupt", "bad_empty"]
    with pytest.warns(BadAudioWarning):
        empty_batch = collate([ds[4], ds[5]])
    assert empty_batch["waves"].shape == (0, 0) and empty_batch["utt_ids"] == []
    with pytest.raises(AudioError, match=str(empty)):
        ASRDataset(utts, [[1]] * len(utts), [u.text for u in utts], on_bad_audio="error")[5]


class _CountingModule(L.LightningModule):
    """Minimal module: wave energy as a loss; an all-failed batch arrives as None."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen, self.none_batches = [], {"train": 0, "val": 0}

    def training_step(self, batch, batch_idx):
        if batch is None:  # Lightning's training loop already skips None batches; kept for safety
            self.none_batches["train"] += 1
            return None
        self.seen += batch["utt_ids"]
        return (self.w * batch["waves"].pow(2).mean()).sum()

    def validation_step(self, batch, batch_idx):
        if batch is None:  # evaluation loops do pass None on: the step must return early
            self.none_batches["val"] += 1
            return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_survives_bad_audio_found_only_at_read_time(tmp_path):
    """No header check: the bad files fail while loading (in a worker process) and the epoch still ends."""
    corrupt, empty = _manifest_with_bad_files(tmp_path)
    dm = _dm(tmp_path, validate_audio=False, num_workers=1)
    dm.splits["val"] = "test.tsv"  # two bad files only: one all-bad val batch per epoch
    model = _CountingModule()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    assert sorted(model.seen) == sorted([f"good{i}" for i in range(4)] * 2)
    assert sorted(s["path"] for s in dm.skipped) == sorted([str(corrupt), str(empty)])
    assert sorted(s["utt_id"] for s in dm.skipped) == ["bad_corrupt", "bad_empty"]  # counted once
    assert trainer.global_step == 4  # 2 good batches x 2 epochs; the all-bad batch gave no step
    assert model.none_batches == {"train": 0, "val": 2}


# ---- text ---------------------------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_normalise():
    assert normalise("  Well-known,  \"quoted\"  don’t!\n") == "WELL KNOWN QUOTED DON'T"
    tok = CharTokenizer.from_texts(["hello world", "don't"])
    assert tok.vocab == {"<blank>": 0, "|": 1, "'": 2, "D": 3, "E": 4, "H": 5, "L": 6, "N": 7, "O": 8, "R": 9,
                         "T": 10, "W": 11}
    ids = tok.encode("Hello, world")
    assert ids == [5, 4, 6, 6, 8, 1, 11, 8, 9, 6, 3]
    assert tok.decode(ids) == "HELLO WORLD"
    # a wav2vec2-style vocabulary: blank = pad id 0, '|' between words, special tokens never emitted
    w2v = CharTokenizer({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "'": 7})
    assert w2v.encode("te'e t") == [6, 5, 7, 5, 4, 6]
    assert w2v.decode([1, 6, 4, 3, 5, 2]) == "T E"


def test_oov_policy():
    tok = CharTokenizer.from_texts(["ABC"])
    with pytest.raises(ValueError, match=r"utterance utt-42: characters \['X', 'Z'\]"):
        tok.encode("abz cx", utt_id="utt-42")
    assert tok.normalise("abz cx", "utt-42", oov="drop") == "AB C"
    assert CharTokenizer.from_texts(["ABC"], oov="drop").encode("a x b") == [2, 1, 3]
    with pytest.raises(ValueError, match="data.oov='ignore' is not allowed: expected 'error' or 'drop'"):
        ASRDataModule(tokenizer=tok, oov="ignore")
    with pytest.raises(ValueError, match="oov='ignore' is not allowed"):
        tok.normalise("abc", oov="ignore")


def test_oov_error_at_setup_names_utterance(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, sine(0.5), SR)
    write_manifest([Utterance("u-ok", str(p), "HELLO", 0.5, "s")], tmp_path / "val.tsv")
    write_manifest([Utterance("u-ok", str(p), "HELLO", 0.5, "s")], tmp_path / "test.tsv")
    write_manifest([Utterance("u-bad", str(p), "HELLO 42", 0.5, "s_train")], tmp_path / "train.tsv")
    with pytest.raises(ValueError, match=r"utterance u-bad: characters \['2', '4'\]"):
        _dm(tmp_path).setup()
    dm = _dm(tmp_path, oov="drop")
    dm.setup()
    assert dm.datasets["train"].texts == ["HELLO"]


def test_greedy_ctc_decode():
    tok = CharTokenizer({"<b>": 0, "|": 1, "A": 2, "B": 3, "C": 4})
    ids = torch.tensor([[0, 2, 2, 0, 2, 3, 1, 1, 4, 4, 0, 3],
                        [4, 0, 4, 4, 1, 2, 0, 0, 0, 0, 0, 0]])
    assert tok.ctc_decode(ids, torch.tensor([12, 6])) == ["AAB CB", "CC A"]
    assert tok.ctc_decode(ids, [9, 3]) == ["AAB C", "CC"]
    logp = torch.nn.functional.one_hot(ids, 5).float().log_softmax(-1)  # (B, T, V) scores
    assert tok.ctc_decode(logp, [12, 6]) == ["AAB CB", "CC A"]


# ---- sampler ------------------------------------------------------------------------------------------------
def test_each_seed_shuffles_its_own_epochs():
    """Seeds must not share epochs: under `seed + epoch`, seed 2 trained on seed 1's batches one epoch ahead, so a
    study's 'seeds' were nearly the same run."""
    durations = np.random.default_rng(0).uniform(1.0, 20.0, size=200).tolist()

    def order(seed, epoch):
        return BucketBatchSampler(durations, batch_size=8, shuffle=True, seed=seed).all_batches(epoch)

    epochs = {(seed, epoch): order(seed, epoch) for seed in range(3) for epoch in range(4)}
    assert len({str(o) for o in epochs.values()}) == len(epochs)  # every (seed, epoch) pair its own order
    assert order(1, 1) != order(2, 0) and order(0, 2) != order(1, 1)


def test_the_runs_seed_sets_the_batch_order(compose_cfg):
    from asr_attention.data.datamodule import build_datamodule

    for seed in (0, 2):
        cfg = compose_cfg("train", [f"seed={seed}", "data.limit_train=16", "logger=none"])
        assert cfg.data.seed == seed
        texts = build_datamodule(cfg.data, None).corpus_texts()
        datamodule = build_datamodule(cfg.data, CharTokenizer.from_texts(texts))
        datamodule.setup()
        assert datamodule.train_dataloader().batch_sampler.sampler.seed == seed


def test_bucket_sampler_covers_each_index_once_and_sorts_batches():
    rng = np.random.default_rng(0)
    durations = rng.uniform(1.0, 20.0, size=400).tolist()
    s = BucketBatchSampler(durations, batch_size=8, shuffle=True, seed=3)
    orders = []
    for epoch in range(2):
        s.set_epoch(epoch)
        batches = list(s)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(400)) and len(batches) == 50 == len(s)
        spreads = [max(durations[i] for i in b) - min(durations[i] for i in b) for b in batches]
        assert max(spreads) < 1.0  # random batches of 8 from U(1, 20) would spread ~15 s
        orders.append(flat)
    assert orders[0] != orders[1]
    s.set_epoch(1)
    assert [i for b in s for i in b] == orders[1]  # deterministic per (seed, epoch)

    budget = BucketBatchSampler(durations, max_batch_seconds=60.0, shuffle=False)
    batches = list(budget)
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert all(len(b) * max(durations[i] for i in b) <= 60.0 for b in batches)
    flat = [durations[i] for b in batches for i in b]
    assert flat == sorted(flat)


def test_build_datamodule_from_hydra_node():
    cfg = OmegaConf.create({"corpus": "an4", "root": None, "train_split": "train", "val_split": "val",
                            "test_split": "test", "batch_size": 16, "num_workers": 0, "max_duration": 2.0,
                            "on_bad_audio": "skip", "oov": "error", "validate_audio": False})
    dm = build_datamodule(cfg, an4_tokenizer())
    dm.setup()
    assert max(dm.datasets["train"].durations) <= 2.0 and len(dm.datasets["test"]) == 130
    assert len(dm.datasets["train"]) == sum(u.duration <= 2.0 for u in read_an4("train")
                                            if u.speaker not in AN4_VAL_SPEAKERS)
    placeholder = build_datamodule(OmegaConf.create({"name": "an4", "root": None, "sample_rate": 16000,
                                                     "batch_size": 2, "num_workers": 0}), None)
    assert placeholder.corpus == "an4" and placeholder.batch_size == 2
    with pytest.raises(ValueError, match="data.sample_rate 8000"):
        build_datamodule({"sample_rate": 8000}, None)
    with pytest.raises(ValueError, match=r"unknown fields \['batchsize'\]"):
        build_datamodule({"batchsize": 3}, None)
    with pytest.raises(ValueError, match="data.corpus 'timit'"):
        ASRDataModule("timit", "/x", CharTokenizer.from_texts(["A"])).setup()


def test_bucket_sampler_shards_batches_across_ranks():
    rng = np.random.default_rng(1)
    durations = rng.uniform(1.0, 20.0, size=403).tolist()  # 403 / 8 -> 51 batches: one left over for W=2
    single = BucketBatchSampler(durations, batch_size=8, shuffle=True, seed=5, num_replicas=1, rank=0)
    ranks = [BucketBatchSampler(durations, batch_size=8, shuffle=True, seed=5, num_replicas=2, rank=r)
             for r in range(2)]
    orders = []
    for epoch in range(2):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        full = list(single)
        assert len(full) == 51
        r0, r1 = list(ranks[0]), list(ranks[1])
        assert len(r0) == len(r1) == len(ranks[0]) == len(ranks[1]) == 25  # equal counts: remainder dropped
        assert not {i for b in r0 for i in b} & {i for b in r1 for i in b}  # disjoint
        # rank r takes batches r, r+2, ... of the single-process order; together: that list minus its last batch
        assert r0 == full[0:50:2] and r1 == full[1:50:2]
        assert sorted(r0 + r1) == sorted(full[:50])
        assert ranks[0].all_batches() == full
        orders.append((r0, r1))
    assert orders[0][0] != orders[1][0] and orders[0][1] != orders[1][1]  # set_epoch reshuffles each rank
    # no remainder: the union is exactly the single-process list
    even = [BucketBatchSampler(durations[:400], batch_size=8, seed=5, num_replicas=2, rank=r) for r in range(2)]
    full = list(BucketBatchSampler(durations[:400], batch_size=8, seed=5))
    assert sorted(list(even[0]) + list(even[1])) == sorted(full) and len(even[0]) == 25
    with pytest.raises(ValueError, match="rank 2 of num_replicas 2"):
        BucketBatchSampler(durations, batch_size=8, num_replicas=2, rank=2)


def test_bucket_sampler_reads_the_world_from_torch_distributed(monkeypatch):
    durations = [1.0 + i for i in range(20)]
    assert (BucketBatchSampler(durations, batch_size=2).num_replicas, BucketBatchSampler(durations, 2).rank) == (1, 0)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    s = BucketBatchSampler(durations, batch_size=2)
    assert (s.num_replicas, s.rank, len(s)) == (4, 3, 2)  # 10 batches over 4 ranks: 2 each, 2 dropped
    assert BucketBatchSampler(durations, batch_size=2, num_replicas=1, rank=0).num_replicas == 1  # explicit wins


def test_lightning_calls_set_epoch_on_the_bucket_sampler_each_epoch(tmp_path):
    """Lightning 2.6 (fit_loop.on_advance_start -> _set_sampler_epoch) calls set_epoch on
    `dataloader.batch_sampler.sampler`, which the bucket sampler points at itself: each epoch a new order."""
    durations = [1.0 + (i * 7) % 13 for i in range(24)]
    sampler = BucketBatchSampler(durations, batch_size=4, shuffle=True, seed=2)
    seen: list[list[list[int]]] = []

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def on_train_epoch_start(self):
            seen.append([])

        def training_step(self, batch, batch_idx):
            seen[-1].append(batch.tolist())
            return (self.w * batch.float()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    loader = torch.utils.data.DataLoader(list(range(24)), batch_sampler=sampler)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Recorder(), loader)
    assert seen == [sampler.batches(e) for e in range(3)]
    assert seen[0] != seen[1] != seen[2]


# ---- where a corpus is expected, and what setup counts for results.json ----------------------------------------
def test_missing_root_or_split_names_the_folder_and_what_belongs_there(tmp_path):
    from asr_attention.data.corpora import check_split, read_corpus

    with pytest.raises(ValueError, match=r"data.root is null: data=librispeech needs its folder") as err:
        check_split("librispeech", None, "train-clean-100")
    assert "train-clean-100/, dev-clean/, test-clean/" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"data.root=/nonexistent/ls: no such folder"):
        check_split("librispeech", "/nonexistent/ls", "dev-clean")
    (tmp_path / "dev-clean").mkdir()
    with pytest.raises(FileNotFoundError) as err:  # the subset is there but the root is one level off
        check_split("librispeech", tmp_path, "dev-clean+test-clean")
    assert f"LibriSpeech subset 'test-clean' not found: {tmp_path / 'test-clean'} is not a folder" in str(err.value)
    assert "<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"no <speaker>/<chapter>/\*\.trans\.txt under"):
        read_corpus("librispeech", tmp_path, "dev-clean")  # an empty subset folder
    with pytest.raises(FileNotFoundError) as err:
        check_split("tedlium2", tmp_path, "dev")
    assert f"TED-LIUM split 'dev' not found: {tmp_path / 'dev' / 'stm'} is not a folder" in str(err.value)
    assert "stm/<talk>.stm and sph/<talk>.sph" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        check_split("manifest", tmp_path, "train.tsv")
    assert f"manifest not found: {tmp_path / 'train.tsv'}" in str(err.value) and "utt_id, path" in str(err.value)
    (tmp_path / "train.tsv").write_text("utt_id\tfile\ttext\tduration\nu1\ta.wav\tHI\t1.0\n")
    with pytest.raises(ValueError, match=r"missing columns \['path'\]. Expected a tab-separated file"):
        read_corpus("manifest", tmp_path, "train.tsv")
    with pytest.raises(FileNotFoundError, match=r"Expected transcripts.tsv \(columns utt_id, path, speaker"):
        check_split("an4", tmp_path, "train")


def test_setup_counts_empty_and_oov_changed_transcripts_and_off_durations(tmp_path, caplog):
    audio = tmp_path / "one_second.wav"
    sf.write(audio, sine(1.0), SR)
    utt = lambda uid, text, duration=1.0: Utterance(uid, str(audio), text, duration, "s_" + uid)  # noqa: E731
    write_manifest([utt("fine", "HELLO"), utt("only-oov", "42"), utt("mixed", "HELLO 42"), utt("blank", "?!"),
                    utt("long", "HELLO", 1.5), utt("close", "HELLO", 1.05)], tmp_path / "train.tsv")
    write_manifest([utt("v", "HELLO")], tmp_path / "val.tsv")
    write_manifest([utt("t", "WORLD 7")], tmp_path / "test.tsv")
    dm = _dm(tmp_path, oov="drop")
    with caplog.at_level("WARNING"):
        dm.setup()
    # "42" loses every character to oov=drop; "?!" is punctuation only, which normalising removes anyway
    assert dm.transcripts == {
        "empty": {"train": ["only-oov", "blank"], "val": [], "test": []},
        "changed_by_oov_drop": {"train": ["only-oov", "mixed"], "val": [], "test": ["t"]},
    }
    # stated 1.5 s for a 1.0 s file is reported; 1.05 s is within the 0.1 s tolerance
    assert dm.duration_mismatches == [{"utt_id": "long", "path": str(audio), "stated": 1.5, "audio": 1.0}]
    assert f"utterance long: stated duration 1.500 s, but {audio} holds 1.000 s" in caplog.text
    assert "train: 2 utterances with empty transcripts (first: only-oov, blank)" in caplog.text


@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_loader_resumes_mid_epoch_with_the_batches_left(num_workers):
    """A loader's state after 2 batches of epoch 1, loaded into a fresh loader (as a resumed run does), makes it
    yield exactly epoch 1's other batches; its length stays the whole epoch's (the LR schedule counts on it)."""
    from asr_attention.data.resumable import ResumableLoader

    durations = [1.0 + (i * 7) % 13 for i in range(40)]

    def loader():
        return ResumableLoader(list(range(40)), batch_sampler=BucketBatchSampler(durations, 4, seed=5),
                               num_workers=num_workers, generator=torch.Generator().manual_seed(0))

    first = loader()
    first.batch_sampler.set_epoch(1)
    it = iter(first)
    seen = [next(it).tolist() for _ in range(2)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [b.tolist() for b in resumed]
    assert seen + rest == first.batch_sampler.batches(1) and len(rest) == 8
    assert len(resumed) == 10 and resumed.state_dict() == {"epoch": 1, "batches": 10}
    resumed.batch_sampler.set_epoch(2)  # the next epoch is whole again
    assert [b.tolist() for b in resumed] == first.batch_sampler.batches(2)
