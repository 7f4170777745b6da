"""Retention of the original model while fine-tuning Whisper's converted decoder (issue 31): the KL term at the decoder
output (optim.kl_weight, kl_temperature; training/output_distillation.py), training on the unconverted model's own
transcripts (optim.distill_text=teacher, ce_weight=0: no transcripts needed; training/teacher_text.py), one frozen
teacher shared by every term, and calibration on the teacher's transcripts (calibration.text=teacher). Config checks
are in test_config.py's BAD table; the identity of runs made before these keys, in test_runs.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from asr_attention.backbones import patch_attention
from asr_attention.backbones.whisper.tokens import IGNORE
from asr_attention.data.text import CharTokenizer
from asr_attention.generation.decoding import DecodingOptions, transcribe
from asr_attention.training.ctc_module import CTCFineTuner
from asr_attention.training.output_distillation import decoder_kl
from asr_attention.training.seq2seq_module import Seq2SeqFineTuner

from test_whisper import D, audio, collated, make, tokens

DECODER = ["decoder_self", "cross"]
GREEDY = DecodingOptions(temperatures=(0.0,))  # no fallback: a random model's text would be re-sampled 5 times


def module_for(backbone, **optim) -> Seq2SeqFineTuner:
    return Seq2SeqFineTuner(backbone, GREEDY, **optim)


def batch_of(targets: torch.Tensor, rows=slice(None)) -> dict:
    waves, lengths = (t[rows] for t in audio())
    return {"waves": waves, "wave_lengths": lengths, "utt_ids": ["a", "b", "c"][rows], "targets": targets}


def kl_term(attention: dict, targets: torch.Tensor, rows=slice(None), temperature: float = 1.0) -> float:
    backbone = make()
    module = module_for(backbone, kl_weight=1.0, kl_temperature=temperature)
    patch_attention(backbone, {**attention, "sites": DECODER})
    with torch.no_grad():
        return module.training_terms(batch_of(targets, rows))["kl"].item()


def test_the_kl_term_is_zero_for_an_identical_student_and_grows_with_the_cut():
    ids = tokens(length=5)
    assert kl_term({"name": "mha"}, ids) < 1e-6
    assert kl_term({"name": "mla", "latent_dim": D}, ids) < 1e-6
    half, quarter = (kl_term({"name": "mla", "latent_dim": r}, ids) for r in (D // 2, D // 4))
    assert 1e-5 < half < quarter


def test_the_kl_term_counts_real_positions_only():
    """More padding leaves the term as it was, and one utterance's term is the same padded in a batch or alone."""
    ids = tokens(length=6)
    ragged = ids.masked_fill(torch.arange(6) >= torch.tensor([[6], [3], [1]]), IGNORE)
    more = torch.cat((ragged, torch.full((3, 5), IGNORE)), dim=1)
    mla = {"name": "mla", "latent_dim": D // 4}
    # (rel 1e-3: a small KL of fp32 logits computed at other shapes; counting a padded position moves it by far more)
    assert kl_term(mla, more) == pytest.approx(kl_term(mla, ragged), rel=1e-3)
    assert kl_term(mla, more[1:2], slice(1, 2)) == pytest.approx(kl_term(mla, ids[1:2, :3], slice(1, 2)), rel=1e-3)


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    """T^2 x the mean over labelled positions of sum_v p log(p / q), p and q softened at t, summed one by one."""
    total, n = 0.0, 0
    for b, i in (labels != IGNORE).nonzero().tolist():
        p = torch.softmax(teacher[b, i].double() / t, -1)
        q = torch.softmax(student[b, i].double() / t, -1)
        total += float((p * (p / q).log()).sum())
        n += 1
    return t * t * total / n


def test_the_kl_term_is_t_squared_times_the_softened_kl_per_labelled_position():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    labels = torch.tensor([[IGNORE, 3, 4, 1, IGNORE], [IGNORE, 2, IGNORE, IGNORE, IGNORE]])
    for t in (1.0, 2.0, 0.5):
        expected = reference_kl(student, teacher, labels, t)
        assert decoder_kl(student, teacher, labels, t).item() == pytest.approx(expected, rel=1e-5)
    # what stands at an unlabelled position plays no part
    noisy = student.masked_fill((labels == IGNORE)[..., None], 1e3)
    clean = decoder_kl(student, teacher, labels, 2.0).item()
    assert decoder_kl(noisy, teacher, labels, 2.0).item() == pytest.approx(clean)
    # hot limit: T^2 KL -> half the variance over the vocabulary of the logit difference, independent of T
    keep = labels != IGNORE
    half_variance = 0.5 * (teacher - student)[keep].double().var(dim=-1, unbiased=False).mean().item()
    assert decoder_kl(student, teacher, labels, 300.0).item() == pytest.approx(half_variance, rel=2e-2)


@pytest.mark.parametrize("encoder", ["frozen", "trained"])
def test_label_free_training_needs_no_transcripts_and_decodes_each_utterance_once(encoder, tmp_path, monkeypatch):
    """distill_text=teacher, ce_weight=0, kl_weight=1: a batch without targets gives a finite loss whose gradient
    reaches the converted attention; the teacher's transcripts are what it writes itself, decoded once per
    utterance. The teacher reuses the student's encoder output while that is the original encoder's, frozen."""
    backbone = make()
    if encoder == "frozen":
        backbone.encoder.requires_grad_(False)
    module = module_for(backbone, kl_weight=1.0, ce_weight=0.0, distill_text="teacher")
    teacher = module.teacher.model
    with torch.no_grad():
        written = [h.tokens for h in transcribe(teacher, teacher.encode(*audio()), module.decoding)]
    patch_attention(backbone, {"name": "mla", "latent_dim": D // 4, "sites": DECODER})
    module.train()
    assert not any(m.training for m in teacher.modules())
    encodes = []
    real_encode = teacher.encode
    monkeypatch.setattr(teacher, "encode", lambda w, n: encodes.append(len(w)) or real_encode(w, n))
    batch = collated(tmp_path, *audio(), ["a", "b", "c"])
    del batch["targets"], batch["target_lengths"]
    for step in range(2):
        backbone.zero_grad(set_to_none=True)
        terms = module.training_terms(batch)
        loss = sum(module.term_weights[k] * v for k, v in terms.items())
        assert math.isfinite(loss.item()) and terms["kl"].item() > 1e-5 and set(terms) == {"ce", "kl"}
        loss.backward()
        variant = [(n, p) for n, p in backbone.named_parameters() if ".variant." in n]
        assert variant and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in variant)
        assert module.teacher_text.decoded == 3  # the second step decoded nothing
    stored = [module.teacher_text.store[k] for k in zip(batch["utt_ids"], batch["audio_ids"])]
    assert stored == written
    assert encodes == ([] if encoder == "frozen" else [3, 3])  # trained: the teacher encodes each step itself


def test_the_teacher_transcripts_travel_in_the_checkpoint(tmp_path):
    backbone = make()
    backbone.encoder.requires_grad_(False)
    first = module_for(backbone, distill_text="teacher")
    batch = collated(tmp_path, *audio(), ["a", "b", "c"])
    with torch.no_grad():
        first.training_terms(batch)
    checkpoint = {}
    first.on_save_checkpoint(checkpoint)
    resumed = module_for(make(), distill_text="teacher")
    resumed.on_load_checkpoint(checkpoint)
    targets = resumed.teacher_text.targets(batch, decode=lambda rows: pytest.fail(f"decoded {rows} again"))
    assert resumed.teacher_text.store == first.teacher_text.store and targets.shape[0] == 3


def test_the_site_term_and_the_kl_term_share_one_teacher_and_one_pass():
    """One frozen copy serves both; the per-site term recorded during the KL's teacher pass equals the site term's
    own pass (an encoder and a teacher-forced decoder run over the batch)."""
    backbone = make()
    module = module_for(backbone, kl_weight=1.0, distill_weight=1.0)
    assert module.distillation.teacher is module.teacher.model
    patch_attention(backbone, {"name": "mla", "latent_dim": D // 4, "sites": "all"})
    batch = batch_of(tokens(length=4))
    with torch.no_grad():
        terms = module.training_terms(batch)
        with module.distillation.recording(backbone):
            module.loss_and_hyps(batch, decode=False)
        alone = module.distillation.loss(backbone, batch["waves"], batch["wave_lengths"], batch["targets"])
    assert set(terms) == {"ce", "kl", "distill"} and terms["kl"] > 1e-5
    assert terms["distill"].item() == pytest.approx(alone.item(), rel=1e-5) and alone > 1e-4


def test_a_ctc_head_refuses_the_decoder_terms():
    for optim in ({"kl_weight": 1.0}, {"distill_text": "teacher"}):
        with pytest.raises(ValueError, match=r"needs Whisper's decoder \(model.head=seq2seq\)"):
            CTCFineTuner(make("ctc"), CharTokenizer.from_texts(["AB C"]), **optim)
    module = CTCFineTuner(make("ctc"), CharTokenizer.from_texts(["AB C"]), kl_weight=0)
    assert module.teacher is None  # nothing reads a teacher: none is copied


def test_the_retention_knobs_name_the_recipe_only_away_from_their_defaults():
    """Run names (${recipe_tag:...} in the study presets) and the study report's recipe label name each knob set
    away from its default, so a KL run never shares a folder or a recipe row with a plain one; at the defaults
    both read as before the knobs existed."""
    from asr_attention.config.resolvers import recipe_tag
    from asr_attention.reports.recipe_choice import recipe_label

    defaults = {"kl_weight": None, "kl_temperature": 1.0, "ce_weight": 1.0, "distill_text": "reference"}
    plain = {"optim": {"lr": 3e-5, "attention_only_steps": 10**9, **defaults}, "trainer": {"max_steps": 1000},
             "calibration": {"frames": 8192, "split": "val", "text": "reference", "utterances": None}}
    assert recipe_label(plain) == "lr 3e-05, attention only"
    assert recipe_tag(10**9, 1000, 3e-5, None, None, None, plain["optim"], plain["calibration"]) == \
        "attention_only-lr3e-05"
    kl = {**plain, "optim": {**plain["optim"], "kl_weight": 1.0, "kl_temperature": 2.0, "ce_weight": 0.0,
                             "distill_text": "teacher"},
          "calibration": {**plain["calibration"], "text": "teacher", "utterances": 64}}
    assert recipe_label(kl) == ("lr 3e-05, attention only; kl_weight 1.0; kl_temperature 2.0; ce_weight 0.0; "
                                "distill_text teacher; calibration.text teacher; calibration.utterances 64")
    assert recipe_tag(10**9, 1000, 3e-5, None, None, None, kl["optim"], kl["calibration"]) == (
        "attention_only-lr3e-05-kl_weight1.0-kl_temperature2.0-ce_weight0.0-distill_text_teacher-calib_text_teacher"
        "-calib_utterances64")
    off = {**plain, "optim": {**plain["optim"], "kl_weight": 0, "kl_temperature": 2.0}}  # KL off: T says nothing
    assert recipe_label(off) == recipe_label(plain)


@pytest.fixture(scope="module")
def tiny_en_setup():
    """The real tiny.en as the demo run loads it (decoder self-attention to MLA, plain SVD: calibration's cheapest
    conversion that still teacher-forces the decoder) and AN4 limited to 2 val and 4 train utterances."""
    from hydra import compose, initialize

    from asr_attention.training import experiment

    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("train", ["experiment=whisper_demo", "data.limit_val=2", "data.limit_train=4",
                                "data.limit_test=1", "model.decoding.temperatures=[0.0]",
                                "attention.sites=[decoder_self]", "attention.calibration=plain"])
    tokenizer, backbone = experiment.build_tokenizer_and_backbone(cfg)
    return cfg, experiment.build_datamodule_for(cfg, tokenizer, backbone), backbone


def test_calibration_on_the_teachers_transcripts(tiny_en_setup):
    """calibration.text=teacher teacher-forces the decoder sites on what the unconverted tiny.en writes for the
    drawn utterances (Whisper's spelling, "Erase CQQF7", not AN4's lower-cased "erase c q q f seven": another
    token count), and results record the split, the text, the utterances and the tokens; calibration.utterances
    draws that many, here from the train split."""
    from asr_attention.training import experiment

    cfg, datamodule, pristine = tiny_en_setup
    drawn = next(iter(datamodule.spread_dataloader("train", 0, cfg.seed, count=2)))
    with torch.no_grad():
        own = transcribe(pristine, pristine.encode(drawn["waves"], drawn["wave_lengths"]), GREEDY)
    prompt = len(pristine.tokens.prompt)
    expected = {"reference": int((drawn["targets"] != IGNORE).sum()) + 2 * prompt,
                "teacher": sum(prompt + len(h.tokens) for h in own)}
    assert expected["teacher"] != expected["reference"]
    for text in ("reference", "teacher"):
        args = {**experiment.calibration_args(cfg), "split": "train", "text": text, "utterances": 2,
                "decoding": experiment.decoding_options(cfg.model)}
        used = experiment.convert(copy.deepcopy(pristine), cfg.attention, datamodule, **args)["calibration_data"]
        assert {k: used[k] for k in ("split", "text", "utterances", "requested_utterances", "tokens")} == {
            "split": "train", "text": text, "utterances": 2, "requested_utterances": 2, "tokens": expected[text]}


def test_decoder_calibration_counts_tokens_apart_from_frames(tiny_en_setup, caplog):
    """Decoder sites: `frames` are the encoder frames of the drawn audio (compared with calibration.frames: no
    warning while the split holds enough), `tokens` the teacher-forced positions."""
    from asr_attention.training import experiment

    cfg, datamodule, pristine = tiny_en_setup
    with caplog.at_level("WARNING"):
        used = experiment.convert(copy.deepcopy(pristine), cfg.attention, datamodule, frames=100,
                                  seed=0)["calibration_data"]
    assert used["utterances"] == 1 and used["text"] == "reference"
    assert used["frames"] >= 100 and 0 < used["tokens"] < 30  # ~2 s of audio, a few spelled words
    assert "fewer than calibration.frames" not in caplog.text
    val = torch.tensor(datamodule.datasets["val"].durations)
    with caplog.at_level("WARNING"):
        used = experiment.convert(copy.deepcopy(pristine), cfg.attention, datamodule, frames=10**6,
                                  seed=0)["calibration_data"]
    assert used["utterances"] == 2 and used["frames"] == pytest.approx(float((val * 50).sum()), abs=2)
    assert "the val split holds" in caplog.text
    assert "encoder frames of audio, fewer than calibration.frames=1000000" in caplog.text
