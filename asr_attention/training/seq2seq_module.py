"""Whisper's own head: teacher-forced cross-entropy fine-tuning, and cached autoregressive decoding to score.

An encoder that nothing changes (frozen, not converted) gives the same output for an utterance every time: with
cache_encoder, each utterance's encoder output is computed once and kept (on the host) across every test pass
and epoch. Its attention-module identities and requires_grad flags key the store, so converting or unfreezing
the encoder empties it (an encoder with any trainable parameter is never served from it: it would get no
gradient). Within the store an output is found by utt_id and audio id (the hash of the waveform that collate
puts in batch["audio_ids"]): a test utterance that shares its id with a val one gets its own audio's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones.whisper.adapter import Whisper
from ..generation.decoding import DecodingOptions, transcribe
from ..generation.token_limit import with_token_limit
from .ctc_module import ASRFineTuner


class Seq2SeqFineTuner(ASRFineTuner):
    """truncated: per phase ("val", "test", "before_test", ...), the utterances whose transcript the decoding token
    limit cut (results.json records them)."""

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
        if "audio_ids" not in batch:
            raise ValueError("model.cache_encoder=true needs batch['audio_ids'] (data/dataset.py's collate adds "
                             "them) to tell stored encoder outputs apart; or set model.cache_encoder=false")
        keys = list(zip(batch["utt_ids"], batch["audio_ids"]))
        missing = [i for i, k in enumerate(keys) if k not in self._memories]
        if missing:
            rows = torch.tensor(missing, device=batch["waves"].device)
            with torch.no_grad():
                out = self.backbone.encode(batch["waves"][rows], batch["wave_lengths"][rows])
            for i, m in zip(missing, out):
                self._memories[keys[i]] = m.cpu()
        return torch.stack([self._memories[k] for k in keys]).to(batch["waves"].device)

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
        return loss, [self.backbone.tokens.decode(h.tokens) for h in hypotheses]

    def evaluate(self, batch, split: str):
        self._phase = self._prefix(split)  # where loss_and_hyps records the utterances it cut
        super().evaluate(batch, split)
