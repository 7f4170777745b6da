"""The LightningModules: one base (metrics, logging, optimizer) and the CTC head; seq2seq_module.py holds
Whisper's decoder head."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.text import CharErrorRate, WordErrorRate
from transformers import get_cosine_schedule_with_warmup

from ..backbones import Backbone
from ..data.normalisers import scoring_normaliser
from ..data.text import CharTokenizer
from .distillation import SiteDistillation
from .teacher import Teacher


class ASRFineTuner(L.LightningModule):
    """What every head shares. A subclass gives `loss_and_hyps(batch, decode)`.

    Scoring: WER/CER on the texts after the `scoring` normaliser (data/normalisers.py; both sides, every model:
    under "an4", "CQQF7" and "C Q Q F SEVEN" are the same words) are `{split}_wer` / `_cer`; on the raw texts,
    `{split}_raw_wer` / `_cer`. scoring: "an4" (default) or "english" (Whisper's, while train.py tests out of
    domain). cased_hypotheses: the head writes in upper and lower case (Whisper), so capital runs are spelled
    letters.
    lr / weight_decay / warmup_steps: AdamW with linear warmup then cosine decay over the whole run.
    head_lr: the CTC output layer's lr (None: lr); a head that starts random can learn faster than the
    pretrained layers under it.
    attention_only_steps: train only the converted attention layers (and a CTC head that starts random) for the
    first N steps (they start as an approximation; the rest of the network already fits), then everything that
    is not frozen.
    distill_weight: add this times the distillation term (distillation.py: each attention site's output against
    the unconverted model's) to the training loss; None: off. Build the module before converting the backbone:
    the teacher (teacher.py, one frozen copy for every term that reads it) is copied from it here.
    ce_weight: the weight of the transcript loss (Whisper's cross-entropy; a CTC head's CTC loss); 0: none.
    kl_weight, kl_temperature, distill_text: Whisper's decoder only (seq2seq_module.py): KL at the decoder output,
    and which text teacher-forces training ("reference" or the teacher's own transcripts, "teacher").
    The training loss is the weighted sum of the terms, each logged as train_<term> (train_ce or train_ctc,
    train_kl, train_distill), the sum as train_loss."""

    transcript_term = "ctc"  # the name the head's own transcript loss is logged under

    def __init__(self, backbone: Backbone, lr: float = 1e-4, weight_decay: float = 0.01, warmup_steps: int = 100,
                 attention_only_steps: int = 0, head_lr: float | None = None, distill_weight: float | None = None,
                 ce_weight: float = 1.0, kl_weight: float | None = None, kl_temperature: float = 1.0,
                 distill_text: str = "reference"):
        super().__init__()
        self.backbone = backbone
        self.cased_hypotheses = False
        self.scoring = "an4"  # the normaliser's name (data/normalisers.py)
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.attention_only_steps, self.head_lr = attention_only_steps, head_lr
        self.distill_weight = distill_weight
        self.kl_weight, self.kl_temperature, self.distill_text = kl_weight or 0.0, kl_temperature, distill_text
        self.term_weights = {self.transcript_term: ce_weight, "kl": self.kl_weight, "distill": distill_weight}
        needs_teacher = distill_weight is not None or self.kl_weight > 0 or distill_text == "teacher"
        self.teacher = Teacher(backbone) if needs_teacher else None  # not a submodule (teacher.py)
        self.distillation = None if distill_weight is None else SiteDistillation(self.teacher.model)
        self.metrics = torch.nn.ModuleDict(
            {f"{split}_{kind}{name}": cls() for split in ("val", "test") for kind in ("", "raw_")
             for name, cls in (("wer", WordErrorRate), ("cer", CharErrorRate))}
        )
        self.last_predictions: list[dict] = []
        self.test_prefix = "test"  # "before_test" while measuring zero-shot WER right after conversion

    def loss_and_hyps(self, batch, decode: bool) -> tuple[torch.Tensor, list[str] | None]:
        """The training loss of the batch, and (decode=True) its transcripts."""
        raise NotImplementedError

    def hypotheses(self, waves: torch.Tensor, wave_lengths: torch.Tensor) -> list[str]:
        """The transcripts of raw 16 kHz waves (B, S), as the test step decodes them (transcribe.py)."""
        raise NotImplementedError

    def on_before_optimizer_step(self, optimizer):
        """attention_only_steps: drop the other parameters' gradients before the step, so AdamW skips them (no
        update, no weight decay, no moments) and gradient clipping sees the attention's alone. Not by switching
        requires_grad per step: DDP fixes the parameters it waits for when it wraps the model, and one that stops
        receiving gradients crashes its reducer. The cost is computing (and, under DDP, averaging) gradients that
        are then dropped, for the first attention_only_steps steps only."""
        if self.global_step < self.attention_only_steps:
            fresh = {id(p) for p in self.backbone.fresh_parameters()}  # a new head learns from step 0
            for name, p in self.backbone.named_parameters():
                if ".variant." not in name and id(p) not in fresh:
                    p.grad = None

    def training_terms(self, batch) -> dict[str, torch.Tensor]:
        """The batch's loss terms by name (transcript_term, and "distill" where on), before weighting."""
        if self.distillation is None:
            return {self.transcript_term: self.loss_and_hyps(batch, decode=False)[0]}
        self.distillation.clear()
        with self.distillation.recording(self.backbone):
            loss, _ = self.loss_and_hyps(batch, decode=False)
        distill = self.distillation.loss(self.backbone, batch["waves"], batch["wave_lengths"], batch["targets"])
        return {self.transcript_term: loss, "distill": distill}

    def training_step(self, batch, batch_idx):
        terms = self.training_terms(batch)
        loss = sum(self.term_weights[name] * value for name, value in terms.items())
        for name, value in terms.items():
            self.log(f"train_{name}", value, batch_size=len(batch["utt_ids"]))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["utt_ids"]))
        return loss

    def on_fit_start(self):
        if self.teacher is not None:  # not a submodule, so Lightning does not move it
            self.teacher.to(self.device)

    def evaluate(self, batch, split: str):
        if batch is None:  # every file of the batch was unreadable (the datamodule recorded them)
            return
        loss, hyps = self.loss_and_hyps(batch, decode=True)
        refs = batch["texts"]
        normalise = scoring_normaliser(self.scoring)
        scored_hyps = [normalise(t, cased=self.cased_hypotheses) for t in hyps]
        scored_refs = [normalise(t) for t in refs]
        for name in ("wer", "cer"):
            self.metrics[f"{split}_{name}"].update(scored_hyps, scored_refs)
            self.metrics[f"{split}_raw_{name}"].update(hyps, refs)
        self.log(f"{self._prefix(split)}_loss", loss, batch_size=len(refs), sync_dist=True)
        if split == "test":
            self.last_predictions += [{"utt_id": u, "ref": r, "hyp": h} for u, r, h in
                                      zip(batch["utt_ids"], refs, hyps)]

    def _prefix(self, split: str) -> str:
        return self.test_prefix if split == "test" else split

    def validation_step(self, batch, batch_idx):
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, "test")

    def on_test_epoch_start(self):
        self.last_predictions = []

    def _log_epoch(self, split: str):
        for name in ("wer", "cer", "raw_wer", "raw_cer"):
            metric = self.metrics[f"{split}_{name}"]
            self.log(f"{self._prefix(split)}_{name}", metric.compute(), prog_bar=name == "wer", sync_dist=True)
            metric.reset()

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def on_test_epoch_end(self):
        self._log_epoch("test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.param_groups(), lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), self.warmup_steps + 1)
        scheduler = get_cosine_schedule_with_warmup(optimizer, self.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def param_groups(self) -> list[dict]:
        """The trainable parameters: one group at lr, or with head_lr the CTC head in a second group (the
        schedule scales both)."""
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        if self.head_lr is None:
            return [{"params": params}]
        head = {id(p) for p in self.backbone.head_parameters() if p.requires_grad}
        if not head:
            raise ValueError(f"optim.head_lr={self.head_lr} needs a trainable CTC head; this model has none")
        return [{"params": [p for p in params if id(p) not in head]},
                {"params": [p for p in params if id(p) in head], "lr": self.head_lr}]


class CTCFineTuner(ASRFineTuner):
    """CTC fine-tuning of a (patched) backbone's encoder and CTC head; greedy CTC decoding."""

    def __init__(self, backbone: Backbone, tokenizer: CharTokenizer, **optim):
        for key, off in (("kl_weight", (None, 0)), ("distill_text", ("reference",))):
            if optim.get(key, off[0]) not in off:  # before the teacher is copied
                raise ValueError(f"optim.{key}={optim[key]!r} needs Whisper's decoder (model.head=seq2seq); "
                                 f"a CTC head takes {off[0]!r}")
        super().__init__(backbone, **optim)
        self.tokenizer = tokenizer

    def forward(self, waves, wave_lengths):
        return self.backbone(waves, wave_lengths)

    def ctc_loss(self, batch, log_probs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        targets = batch["targets"].clamp_min(0)  # padding (-100) lies past target_lengths: never read
        return F.ctc_loss(
            log_probs.float().transpose(0, 1), targets, lengths, batch["target_lengths"],
            blank=self.tokenizer.blank_id, zero_infinity=True,
        )

    def hypotheses(self, waves, wave_lengths):
        return self.tokenizer.ctc_decode(*self(waves, wave_lengths))

    def loss_and_hyps(self, batch, decode: bool):
        log_probs, lengths = self(batch["waves"], batch["wave_lengths"])  # one forward for both
        hyps = self.tokenizer.ctc_decode(log_probs, lengths) if decode else None
        return self.ctc_loss(batch, log_probs, lengths), hyps
