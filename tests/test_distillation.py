"""Distillation from the original model (optim.distill_weight, asr_attention/training/distillation.py): the term is zero for
an exact conversion and grows as the conversion loses more; it trains the student and never the teacher, which
stays out of checkpoints; a Lightning fit adds it to the loss; the weight names the recipe (its config
check is in test_config.py's BAD table)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from asr_attention.backbones import build_backbone, patch_attention
from asr_attention.data.text import CharTokenizer
from asr_attention.training.ctc_module import CTCFineTuner
from asr_attention.reports.recipe_choice import recipe_label
from asr_attention.config.resolvers import recipe_tag
from asr_attention.training.seq2seq_module import Seq2SeqFineTuner

from test_whisper import D, TINY, audio, make, tokens

CTC_TARGETS = {"targets": torch.tensor([[2, 3, 1, 4], [2, 3, -100, -100], [4, -100, -100, -100]]),
               "target_lengths": torch.tensor([4, 2, 1])}


def ctc_batch() -> dict:
    waves, lengths = audio()
    return {"waves": waves, "wave_lengths": lengths, "utt_ids": ["a", "b", "c"], **CTC_TARGETS}


def seq2seq_batch() -> dict:
    waves, lengths = audio()
    return {"waves": waves, "wave_lengths": lengths, "utt_ids": ["a", "b", "c"], "targets": tokens(length=4)}


def distill_term(head: str, attention: dict) -> float:
    backbone = make(head)
    module = (CTCFineTuner(backbone, CharTokenizer.from_texts(["AB C"]), distill_weight=1.0) if head == "ctc"
              else Seq2SeqFineTuner(backbone, distill_weight=1.0))
    patch_attention(backbone, {**attention, "sites": "all"})
    batch = ctc_batch() if head == "ctc" else seq2seq_batch()
    with torch.no_grad(), module.distillation.recording(backbone):
        module.loss_and_hyps(batch, decode=False)
        return module.distillation.loss(backbone, batch["waves"], batch["wave_lengths"], batch["targets"]).item()


@pytest.mark.parametrize("head", ["ctc", "seq2seq"])
def test_the_term_is_zero_for_an_exact_conversion_and_grows_with_the_cut(head):
    exact = distill_term(head, {"name": "mla", "latent_dim": D})
    half = distill_term(head, {"name": "mla", "latent_dim": D // 2})
    eighth = distill_term(head, {"name": "mla", "latent_dim": D // 8})
    assert exact < 1e-10
    assert 1e-4 < half < eighth


def seq2seq_term(targets, rows=slice(None)) -> float:
    """The term on the batch's `rows` with these targets, through a Lightning step's own decode."""
    backbone = make("seq2seq")
    module = Seq2SeqFineTuner(backbone, distill_weight=1.0)
    patch_attention(backbone, {"name": "mla", "latent_dim": D // 4, "sites": "all"})
    waves, lengths = (t[rows] for t in audio())
    batch = {"waves": waves, "wave_lengths": lengths, "utt_ids": ["a", "b", "c"][rows], "targets": targets}
    with torch.no_grad(), module.distillation.recording(backbone):
        module.loss_and_hyps(batch, decode=False)
        return module.distillation.loss(backbone, waves, lengths, targets).item()


def test_padded_teacher_forcing_positions_change_nothing():
    """Whisper's decoder sites compare real tokens only: more padding leaves the term as it was, and one
    utterance's term is the same padded or not."""
    ids = tokens(length=6)
    ragged = ids.masked_fill(torch.arange(6) >= torch.tensor([[6], [3], [1]]), -100)
    more = torch.cat((ragged, torch.full((3, 5), -100)), dim=1)
    assert seq2seq_term(more) == pytest.approx(seq2seq_term(ragged), rel=1e-5)
    assert seq2seq_term(more[1:2], slice(1, 2)) == pytest.approx(seq2seq_term(ids[1:2, :3], slice(1, 2)), rel=1e-5)


