"""Every model x attention combination composes with the seed's values; bad values fail naming the field."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from asr_attention.training.config_check import validate

REPO = Path(__file__).resolve().parents[1]

SEED_MODELS = {
    "conformer": dict(
        name="conformer", family="hf_wav2vec2", source="facebook/wav2vec2-large-960h", pretrained=True,
        d_model=1024, num_heads=16, num_layers=24, batch_size=16, frame_ms=20, position="none", arch={"intermediate_size": 4096},
        ood_test=None,  # no out-of-domain test set (Whisper's is speechocean762)
    ),
    "branchformer": dict(
        name="branchformer", family="speechbrain_branchformer", source="speechbrain/asr-branchformer-large-tedlium2",
        pretrained=True, d_model=512, num_heads=8, num_layers=18, batch_size=1, frame_ms=40, position="xl", arch={},
        ood_test=None,
    ),
}
SEED_ATTENTION = {  # per model: mla's latent_dim follows d_model; sites=None: the family's default sites
    "mha": lambda d: dict(name="mha", sites=None),
    "mla": lambda d: dict(name="mla", latent_dim=d, calibration="plain", rank_allocation=None,
                         cross_latent=None, sites=None),
    "gqa": lambda d: dict(name="gqa", num_kv_heads=2, sites=None),
    "linear": lambda d: dict(name="linear", feature_map="elu", sites=None),
}


@pytest.mark.parametrize("attention", SEED_ATTENTION)
@pytest.mark.parametrize("model", SEED_MODELS)
def test_every_combination_composes_with_seed_values(compose_cfg, model, attention):
    cfg = compose_cfg("train", [f"model={model}", f"attention={attention}"])
    assert OmegaConf.to_container(cfg.model, resolve=True) == SEED_MODELS[model]
    assert OmegaConf.to_container(cfg.attention, resolve=True) == SEED_ATTENTION[attention](SEED_MODELS[model]["d_model"])
    assert cfg.data.batch_size == SEED_MODELS[model]["batch_size"]
    validate(cfg)


def test_defaults_are_conformer_mha_with_offline_wandb(compose_cfg):
    cfg = compose_cfg("train", return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.attention, choices.data, choices.logger) == ("conformer", "mha", "an4", "wandb")
    assert cfg.logger.wandb.mode == "offline" and cfg.logger.wandb.project == "asr-attention"
    assert cfg.trainer._target_ == "lightning.Trainer"
    assert compose_cfg("train", ["logger=none"]).logger == {}
    assert compose_cfg("train", ["trainer=cpu"]).trainer.accelerator == "cpu"


@pytest.mark.parametrize("preset,group", [("quality_whisper", "quality-whisper"),
                                          ("quality_encoders", "quality-encoders")])
def test_a_study_preset_groups_its_runs_and_logger_none_turns_wandb_off(compose_cfg, preset, group):
    """The study's W&B group is the top-level `group`, so logger=none leaves no partial logger entry behind (a
    preset's logger.wandb.group once did: Lightning then got a dict for a logger and every run failed)."""
    from asr_attention.config.resolvers import sweep_group

    cfg = compose_cfg("train", [f"experiment={preset}"])  # run_name reads hydra's choices: resolved in a run
    assert cfg.group == group and cfg.logger.wandb._target_.endswith("WandbLogger")
    assert sweep_group("a-run-name", cfg.group) == group  # logger.wandb.group's resolver: the group wins
    off = compose_cfg("train", [f"experiment={preset}", "logger=none"])
    assert off.logger == {} and off.group == group
    assert compose_cfg("train", ["group=mine"]).logger.wandb.group == "mine"
    assert compose_cfg("train", []).logger.wandb.group == compose_cfg("train", []).run_name  # not a sweep


def test_sweeps_go_to_multirun_and_grid_preset_covers_every_combination(compose_cfg):
    cfg = compose_cfg("train", ["experiment=grid"], return_hydra_config=True)
    assert cfg.hydra.sweep.dir.startswith("multirun/")
    assert cfg.hydra.run.dir.startswith("outputs/")
    assert dict(cfg.hydra.sweeper.params) == {"model": "conformer,branchformer", "attention": "mha,mla,gqa,linear"}


