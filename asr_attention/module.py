"""The LightningModule: CTC fine-tuning of a (patched) backbone, greedy decoding, WER/CER on val and test."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.text import CharErrorRate, WordErrorRate
from transformers import get_cosine_schedule_with_warmup

from .backbones import Backbone
from .data.text import CharTokenizer


class CTCFineTuner(L.LightningModule):
    """lr / weight_decay / warmup_steps: AdamW with linear warmup then cosine decay over the whole run.
    attention_only_steps: train only the converted attention layers for the first N steps (they start as an
    approximation; the rest of the network already fits), then everything that is not frozen."""

    def __init__(
        self,
        backbone: Backbone,
        tokenizer: CharTokenizer,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        attention_only_steps: int = 0,
    ):
        super().__init__()
        self.backbone, self.tokenizer = backbone, tokenizer
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.attention_only_steps = attention_only_steps
        self.metrics = torch.nn.ModuleDict(
            {f"{split}_{name}": cls() for split in ("val", "test") for name, cls in
             (("wer", WordErrorRate), ("cer", CharErrorRate))}
        )
        self.last_predictions: list[dict] = []
        self.test_prefix = "test"  # "before_test" while measuring zero-shot WER right after conversion

    def forward(self, waves, wave_lengths):
        return self.backbone(waves, wave_lengths)

    def ctc_loss(self, batch, outputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """outputs: the backbone's (log_probs, lengths) for this batch, when the caller has them already."""
        log_probs, lengths = outputs if outputs is not None else self(batch["waves"], batch["wave_lengths"])
        targets = batch["targets"].clamp_min(0)  # padding (-100) lies past target_lengths: never read
        return F.ctc_loss(
            log_probs.float().transpose(0, 1), targets, lengths, batch["target_lengths"],
            blank=self.tokenizer.blank_id, zero_infinity=True,
        )

    def on_before_optimizer_step(self, optimizer):
        """attention_only_steps: drop the other parameters' gradients before the step, so AdamW skips them (no
        update, no weight decay, no moments) and gradient clipping sees the attention's alone. Not by switching
        requires_grad per step: DDP fixes the parameters it waits for when it wraps the model, and one that stops
        receiving gradients crashes its reducer. The cost is computing (and, under DDP, averaging) gradients that
        are then dropped, for the first attention_only_steps steps only."""
        if self.global_step < self.attention_only_steps:
            for name, p in self.backbone.named_parameters():
                if ".variant." not in name:
                    p.grad = None

    def training_step(self, batch, batch_idx):
        loss = self.ctc_loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["utt_ids"]))
        return loss

    def evaluate(self, batch, split: str):
        if batch is None:  # every file of the batch was unreadable (the datamodule recorded them)
            return
        outputs = self(batch["waves"], batch["wave_lengths"])  # one forward for the transcripts and the loss
        hyps = self.tokenizer.ctc_decode(*outputs)
        refs = batch["texts"]
        for name in ("wer", "cer"):
            self.metrics[f"{split}_{name}"].update(hyps, refs)
        self.log(f"{self._prefix(split)}_loss", self.ctc_loss(batch, outputs), batch_size=len(refs), sync_dist=True)
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
        for name in ("wer", "cer"):
            metric = self.metrics[f"{split}_{name}"]
            self.log(f"{self._prefix(split)}_{name}", metric.compute(), prog_bar=True, sync_dist=True)
            metric.reset()

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def on_test_epoch_end(self):
        self._log_epoch("test")

    def configure_optimizers(self):
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), self.warmup_steps + 1)
        scheduler = get_cosine_schedule_with_warmup(optimizer, self.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