def test_the_teacher_runs_in_eval_mode_whatever_the_student_does():
    """Built from a backbone in train mode, with dropout in its config, and after module.train(): the teacher's
    modules are all in eval mode, so its outputs, and the term against a fixed student, draw no dropout masks."""
    torch.manual_seed(0)
    backbone = build_backbone({**TINY, "head": "ctc", "arch": {**TINY["arch"], "dropout": 0.3}}, 7).train()
    module = CTCFineTuner(backbone, CharTokenizer.from_texts(["AB C"]), distill_weight=1.0)
    patch_attention(backbone, {"name": "mla", "latent_dim": D // 4, "sites": "all"})
    module.train()
    assert not any(m.training for m in module.distillation.teacher.modules())
    backbone.eval()  # the student without dropout: what could still vary between calls is the teacher
    batch, terms = ctc_batch(), []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad(), module.distillation.recording(backbone):
            module.loss_and_hyps(batch, decode=False)
            terms.append(module.distillation.loss(backbone, batch["waves"], batch["wave_lengths"]).item())
    assert terms[0] == terms[1] > 1e-4


def test_it_trains_the_student_and_never_the_teacher():
    backbone = make("ctc")
    module = CTCFineTuner(backbone, CharTokenizer.from_texts(["AB C"]), distill_weight=1.0)
    patch_attention(backbone, {"name": "mla", "latent_dim": D // 4, "sites": "all"})
    backbone.train()
    teacher = module.distillation.teacher
    weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    batch = ctc_batch()
    with module.distillation.recording(backbone):
        module.loss_and_hyps(batch, decode=False)
    module.distillation.loss(backbone, batch["waves"], batch["wave_lengths"]).backward()
    grads = {name: p.grad for name, p in backbone.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if ".variant." in n)
    assert all(grads[n] is None for n in grads if n.startswith("ctc_head."))  # the term reaches attention only
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in weights.items())
    assert not any(k.startswith("distillation") or "teacher" in k for k in module.state_dict())


class Batches(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return ctc_batch()


def test_a_fit_adds_the_weighted_term_to_the_loss(tmp_path):
    backbone = make("ctc")
    module = CTCFineTuner(backbone, CharTokenizer.from_texts(["AB C"]), distill_weight=3.0)
    patch_attention(backbone, {"name": "mla", "latent_dim": D // 4, "sites": "all"})
    backbone.train()
    batch = ctc_batch()
    with torch.no_grad():  # the first step's CTC loss (no dropout in the tiny model: train mode computes the same)
        ctc = module.ctc_loss(batch, *module(batch["waves"], batch["wave_lengths"])).item()
    logged = {}
    module.log = lambda name, value, **kw: logged.setdefault(name, []).append(float(value))
    loader = torch.utils.data.DataLoader(Batches(), batch_size=None)
    L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              default_root_dir=tmp_path, accelerator="cpu").fit(module, loader)
    assert len(logged["train_distill"]) == 2 and logged["train_distill"][0] > 1e-4
    assert not any(m.training for m in module.distillation.teacher.modules())  # fit trains the module, not it
    assert logged["train_loss"][0] == pytest.approx(ctc + 3.0 * logged["train_distill"][0], rel=1e-5)


def test_the_weight_names_the_recipe():
    config = {"optim": {"lr": 1e-4, "head_lr": 1e-3, "attention_only_steps": 0, "distill_weight": 1.0},
              "trainer": {"max_steps": 2000}, "model": {"freeze_encoder": False}}
    assert recipe_label(config) == "lr 0.0001, head lr 0.001, all from step 0; encoder trained; distilled x 1.0"
    assert recipe_tag(0, 2000, 1e-4, 1e-3, None, 1.0) == "all-lr0.0001-head_lr0.001-distill1.0"
    assert recipe_tag(0, 2000, 1e-4, 1e-3, None, None) == "all-lr0.0001-head_lr0.001"
