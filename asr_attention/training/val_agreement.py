"""How much of the original model's behaviour a converted one keeps, measured on val alone: `val_agreement_wer` is
the WER of the converted model's val transcripts scored against the unconverted model's own transcripts of the
same audio (both through the scoring normaliser, both cased Whisper text). 0 = it writes what the original wrote.

The retention study chooses recipes on it beside val WER (reports/retention.py), so that a recipe is not picked
for turning Whisper into an AN4 reader; no out-of-domain audio is read. The original's transcripts are decoded
once, before conversion (train.py), with the run's decoding options, and are found by utt_id and audio id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torchmetrics.functional.text import word_error_rate

from ..backbones.eval_mode import eval_mode
from ..backbones.whisper.adapter import Whisper
from ..generation.decoding import DecodingOptions, transcribe


class ValAgreement:
    def __init__(self):
        self.originals: dict[tuple[str, str], str] = {}
        self._pairs: list[tuple[str, str]] = []  # (converted, original), this val pass

    @torch.no_grad()
    def record(self, backbone: Whisper, batches: Iterable[dict | None], decoding: DecodingOptions,
               device: torch.device) -> None:
        """The unconverted backbone's transcripts of every val batch (None: a batch of unreadable files)."""
        with eval_mode(backbone.to(device)):
            for batch in batches:
                if batch is None:
                    continue
                memory = backbone.encode(batch["waves"].to(device), batch["wave_lengths"].to(device))
                for key, h in zip(zip(batch["utt_ids"], batch["audio_ids"]), transcribe(backbone, memory, decoding)):
                    self.originals[key] = backbone.tokens.decode(h.tokens)

    def update(self, batch: dict, hypotheses: list[str]) -> None:
        if self.originals:
            keys = zip(batch["utt_ids"], batch["audio_ids"])
            self._pairs += [(h, self.originals[k]) for h, k in zip(hypotheses, keys) if k in self.originals]

    def compute(self, normalise: Callable[..., str]) -> float | None:
        """The pass's agreement WER (None when no original was recorded); empties the pass."""
        pairs, self._pairs = self._pairs, []
        if not pairs:
            return None
        return float(word_error_rate([normalise(h, cased=True) for h, _ in pairs],
                                     [normalise(o, cased=True) for _, o in pairs]))
