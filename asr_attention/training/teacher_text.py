"""The unconverted model's own transcripts as the text that teacher-forces training (optim.distill_text=teacher) and
calibration (calibration.text=teacher): Whisper's decoding (generation/decoding.py `transcribe`, with the model's
decoding options) by the teacher, so fine-tuning needs no transcripts ("label-free") and sees the decoder states
the original model itself goes through.

A transcript is decoded once per utterance and kept, found by utt_id and audio id as the encoder-output store in
seq2seq_module.py finds its entries (utterance_store.py); the store travels in the run's checkpoints, so a resumed run teacher-forces the
same tokens (a transcript that the temperature fallback sampled depends on the batch it was decoded in). One that the
token limit cut has no <|endoftext|>; teacher forcing still ends it there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..backbones.eval_mode import eval_mode
from ..backbones.whisper.adapter import Whisper
from ..backbones.whisper.tokens import IGNORE
from ..generation.decoding import DecodingOptions, transcribe
from .utterance_store import fill_missing, utterance_keys


def transcript_ids(teacher: Whisper, memory: Tensor, decoding: DecodingOptions) -> list[list[int]]:
    """The text token ids (before <|endoftext|>) the model writes for each row of its encoder output."""
    with eval_mode(teacher):
        return [h.tokens for h in transcribe(teacher, memory, decoding)]


def as_targets(ids: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> Tensor:
    """Token id lists -> (B, L) right-padded with -100, as the datamodule's collate pads `targets`."""
    rows = [torch.tensor(list(i), dtype=torch.long) for i in ids]
    if not rows:
        return torch.zeros(0, 0, dtype=torch.long, device=device)
    return pad_sequence(rows, batch_first=True, padding_value=IGNORE).to(device)


class TeacherTranscripts:
    """(utt_id, audio id) -> the teacher's text token ids. decoded: how many utterances it has decoded."""

    def __init__(self):
        self.store: dict[tuple[str, str], list[int]] = {}
        self.decoded = 0

    def targets(self, batch: dict, decode: Callable[[list[int]], list[list[int]]]) -> Tensor:
        """The batch's teacher transcripts as `targets` (B, L); decode(rows) transcribes the rows not stored yet."""
        keys = utterance_keys(batch, "optim.distill_text=teacher", "to keep each utterance's teacher transcript")
        self.decoded += len(fill_missing(self.store, keys, lambda rows: [list(ids) for ids in decode(rows)]))
        return as_targets([self.store[k] for k in keys], batch["waves"].device)

    def state(self) -> list[list]:
        """For a checkpoint: [[utt_id, audio id, ids], ...]."""
        return [[u, a, ids] for (u, a), ids in self.store.items()]

    def load(self, state: list[list]) -> None:
        self.store = {(u, a): list(ids) for u, a, ids in state}
