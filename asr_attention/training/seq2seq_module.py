"""Whisper's own head: teacher-forced cross-entropy fine-tuning, and cached autoregressive decoding to score.

An encoder that nothing changes (frozen, not converted) gives the same output for an utterance every time: with
cache_encoder, each utterance's encoder output is computed once and kept (on the host) across every test pass
and epoch. Its attention-module identities and requires_grad flags key the store, so converting or unfreezing
the encoder empties it (an encoder with any trainable parameter is never served from it: it would get no
gradient). Within the store an output is found by utt_id and audio id (the hash of the waveform that collate
puts in batch["audio_ids"]): a test utterance that shares its id with a val one gets its own audio's output.

Retention terms (optim.kl_weight, optim.distill_weight, optim.distill_text=teacher) read the frozen unconverted
model (teacher.py). Its encoder output equals the student's while the student's encoder is unconverted and its
output stable (`encoder_key`): the student's is reused; otherwise the teacher encodes the batch itself.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.whisper.modeling_whisper import WhisperAttention

from ..backbones.whisper.adapter import Whisper
from ..data.normalisers import scoring_normaliser
from ..generation.decoding import DecodingOptions, transcribe
from ..generation.token_limit import with_token_limit
from .ctc_module import ASRFineTuner
from .output_distillation import decoder_kl
from .teacher_text import TeacherTranscripts, transcript_ids
from .utterance_store import fill_missing, utterance_keys
from .val_agreement import ValAgreement


class Seq2SeqFineTuner(ASRFineTuner):
    """truncated: per phase ("val", "test", "before_test", ...), the utterances whose transcript the decoding token
    limit cut (results.json records them). teacher_text: the teacher's transcripts (optim.distill_text=teacher)."""

    transcript_term = "ce"

    def __init__(self, backbone: Whisper, decoding: DecodingOptions | None = None, cache_encoder: bool = True,
                 **optim):
        super().__init__(backbone, **optim)
        self.cased_hypotheses = True  # Whisper writes "CQQF" for spelled letters
        self.decoding = with_token_limit(backbone, decoding or DecodingOptions())
        self.truncated: dict[str, set[str]] = {}
        self._phase = "val"
        self.cache_encoder = cache_encoder
        self._memories: dict[tuple[str, str], Tensor] = {}  # (utt_id, audio id) -> encoder output
        self._memories_key: tuple | None = None
        self.teacher_text = TeacherTranscripts() if self.distill_text == "teacher" else None
        self.agreement = ValAgreement()  # val_agreement_wer, once train.py recorded the original's transcripts

    def forward(self, waves: Tensor, wave_lengths: Tensor) -> list[str]:
        """Recognition end to end (what the throughput figure times): encode, then decode with the cache."""
        memory = self.backbone.encode(waves, wave_lengths)
        return [self.backbone.tokens.decode(h.tokens) for h in transcribe(self.backbone, memory, self.decoding)]

    def hypotheses(self, waves: Tensor, wave_lengths: Tensor) -> list[str]:
        return self(waves, wave_lengths)

    def encoder_key(self) -> tuple | None:
        """None while the encoder's output can change (training it, or dropout or SpecAugment on); else what
        identifies its weights."""
        encoder, training = self.backbone.encoder, self.backbone.training
        if training and (encoder.dropout > 0 or self.backbone.masks_input) or any(
                p.requires_grad for p in encoder.parameters()):
            return None
        return tuple(id(layer.self_attn) for layer in encoder.layers)

    def memory(self, batch) -> Tensor:
        key = self.encoder_key() if self.cache_encoder else None
        if key is None:
            return self.backbone.encode(batch["waves"], batch["wave_lengths"])
        if key != self._memories_key:
            self._memories, self._memories_key = {}, key
        keys = utterance_keys(batch, "model.cache_encoder=true",
                              "to tell stored encoder outputs apart; or set model.cache_encoder=false")
        fill_missing(self._memories, keys, lambda rows: self._encode_rows(batch, rows))
        return torch.stack([self._memories[k] for k in keys]).to(batch["waves"].device)

    @torch.no_grad()
    def _encode_rows(self, batch, rows: list[int]) -> list[Tensor]:
        """The encoder's output for those rows of the batch, each on the CPU (the store holds every utterance)."""
        return [m.cpu() for m in self.backbone.encode(*audio_rows(batch, rows))]

    def loss_and_hyps(self, batch, decode: bool):
        memory = self.memory(batch)
        inputs, labels = self.backbone.tokens.teacher_forcing(batch["targets"])
        logits = self.backbone.decode(inputs, memory, padding=self.backbone.tokens.padding(batch["targets"]))
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        if not decode:
            return loss, None
        hypotheses = transcribe(self.backbone, memory, self.decoding)
        cut = {u for u, h in zip(batch["utt_ids"], hypotheses) if h.truncated}
        if cut:
            self.truncated.setdefault(self._phase, set()).update(cut)
        texts = [self.backbone.tokens.decode(h.tokens) for h in hypotheses]
        if self._phase == "val":
            self.agreement.update(batch, texts)
        return loss, texts

    def evaluate(self, batch, split: str):
        self._phase = self._prefix(split)  # where loss_and_hyps records the utterances it cut
        super().evaluate(batch, split)

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        agreement = self.agreement.compute(scoring_normaliser(self.scoring))
        if agreement is not None:
            self.log("val_agreement_wer", agreement)

    # ---- training ------------------------------------------------------------------------------------------
    def training_terms(self, batch) -> dict[str, Tensor]:
        """"ce" on the training text (the reference, or the teacher's transcript), and where on "kl" (the decoder
        output against the teacher's, on the same tokens) and "distill" (each converted site against the teacher's).
        With distill_text=teacher the batch's own targets are never read."""
        dist = self.distillation
        if dist is not None:
            dist.clear()
        reads_teacher_outputs = self.kl_weight > 0 or dist is not None
        with dist.recording(self.backbone) if dist is not None else nullcontext():
            memory = self.memory(batch)
            teacher_memory = self._teacher_memory(batch, memory) if reads_teacher_outputs else None
            targets = self._training_targets(batch, memory, teacher_memory)
            inputs, labels = self.backbone.tokens.teacher_forcing(targets)
            padding = self.backbone.tokens.padding(targets)
            logits = self.backbone.decode(inputs, memory, padding=padding)
        terms = {"ce": F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)}
        if reads_teacher_outputs:
            with torch.no_grad(), dist.recording_teacher(self.backbone) if dist is not None else nullcontext():
                teacher_logits = self.teacher.model.decode(inputs, teacher_memory, padding=padding)
            if self.kl_weight > 0:
                terms["kl"] = decoder_kl(logits, teacher_logits, labels, self.kl_temperature)
            if dist is not None:
                terms["distill"] = dist.compare()
        return terms

    def teacher_reuses_memory(self) -> bool:
        """Whether the teacher's encoder output is the student's: the student's encoder is the original one (no site
        converted) and its output does not change (`encoder_key`: frozen, and no dropout or SpecAugment now)."""
        original = all(isinstance(layer.self_attn, WhisperAttention) for layer in self.backbone.encoder.layers)
        return original and self.encoder_key() is not None

    @torch.no_grad()
    def _teacher_memory(self, batch, memory: Tensor, rows: list[int] | None = None) -> Tensor:
        """The teacher's encoder output for the batch (or its `rows`), its sites recorded where distilling."""
        if self.teacher_reuses_memory():
            return (memory if rows is None else memory[rows]).detach()
        dist = self.distillation if rows is None else None  # a transcript's encoding is not a distilled call
        with dist.recording_teacher(self.backbone) if dist is not None else nullcontext():
            return self.teacher.model.encode(*audio_rows(batch, rows))

    def _training_targets(self, batch, memory: Tensor, teacher_memory: Tensor | None) -> Tensor:
        """The text that teacher-forces this step: the batch's targets, or the teacher's transcripts (decoded once
        per utterance, from the teacher's encoder output)."""
        if self.teacher_text is None:
            return batch["targets"]

        def decode(rows: list[int]) -> list[list[int]]:
            own = teacher_memory[rows] if teacher_memory is not None else self._teacher_memory(batch, memory, rows)
            return transcript_ids(self.teacher.model, own, self.decoding)

        return self.teacher_text.targets(batch, decode)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.teacher_text is not None:  # a resumed run teacher-forces the same transcripts
            checkpoint["teacher_transcripts"] = self.teacher_text.state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.teacher_text is not None and "teacher_transcripts" in checkpoint:
            self.teacher_text.load(checkpoint["teacher_transcripts"])


def audio_rows(batch: dict, rows: list[int] | None) -> tuple[Tensor, Tensor]:
    """The batch's waves and wave_lengths, or those of its `rows` (None: every row)."""
    waves, lengths = batch["waves"], batch["wave_lengths"]
    if rows is None:
        return waves, lengths
    index = torch.tensor(rows, device=waves.device)
    return waves[index], lengths[index]
