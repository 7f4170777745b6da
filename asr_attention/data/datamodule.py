"""`ASRDataModule`: corpus -> checked utterances -> duration-bucketed, padded batches of raw 16 kHz audio.

Features: this module always yields raw 16 kHz mono waveforms (not normalised). Backbones compute their own
features: wav2vec2 models consume the raw wave (their feature extractor's normalisation is theirs to apply);
the Branchformer adapter owns its 80-mel Fbank front end. So one datamodule serves every backbone.

Bad audio never crashes an epoch. At setup every file's header is read (soundfile.info: cheap), and files
that are unreadable or empty are skipped with a `BadAudioWarning` naming the path (on_bad_audio="skip") or
raise `AudioError` with the path ("error"). Decode errors that only show at read time are caught by the
dataset and dropped by collate. Every skip is recorded once in `skipped` (utt_id, path, reason), for
results.json. A batch whose items all failed becomes `None` (in `on_before_batch_transfer`, main process):
Lightning's training loop skips it by itself; validation/test steps receive None and must return early.

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

from .audio import AudioError, audio_info
from .corpora import AN4_VAL_SPEAKERS, read_corpus
from .dataset import ASRDataset, BadAudioPolicy, Skipped, collate, warn_skipped
from .manifest import Utterance
from .resumable import ResumableLoader
from .sampler import BucketBatchSampler
from .text import CharTokenizer, OOVPolicy, check_oov_policy

log = logging.getLogger(__name__)

DURATION_TOLERANCE_S = 0.1  # a stated duration further than this from the audio file's is reported


class ASRDataModule(L.LightningDataModule):
    """Train/val/test over one corpus. Batches are dicts: waves (B, S), wave_lengths (B,), targets (B, L)
    (padded with -100), target_lengths (B,), utt_ids, texts (normalised references).

    corpus: an4 | librispeech | tedlium2 | manifest; root: its folder (None = the vendored AN4).
    Splits: AN4 train/val/test; LibriSpeech subset names (train-clean-100, dev-clean, test-clean, '+' joins);
    TED-LIUM 2 train/dev/test; manifest: TSV paths. Speakers of the val split are removed from train (AN4's
    val is carved out of its train split), so val and train never share a speaker.
    max_duration (s): drops longer *training* utterances; val/test stay whole so WER is comparable.
    limit_train/val/test: keep the first N utterances (manifest order) for quick demos.
    """

    def __init__(self, corpus: str = "an4", root: str | None = None, tokenizer: CharTokenizer | None = None,
                 batch_size: int | None = 8, num_workers: int = 0, max_duration: float | None = None,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 val_speakers: list[str] | tuple[str, ...] = AN4_VAL_SPEAKERS,
                 on_bad_audio: BadAudioPolicy = "skip", oov: OOVPolicy = "error",
                 limit_train: int | None = None, limit_val: int | None = None, limit_test: int | None = None,
                 max_batch_seconds: float | None = None, eval_batch_size: int | None = None,
                 validate_audio: bool = True, seed: int = 0, pin_memory: bool | None = None):
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
        self.datasets: dict[str, ASRDataset] = {}
        self.skipped: list[dict] = []
        self._skipped_ids: set[str] = set()
        # For results.json: per split, the utterance ids whose reference text is empty or was changed by
        # oov="drop", and the whole-file utterances whose stated duration disagrees with their audio file's.
        self.transcripts: dict[str, dict[str, list[str]]] = {"empty": {}, "changed_by_oov_drop": {}}
        self.duration_mismatches: list[dict] = []

    # ---- reading -------------------------------------------------------------------------------------------
    def _read(self, part: str) -> list[Utterance]:
        return read_corpus(self.corpus, self.root, self.splits[part],
                           val_speakers=self.val_speakers if self.corpus == "an4" else None)

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

    def record_skip(self, utt_id: str, path: str, reason: str) -> None:
        if utt_id not in self._skipped_ids:
            self._skipped_ids.add(utt_id)
            self.skipped.append({"utt_id": utt_id, "path": path, "reason": reason})

    def _check_audio(self, utts: list[Utterance]) -> list[Utterance]:
        """Header check: each file read once (a TED-LIUM talk holds many segments); a segment must start
        inside its file."""
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
            if not isinstance(info, AudioError) and u.start is not None and u.start >= info:
                info = AudioError(u.path, f"segment starts at {u.start:.2f} s, after the end ({info:.2f} s)")
            if isinstance(info, AudioError):
                if self.on_bad_audio == "error":
                    raise info
                s = Skipped(u.utt_id, u.path, info.reason)
                warn_skipped(s)
                self.record_skip(*s)
            else:
                kept.append(u)
        return kept

    def _build(self, part: str, utts: list[Utterance]) -> ASRDataset:
        if part == "train" and self.max_duration is not None:
            n = len(utts)
            utts = [u for u in utts if u.duration <= self.max_duration]
            log.info("train: dropped %d utterances longer than %.1f s", n - len(utts), self.max_duration)
        if self.limits[part] is not None:
            utts = utts[: self.limits[part]]
        texts = [self.tokenizer.normalise(u.text, u.utt_id, self.oov) for u in utts]
        if self.validate_audio:
            keep = set(id(u) for u in self._check_audio(utts))
            texts = [t for u, t in zip(utts, texts) if id(u) in keep]
            utts = [u for u in utts if id(u) in keep]
        targets = [self.tokenizer.encode(t, u.utt_id, self.oov) for u, t in zip(utts, texts)]
        self._note_transcripts(part, utts, texts)
        return ASRDataset(utts, targets, texts, on_bad_audio=self.on_bad_audio)

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
            val = self._read("val")
            self.datasets.update(train=self._build("train", self._train_utterances(val)), val=self._build("val", val))
        if "test" not in self.datasets:
            self.datasets["test"] = self._build("test", self._read("test"))
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

    def spread_dataloader(self, part: str, seconds: float, seed: int) -> DataLoader:
        """Utterances drawn at random across a split (seeded) until they hold `seconds` of audio (or the whole
        split), in evaluation batches: unlike the split's first batch, which the sampler sorts shortest first,
        they span its lengths and speakers."""
        order = list(range(len(self.datasets[part])))
        random.Random(seed).shuffle(order)
        durations, chosen, total = self.datasets[part].durations, [], 0.0
        for i in order:
            if total >= seconds:
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


def build_datamodule(cfg: Mapping[str, Any], tokenizer: CharTokenizer | None) -> ASRDataModule:
    """From the Hydra `data` node (corpus, root, train/val/test_split, batch_size, num_workers, max_duration,
    on_bad_audio, oov, and optionally max_batch_seconds, eval_batch_size, limit_*, val_speakers, seed,
    validate_audio, pin_memory; `name` stands for corpus if corpus is absent; sample_rate must be 16000).
    Unknown fields are an error naming them, so a typo cannot silently fall back to a default."""
    allowed = {"corpus", "root", "train_split", "val_split", "test_split", "batch_size", "num_workers",
               "max_duration", "on_bad_audio", "oov", "max_batch_seconds", "eval_batch_size", "limit_train",
               "limit_val", "limit_test", "val_speakers", "validate_audio", "seed", "pin_memory"}
    cfg = dict(cfg)
    cfg.pop("_target_", None)
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
    return ASRDataModule(tokenizer=tokenizer, **cfg)
