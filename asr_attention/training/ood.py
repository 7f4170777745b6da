"""The out-of-domain test (issue 31): a run whose model names an `ood_test` set (Whisper's: speechocean762, read
sentences by non-native speakers) is also tested on it wherever it is tested on its own test split: unconverted
(with test_unconverted), right after conversion, and with the best checkpoint after fine-tuning. The set is an
evaluation set only: nothing trains, calibrates or selects a checkpoint on it (the checkpoint callback monitors
val_wer alone).

Scored with the set's own normaliser (data.corpora.OOD_SETS: Whisper's English one for speechocean762), the run's
own test split keeping the module's ("an4"). Each phase runs under a torch RNG of its own, seeded with the run's
seed, so that testing out of domain changes no other number of the run (the decoding fallback samples) and a
phase measures the same whenever a resumed run reaches it.

results.json: ood = {"set", "normaliser", "utterances", "skipped_files", "unconverted", "before", "after",
"predictions"}, each phase's metrics keyed as the run's own phases key theirs (test_wer, test_cer, test_raw_wer,
test_raw_cer, test_loss), predictions (the first 20) from the after phase. A phase results.json holds already is
not measured again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning as L
import torch

from ..backbones import Backbone
from ..data.corpora import OOD_SETS, check_split
from ..data.datamodule import ASRDataModule, EmptySplit, build_datamodule
from ..runs.results import Results
from .ctc_module import ASRFineTuner

log = logging.getLogger(__name__)

SPLIT = "test"  # an evaluation set's one split
# What the run's data config says of any data it reads (batching, workers, bad audio, out-of-vocabulary text);
# the corpus, its splits and their limits are the set's own.
SHARED_DATA_FIELDS = ("batch_size", "eval_batch_size", "max_batch_seconds", "num_workers", "on_bad_audio", "oov",
                      "validate_audio", "seed", "pin_memory")
KEPT_PREDICTIONS = 20


def ood_set(model: Mapping) -> str | None:
    """The model config's out-of-domain set (model.ood_test), None when it names none."""
    return model.get("ood_test")


def check_ood_split(model: Mapping) -> None:
    """Cheap, before any model loads: the set's manifest is where its reader will look."""
    if (name := ood_set(model)) is not None:
        check_split(name, None, SPLIT)


def ood_data_config(data: Mapping, name: str) -> dict[str, Any]:
    """The `data` node of the set: the run's shared fields, the vendored set's test split, data.limit_ood of it."""
    shared = {k: data[k] for k in SHARED_DATA_FIELDS if k in data}
    return {**shared, "corpus": name, "root": None, "test_split": SPLIT, "limit_test": data.get("limit_ood")}


def ood_datamodule(data: Mapping, name: str, tokenizer, max_audio_seconds: float | None) -> ASRDataModule:
    """The set's test split, read and checked (its audio headers, the model's length limit)."""
    datamodule = build_datamodule(ood_data_config(data, name), tokenizer, max_audio_seconds)
    datamodule.setup("test")
    if not len(datamodule.datasets["test"]):
        raise EmptySplit(f"the out-of-domain set {name} (model.ood_test) is empty: none of its audio files could be "
                         f"read (each is named in a warning above)")
    return datamodule


@contextmanager
def own_rng(seed: int) -> Iterator[None]:
    """Torch's RNG (CPU, and the current GPU) seeded here and restored after."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def score_on(trainer: L.Trainer, module: ASRFineTuner, datamodule: ASRDataModule, prefix: str, scoring: str,
             seed: int | None, ckpt_path: str | None = None) -> dict[str, float]:
    """One test pass over `datamodule`, scored with `scoring`, under its own RNG seeded `seed` (None: the process's
    RNG, as a run's own test); the metrics keyed test_wer, ... The module's scoring and test prefix are restored
    after (evaluate.py reads its predictions, which stay)."""
    kept = module.scoring, module.test_prefix
    module.scoring, module.test_prefix = scoring, prefix
    try:
        with own_rng(seed) if seed is not None else nullcontext():
            (metrics,) = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        module.scoring, module.test_prefix = kept
    return {"test" + k.removeprefix(prefix): v for k, v in metrics.items()}


class OODTest:
    """A run's out-of-domain phases, each recorded in results.json's `ood` once measured."""

    def __init__(self, name: str, datamodule: ASRDataModule, results: Results, seed: int):
        self.name, self.datamodule, self.results, self.seed = name, datamodule, results, seed
        self.normaliser = OOD_SETS[name]
        record = {"set": name, "normaliser": self.normaliser, "utterances": len(datamodule.datasets["test"]),
                  "skipped_files": datamodule.skipped}
        self.results.update(ood={**(results.get("ood") or {}), **record})
        log.info("out-of-domain set %s (model.ood_test): %d utterances, scored with the %s normaliser", name,
                 record["utterances"], self.normaliser)

    @classmethod
    def for_run(cls, cfg: Mapping, tokenizer, backbone: Backbone, results: Results) -> OODTest | None:
        """None when the model names no out-of-domain set."""
        name = ood_set(cfg["model"])
        if name is None:
            return None
        return cls(name, ood_datamodule(cfg["data"], name, tokenizer, backbone.max_audio_seconds), results,
                   cfg["seed"])

    def done(self, phase: str) -> bool:
        return (self.results.get("ood") or {}).get(phase) is not None

    def test(self, trainer: L.Trainer, module: ASRFineTuner, phase: str, ckpt_path: str | None = None) -> None:
        """Measure `phase` (unconverted, before, after) unless results.json holds it."""
        if self.done(phase):
            return
        metrics = score_on(trainer, module, self.datamodule, f"ood_{phase}_test", self.normaliser, self.seed,
                           ckpt_path)
        extra = {"predictions": module.last_predictions[:KEPT_PREDICTIONS]} if phase == "after" else {}
        self.results.update(ood={**self.results.get("ood"), phase: metrics, "skipped_files": self.datamodule.skipped,
                                 **extra})
