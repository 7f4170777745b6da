"""`ASRDataModule`: corpus -> checked utterances -> duration-bucketed, padded batches of raw 16 kHz audio.

Features: this module always yields raw 16 kHz mono waveforms (not normalised). Backbones compute their own
features: wav2vec2 models consume the raw wave (their feature extractor's normalisation is theirs to apply);
the Branchformer adapter owns its 80-mel Fbank front end. So one datamodule serves every backbone.

Bad audio never crashes an epoch. At setup every file's header is read (soundfile.info: cheap), and files
that are unreadable or empty, or utterances longer than the model reads (`max_audio_seconds`, the backbone's:
Whisper's 30-s window), are skipped with a `BadAudioWarning` naming the path (on_bad_audio="skip") or raise
`AudioError` naming the path and why ("error"). Decode errors that only show at read time are caught by the
dataset and dropped by collate. Every skip is recorded once in `skipped` (utt_id, path, reason), for
results.json. A batch whose items all failed becomes `None` (in `on_before_batch_transfer`, main process):
Lightning's training loop skips it by itself; validation/test steps receive None and must return early.

Within a split each utterance needs its own utt_id (a repeated one is a ValueError naming the split or its
manifest); splits may share ids.

Transcripts are normalised to the tokenizer's vocabulary at setup; characters outside it raise ValueError
naming the utterance (oov="error") or are dropped (oov="drop"). Utterances whose transcript ends up empty or
was changed by oov="drop" are counted in `transcripts`, and whole-file utterances whose stated duration is more
than DURATION_TOLERANCE_S from their file's in `duration_mismatches` (both for results.json, with their ids).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from ..config.errors import UserError
from .audio import AudioError, audio_info, check_length
from .corpora import AN4_VAL_SPEAKERS, _manifest_path, read_corpus
from .dataset import ASRDataset, BadAudioPolicy, Skipped, collate, warn_skipped
from .manifest import Utterance, check_unique_ids
from .resumable import ResumableLoader
from .sampler import BucketBatchSampler
from .text import CharTokenizer, OOVPolicy, check_oov_policy

log = logging.getLogger(__name__)

DURATION_TOLERANCE_S = 0.1  # a stated duration further than this from the audio file's is reported


class EmptySplit(UserError, ValueError):
    """A split holds no utterance to train or measure on (the message names it and why)."""


class ASRDataModule(L.LightningDataModule):
    """Train/val/test over one corpus. Batches are dicts: waves (B, S), wave_lengths (B,), targets (B, L)
    (padded with -100), target_lengths (B,), utt_ids, texts (normalised references).

    corpus: an4 | librispeech | tedlium2 | manifest | speechocean762 (test only); root: its folder (None = the
    vendored copy of AN4 or speechocean762).
    Splits: AN4 train/val/test; LibriSpeech subset names (train-clean-100, dev-clean, test-clean, '+' joins);
    TED-LIUM 2 train/dev/test; manifest: TSV paths. Speakers of the val split are removed from train (AN4's
    val is carved out of its train split), so val and train never share a speaker.
    max_duration (s): drops longer *training* utterances; val/test stay whole so WER is comparable.
    max_audio_seconds (s): the model's limit; a longer utterance of any split is bad audio (see on_bad_audio).
    limit_train/val/test: keep the first N utterances (manifest order) for quick demos.
    """

    def __init__(self, corpus: str = "an4", root: str | None = None, tokenizer: CharTokenizer | None = None,
                 batch_size: int | None = 8, num_workers: int = 0, max_duration: float | None = None,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 val_speakers: list[str] | tuple[str, ...] = AN4_VAL_SPEAKERS,
                 on_bad_audio: BadAudioPolicy = "skip", oov: OOVPolicy = "error",
                 limit_train: int | None = None, limit_val: int | None = None, limit_test: int | None = None,
                 max_batch_seconds: float | None = None, eval_batch_size: int | None = None,
                 validate_audio: bool = True, seed: int = 0, pin_memory: bool | None = None,
                 max_audio_seconds: float | None = None):
        super().__init__()
        if on_bad_audio not in ("skip", "error"):
            raise ValueError(f"data.on_bad_audio {on_bad_audio!r}: allowed 'skip' or 'error'")
        check_oov_policy(oov, "data.oov")
        self.corpus, self.root, self.tokenizer = corpus, root, tokenizer
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.limits = {"train": limit_train, "val": limit_val, "test": limit_test}
        self.batch_size, self.max_batch_seconds = batch_size, max_batch_seconds
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.max_duration, self.val_speakers = num_workers, max_duration, tuple(val_speakers)
        self.on_bad_audio, self.oov, self.validate_audio, self.seed = on_bad_audio, oov, validate_audio, seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.max_audio_seconds = max_audio_seconds  # not a data.* field: the model's (Backbone.max_audio_seconds)
        self.datasets: dict[str, ASRDataset] = {}
        self._listed: dict[str, list[Utterance]] = {}  # per split name: what its corpus lists
        self._kept: dict[tuple, dict[str, list[Utterance]]] = {}  # per (train, val, test) names: `utterances()`
        self.skipped: list[dict] = []
        self._skipped_ids: set[tuple[str, str]] = set()
        # For results.json: per split, the utterance ids whose reference text is empty or was changed by
        # oov="drop", and the whole-file utterances whose stated duration disagrees with their audio file's.
        self.transcripts: dict[str, dict[str, list[str]]] = {"empty": {}, "changed_by_oov_drop": {}}
        self.duration_mismatches: list[dict] = []

    # ---- reading -------------------------------------------------------------------------------------------
    def _read(self, part: str) -> list[Utterance]:
        """The split as its corpus lists it, read once (a LibriSpeech listing opens every file's header); an
        utt_id repeated within it is an error naming the split (or its manifest)."""
        split = self.splits[part]
        if split not in self._listed:
            utts = read_corpus(self.corpus, self.root, split,
                               val_speakers=self.val_speakers if self.corpus == "an4" else None)
            where = (f"manifest {_manifest_path(self.root, split)} (data.{part}_split)"
                     if self.corpus == "manifest" else f"data.{part}_split={split} of data.corpus={self.corpus}")
            check_unique_ids(utts, where)
            self._listed[split] = utts
        return self._listed[split]

    def corpus_texts(self) -> list[str]:
        """Raw training transcripts (val speakers removed), to build a tokenizer before setup."""
        return [u.text for u in self._train_utterances(self._read("val"))]

    def _train_utterances(self, val: list[Utterance]) -> list[Utterance]:
        train = self._read("train")
        held = {u.speaker for u in val}
        kept = [u for u in train if u.speaker not in held]
        if len(kept) < len(train):
            log.info("train: removed %d utterances of %d val speakers", len(train) - len(kept), len(held))
        return kept

    def utterances(self) -> dict[str, list[Utterance]]:
        """Each split's utterances before any audio is opened: val speakers kept out of train, training
        utterances over max_duration dropped, then the first limit_* kept. Needs no tokenizer."""
        key = tuple(self.splits.values())
        if key in self._kept:
            return self._kept[key]
        val = self._read("val")
        train = self._train_utterances(val)
        if self.max_duration is not None:
            n = len(train)
            train = [u for u in train if u.duration <= self.max_duration]
            log.info("train: dropped %d utterances longer than %.1f s", n - len(train), self.max_duration)
        listed = {"train": train, "val": val, "test": self._read("test")}
        self._kept[key] = {part: utts if self.limits[part] is None else utts[: self.limits[part]]
                           for part, utts in listed.items()}
        return self._kept[key]

    def check_not_empty(self, parts: tuple[str, ...] = ("train", "val", "test")) -> None:
        """Raise EmptySplit, naming the split and why, if one of `parts` holds no utterance: after setup, of
        those whose audio could be read; before it, of those listed (cheap: a run checks this before its model
        loads)."""
        listed = self.utterances()
        for part in parts:
            if self.datasets and len(self.datasets[part]) == 0 and listed[part]:
                raise EmptySplit(f"the {part} split ({self.splits[part]}) is empty: none of its {len(listed[part])} "
                                 f"audio files could be read (each is named in a warning above and in results.json's "
                                 f"skipped_files)")
            if not listed[part]:
                raise EmptySplit(f"the {part} split ({self.splits[part]}) is empty: {self._why_empty(part)}")

    def _why_empty(self, part: str) -> str:
        where = f"data.{part}_split={self.splits[part]!r} of data.corpus={self.corpus}"
        if not self._read(part):
            return f"{where} lists no utterance"
        if self.limits[part] == 0:
            return f"data.limit_{part}=0 keeps none of it"
        if part != "train":
            return f"{where} lists no utterance"
        val_speakers = sorted({u.speaker for u in self._read("val")})
        if not self._train_utterances(self._read("val")):
            return (f"all {len(self._read('train'))} utterances of {where} are by speakers of the val split "
                    f"({', '.join(val_speakers[:5])}{', ...' if len(val_speakers) > 5 else ''}), which are kept out "
                    f"of train so that val measures unseen speakers; choose a val split of other speakers")
        return f"every utterance is longer than data.max_duration={self.max_duration} s"

    def record_skip(self, utt_id: str, path: str, reason: str) -> None:
        """Once per utterance: a file listed in two splits under one id counts once; two splits' utterances that
        share an id but not a file count apart."""
        if (utt_id, path) not in self._skipped_ids:
            self._skipped_ids.add((utt_id, path))
            self.skipped.append({"utt_id": utt_id, "path": path, "reason": reason})

    def _check_audio(self, utts: list[Utterance]) -> list[Utterance]:
        """Header check: each file read once (a TED-LIUM talk holds many segments); a segment must start
        inside its file, and no utterance may be longer than the model reads."""
        infos: dict[str, AudioError | float] = {}
        for path in dict.fromkeys(u.path for u in utts):
            try:
                infos[path] = audio_info(path).duration
            except AudioError as e:
                infos[path] = e
        kept = []
        for u in utts:
            info = infos[u.path]
            whole_file = not isinstance(info, AudioError) and u.start is None
            if whole_file and abs(info - u.duration) > DURATION_TOLERANCE_S:
                self.duration_mismatches.append({"utt_id": u.utt_id, "path": u.path, "stated": u.duration,
                                                 "audio": info})
                log.warning("utterance %s: stated duration %.3f s, but %s holds %.3f s (counted in results.json)",
                            u.utt_id, u.duration, u.path, info)
            if not isinstance(info, AudioError):
                info = self._utterance_error(u, info) or info
            if isinstance(info, AudioError):
                if self.on_bad_audio == "error":
                    raise info
                s = Skipped(u.utt_id, u.path, info.reason)
                warn_skipped(s)
                self.record_skip(*s)
            else:
                kept.append(u)
        return kept

    def _utterance_error(self, u: Utterance, file_seconds: float) -> AudioError | None:
        """What is wrong with a readable file's utterance: a segment that starts after the file ends, or more
        audio (its segment's, or the whole file's) than the model reads."""
        if u.start is not None and u.start >= file_seconds:
            return AudioError(u.path, f"segment starts at {u.start:.2f} s, after the end ({file_seconds:.2f} s)")
        end = file_seconds if u.end is None else min(u.end, file_seconds)
        try:
            check_length(u.path, end - (u.start or 0.0), self.max_audio_seconds)
        except AudioError as e:
            return e
        return None

    def _build(self, part: str, utts: list[Utterance]) -> ASRDataset:
        texts = [self.tokenizer.normalise(u.text, u.utt_id, self.oov) for u in utts]
        if self.validate_audio:
            keep = set(id(u) for u in self._check_audio(utts))
            texts = [t for u, t in zip(utts, texts) if id(u) in keep]
            utts = [u for u in utts if id(u) in keep]
        targets = [self.tokenizer.encode(t, u.utt_id, self.oov) for u, t in zip(utts, texts)]
        self._note_transcripts(part, utts, texts)
        return ASRDataset(utts, targets, texts, on_bad_audio=self.on_bad_audio, max_seconds=self.max_audio_seconds)

    def _note_transcripts(self, part: str, utts: list[Utterance], texts: list[str]) -> None:
        notes = {"empty": [u.utt_id for u, t in zip(utts, texts) if not t],
                 "changed_by_oov_drop": [u.utt_id for u, t in zip(utts, texts)
                                         if t != self.tokenizer.normal_form(u.text)]}
        for kind, ids in notes.items():
            self.transcripts[kind][part] = ids
            if ids:
                log.warning("%s: %d utterances with %s transcripts (first: %s); counted in results.json", part,
                            len(ids), kind.replace("_", " "), ", ".join(ids[:3]))

    def setup(self, stage: str | None = None) -> None:
        """Reads every split; stage "test" only the test split (evaluate.py: a corpus may have no other)."""
        parts = ("test",) if stage == "test" else ("train", "val", "test")
        if all(part in self.datasets for part in parts):
            return
        if self.tokenizer is None:
            raise ValueError("ASRDataModule needs a tokenizer before setup (CharTokenizer.from_texts("
                             "dm.corpus_texts()) or the pretrained head's vocabulary)")
        if "train" in parts:
            listed = self.utterances()
        else:  # a corpus evaluated on may hold a test split alone
            test = self._read("test")
            listed = {"test": test if self.limits["test"] is None else test[: self.limits["test"]]}
        self.datasets.update({part: self._build(part, listed[part]) for part in parts if part not in self.datasets})
        for part, ds in self.datasets.items():
            log.info("%s (%s): %d utterances, %.1f min", part, self.splits[part], len(ds),
                     sum(ds.durations) / 60)

    # ---- loaders -------------------------------------------------------------------------------------------
    def _loader(self, part: str, shuffle: bool, subset: list[int] | None = None) -> DataLoader:
        """Built when Lightning asks (after the strategy's setup), so under DDP torch.distributed is initialised
        and the training sampler shards its batches across the ranks. Val/test are not sharded: every rank
        evaluates the whole split (the synced WER/CER/loss then equal the single-process ones exactly; no batch
        of a split is dropped or repeated). subset: only these utterances of the split."""
        ds, durations = self.datasets[part], self.datasets[part].durations
        if subset is not None:
            ds, durations = Subset(ds, subset), [durations[i] for i in subset]
        shard = {} if shuffle else {"num_replicas": 1, "rank": 0}
        sampler = BucketBatchSampler(durations, self.batch_size if shuffle else self.eval_batch_size,
                                     self.max_batch_seconds, shuffle=shuffle, seed=self.seed, **shard)
        if sampler.num_replicas > 1:
            log.info("%s: rank %d of %d takes %d of the batches", part, sampler.rank, sampler.num_replicas,
                     len(sampler))
        # Training resumes mid-epoch (data/resumable.py). Each loader's own generator seeds its workers, so no
        # iteration draws from the global RNG: a resumed run, which skips the zero-shot test and creates its
        # training iterator at another moment, draws the same dropout masks as an uninterrupted run.
        loader = ResumableLoader if shuffle else DataLoader
        return loader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                      pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                      generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def spread_dataloader(self, part: str, seconds: float, seed: int, count: int | None = None) -> DataLoader:
        """Utterances drawn at random across a split (seeded) until they hold `seconds` of audio, or (count) until
        there are `count` of them (or the whole split), in evaluation batches: unlike the split's first batch,
        which the sampler sorts shortest first, they span its lengths and speakers."""
        order = list(range(len(self.datasets[part])))
        random.Random(seed).shuffle(order)
        durations, chosen, total = self.datasets[part].durations, [], 0.0
        for i in order:
            if (total >= seconds) if count is None else (len(chosen) >= count):
                break
            chosen.append(i)
            total += durations[i]
        return self._loader(part, shuffle=False, subset=chosen)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Runs in the main process: collect skip records that workers put in the batch; empty batch -> None."""
        if isinstance(batch, dict) and "skipped" in batch:
            for s in batch.pop("skipped"):
                self.record_skip(s["utt_id"], s["path"], s["reason"])
            if not batch["utt_ids"]:
                return None
        return batch


def build_datamodule(cfg: Mapping[str, Any], tokenizer: CharTokenizer | None,
                     max_audio_seconds: float | None = None) -> ASRDataModule:
    """From the Hydra `data` node (corpus, root, train/val/test_split, batch_size, num_workers, max_duration,
    on_bad_audio, oov, and optionally max_batch_seconds, eval_batch_size, limit_* (limit_ood is not this
    datamodule's), val_speakers, seed, validate_audio, pin_memory; `name` stands for corpus if corpus is absent;
    sample_rate must be 16000).
    Unknown fields are an error naming them, so a typo cannot silently fall back to a default.
    max_audio_seconds: the model's limit (Backbone.max_audio_seconds), not a data field."""
    allowed = {"corpus", "root", "train_split", "val_split", "test_split", "batch_size", "num_workers",
               "max_duration", "on_bad_audio", "oov", "max_batch_seconds", "eval_batch_size", "limit_train",
               "limit_val", "limit_test", "limit_ood", "val_speakers", "validate_audio", "seed", "pin_memory"}
    cfg = dict(cfg)
    cfg.pop("_target_", None)
    cfg.pop("limit_ood", None)  # the out-of-domain set's limit: its own datamodule's limit_test (training/ood.py)
    name = cfg.pop("name", None)  # the config group's label; the corpus when `corpus` is not given
    cfg.setdefault("corpus", name or "an4")
    sample_rate = cfg.pop("sample_rate", 16_000)
    if sample_rate != 16_000:
        raise ValueError(f"data.sample_rate {sample_rate}: only 16000 is supported (audio is resampled to it)")
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"data config: unknown fields {unknown}; allowed {sorted(allowed)}")
    if cfg.get("root") is not None:
        cfg["root"] = str(Path(cfg["root"]).expanduser())
    if cfg.get("val_speakers") is not None:
        cfg["val_speakers"] = tuple(cfg["val_speakers"])
    else:
        cfg.pop("val_speakers", None)
    return ASRDataModule(tokenizer=tokenizer, max_audio_seconds=max_audio_seconds, **cfg)