def test_train_cfg_job_prints_composed_values(run_module):
    out = run_module("asr_attention.train", "model=branchformer", "attention=gqa", "--cfg", "job").stdout
    cfg = OmegaConf.create(out)
    assert cfg.model.d_model == 512 and cfg.model.num_layers == 18 and cfg.model.position == "xl"
    assert dict(cfg.attention) == {"name": "gqa", "num_kv_heads": 2, "sites": None}


BAD = [  # overrides, the start of the message (field=value), a word of what is allowed
    (["model.num_heads=12"], "model.num_heads=12", "must divide model.d_model=1024 (allowed: 1, 2, 4, 8, 16,"),
    (["model.num_heads=0"], "model.num_heads=0", "integer >= 1"),
    (["model.d_model=true"], "model.d_model=True", "integer >= 1"),
    (["model.family=wav2letter"], "model.family='wav2letter'", "hf_wav2vec2, speechbrain_branchformer, whisper"),
    (["model.position=alibi"], "model.position='alibi'", "none, xl, rotary_input"),
    (["attention.name=flash"], "attention.name='flash'", "native, mha, gqa, mla, linear"),
    (["attention=gqa", "attention.num_kv_heads=3"], "attention.num_kv_heads=3", "allowed: 1, 2, 4, 8, 16)"),
    (["attention=gqa", "attention.num_kv_heads=0"], "attention.num_kv_heads=0", "integer >= 1"),
    (["attention=gqa", "attention.num_kv_heads=32"], "attention.num_kv_heads=32", "must divide model.num_heads=16"),
    (["attention=mla", "attention.latent_dim=0"], "attention.latent_dim=0", "integer >= 1"),
    (["attention=mla", "attention.latent_dim=2049"], "attention.latent_dim=2049", "<= 2*model.d_model = 2048"),
    (["model=branchformer", "attention=mla", "attention.latent_dim=1025"], "attention.latent_dim=1025", "= 1024"),
    (["attention=mla", "attention.calibration=fisher"], "attention.calibration='fisher'", "plain, activation"),
    (["attention=mla", "attention.rank_allocation=uniform"], "attention.rank_allocation='uniform'",
     "null (latent_dim at every layer) or spectrum"),
    (["attention=mla", "attention.latent_dim=1025", "attention.rank_allocation=spectrum"], "attention.latent_dim=1025",
     "rank_allocation=spectrum needs latent_dim <= model.d_model = 1024"),
    (["attention=linear", "attention.feature_map=tanh"], "attention.feature_map='tanh'", "elu, relu, hedgehog"),
    (["attention=native", "optim.attention_only_steps=5"], "optim.attention_only_steps=5", "not attention=native"),
    # trainer, optimiser and checkpoint numbers (max_epochs=-1 used to crash with OverflowError after loading)
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1", "integer >= 1"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0", "integer >= 1"),
    (["trainer.max_epochs=null"], "trainer.max_epochs=None", "null with trainer.max_steps set"),
    (["+trainer.max_steps=0"], "trainer.max_steps=0", "(or -1: no step limit)"),
    (["trainer.devices=0"], "trainer.devices=0", "integer >= 1"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0", "integer >= 1"),
    (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0", "integer >= 1"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1", "number >= 0"),
    (["+trainer.limit_train_batches=1.5"], "trainer.limit_train_batches=1.5", "fraction 0.0 ... 1.0"),
    (["optim.lr=0"], "optim.lr=0", "number > 0"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps=-1", "integer >= 0"),
    (["optim.head_lr=0"], "optim.head_lr=0", "number > 0"),
    (["model=whisper", "optim.head_lr=0.001"], "optim.head_lr=0.001", "needs a CTC head (model.head=ctc)"),
    (["optim.distill_weight=0"], "optim.distill_weight=0", "number > 0"),
    (["optim.distill_weight=-1.0"], "optim.distill_weight=-1.0", "number > 0"),
    (["optim.distill_weight=x"], "optim.distill_weight='x'", "number > 0"),
    # retention knobs (seq2seq_module.py): numbers, the text, and what a CTC head cannot do
    (["model=whisper", "optim.kl_weight=-1"], "optim.kl_weight=-1", "finite number >= 0"),
    (["model=whisper", "optim.kl_weight=inf"], "optim.kl_weight=inf", "finite number >= 0"),
    (["model=whisper", "optim.kl_weight=1", "optim.kl_temperature=0"], "optim.kl_temperature=0", "number > 0"),
    (["model=whisper", "optim.ce_weight=-0.5"], "optim.ce_weight=-0.5", "finite number >= 0"),
    (["model=whisper", "optim.ce_weight=0"], "optim.ce_weight=0", "nothing to train"),
    (["model=whisper", "optim.ce_weight=0", "optim.kl_weight=0"], "optim.ce_weight=0", "nothing to train"),
    (["model=whisper", "optim.distill_text=labels"], "optim.distill_text='labels'", "reference, teacher"),
    (["optim.kl_weight=1"], "optim.kl_weight=1", "needs Whisper's decoder (model.head=seq2seq)"),
    (["model=whisper", "model.head=ctc", "optim.kl_weight=1"], "optim.kl_weight=1", "model.head=seq2seq"),
    (["model=whisper", "model.head=ctc", "optim.distill_text=teacher"], "optim.distill_text='teacher'",
     "model.head=seq2seq"),
    (["checkpoint_every_n_steps=0"], "checkpoint_every_n_steps=0", "(or null: epoch ends only)"),
    # inf passed `lr > 0`: one step made every weight nan and the run "completed"
    (["optim.lr=inf"], "optim.lr=inf", "finite number > 0"),
    (["optim.weight_decay=nan"], "optim.weight_decay=nan", "finite number >= 0"),
    # an empty split trained 0 steps (or measured nothing) and the run "completed"
    (["data.limit_train=0"], "data.limit_train=0", "the train split must not be empty"),
    (["data.limit_test=0"], "data.limit_test=0", "the test split must not be empty"),
    (["data.limit_ood=0"], "data.limit_ood=0", "integer >= 1 (or null: the whole set)"),
    # the out-of-domain set a model is also tested on: one of the evaluation-only corpora, or none
    (["model=whisper", "model.ood_test=librispeech"], "model.ood_test='librispeech'",
     "expected null (no out-of-domain test) or one of speechocean762"),
    (["calibration.frames=-5"], "calibration.frames=-5", "integer >= 1"),
    (["calibration.split=test"], "calibration.split='test'", "val, train"),
    (["model=whisper", "calibration.text=labels"], "calibration.text='labels'", "reference, teacher"),
    (["calibration.text=teacher"], "calibration.text='teacher'", "model.head=seq2seq"),
    (["calibration.utterances=0"], "calibration.utterances=0", "integer >= 1"),
    # MLA's cross-attention over the encoder output itself: cross sites of Whisper's decoder only
    (["model=whisper", "attention=mla", "attention.cross_latent=shared"], "attention.cross_latent='shared'",
     "expected null (a latent per cross layer) or memory"),
    (["model=whisper", "model.head=ctc", "attention=mla", "attention.cross_latent=memory"],
     "attention.cross_latent='memory'", "needs cross-attention: Whisper's decoder"),
    (["model=whisper", "attention=mla", "attention.cross_latent=memory", "attention.sites=[decoder_self]"],
     "attention.cross_latent='memory'", "needs cross among attention.sites (here ['decoder_self'])"),
]


@pytest.mark.parametrize("overrides,field_value,allowed", BAD, ids=[b[1] for b in BAD])
def test_each_bad_value_is_a_clear_error(compose_cfg, overrides, field_value, allowed):
    with pytest.raises(ValueError) as err:
        validate(compose_cfg("train", overrides))
    assert str(err.value).startswith(field_value + " is not allowed")
    assert allowed in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["attention=mla", "attention.latent_dim=1"],
    ["attention=mla", "attention.latent_dim=2048"],
    ["attention=mla", "attention.latent_dim=1024", "attention.rank_allocation=spectrum"],
    ["attention=gqa", "attention.num_kv_heads=1"],
    ["attention=gqa", "attention.num_kv_heads=16"],
    ["attention=linear", "attention.feature_map=hedgehog"],
    ["attention=mla", "export_dir=/tmp/x"],  # a converted model exports as converted_model.py's folder
    ["model=whisper", "attention=native", "export_dir=/tmp/x"],
    ["model=whisper", "model.ood_test=null", "data.limit_ood=1"],
    ["trainer.max_epochs=1", "+trainer.max_steps=-1", "trainer.devices=auto", "+trainer.limit_train_batches=0.5",
     "checkpoint_every_n_steps=null", "optim.warmup_steps=0"],
    ["model=whisper", "optim.ce_weight=0", "optim.kl_weight=1", "optim.kl_temperature=0.5",
     "optim.distill_text=teacher", "calibration.split=train", "calibration.text=teacher", "calibration.utterances=1"],
    ["model=whisper", "optim.ce_weight=0", "optim.distill_weight=1"],
    ["model=whisper", "model.head=ctc", "optim.kl_weight=0"],
])
def test_boundary_values_pass(compose_cfg, overrides):
    validate(compose_cfg("train", overrides))


def test_train_entry_validates_before_any_work(run_module, tmp_path):
    proc = run_module("asr_attention.train", "attention=gqa", "attention.num_kv_heads=3", f"hydra.run.dir={tmp_path}",
                      check=False)
    assert proc.returncode != 0
    # one line naming the field, not a traceback through config_check.py
    assert proc.stderr.strip() == ("ConfigError: attention.num_kv_heads=3 is not allowed: must divide "
                                   "model.num_heads=16 (allowed: 1, 2, 4, 8, 16)")


DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_commands(marker: str) -> list[str]:
    """The `python -m asr_attention.train` commands of the README and docs/ holding `marker`, continuation lines
    joined."""
    text = "\n".join(path.read_text() for path in DOCUMENTS).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith("python -m asr_attention.train") and marker in line]


@pytest.mark.parametrize("corpus,splits", [
    ("librispeech", ("train-clean-100", "dev-clean", "test-clean")),
    ("tedlium2", ("train", "dev", "test")),
    ("manifest", ("train.tsv", "dev.tsv", "test.tsv")),
])
def test_readme_data_commands_compose_exactly_as_printed(compose_cfg, corpus, splits):
    """Each README/docs command that picks data=<corpus> composes from exactly its printed overrides (what --cfg job
    prints; the CLI itself is run once below: each process spends ~15 s of CPU importing Lightning)."""
    commands = readme_commands(f"data={corpus} ")
    assert commands, f"no README/docs command with data={corpus}"
    for command in commands:
        overrides = shlex.split(command)[3:]  # after `python -m asr_attention.train`
        data = compose_cfg("train", overrides).data
        given = dict(o.split("=", 1) for o in overrides if o.startswith("data."))
        assert data.corpus == corpus and data.root == given["data.root"]
        assert (data.train_split, data.val_split, data.test_split) == tuple(
            given.get(f"data.{k}_split", default) for k, default in zip(("train", "val", "test"), splits))


def test_readme_tedlium_command_runs_with_cfg_job():
    (command,) = set(readme_commands("data=tedlium2 "))  # README and docs/usage.md print the same one
    proc = subprocess.run([sys.executable, *shlex.split(command)[1:], "--cfg", "job"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = OmegaConf.create(proc.stdout).data
    assert (data.corpus, data.root, data.val_split) == ("tedlium2", "/data/TEDLIUM_release2", "dev")


def test_docs_manifest_example_is_a_readable_manifest(tmp_path):
    from asr_attention.data import read_manifest

    text = (REPO / "docs/usage.md").read_text()
    block = text[text.index("```tsv\n") + len("```tsv\n"):]
    (tmp_path / "train.tsv").write_text(block[:block.index("```")])
    utts = read_manifest(tmp_path / "train.tsv")
    assert [(u.utt_id, u.path, u.text, u.duration, u.speaker, u.start, u.end) for u in utts] == [
        ("lights-01", str(tmp_path / "audio/lights_01.wav"), "turn the lights off", 2.31, "alice", None, None),
        ("meeting-07", "/data/my_corpus/meeting.flac", "and the heating too", 1.2, "bob", 62.5, 63.7)]
