"""Every model x attention combination composes with the seed's values; bad values fail naming the field."""

import pytest
from omegaconf import OmegaConf

from asr_attention.config_check import validate

SEED_MODELS = {
    "conformer": dict(
        name="conformer", family="hf_wav2vec2", source="facebook/wav2vec2-large-960h", pretrained=True,
        d_model=1024, num_heads=16, num_layers=24, batch_size=16, frame_ms=20, position="none", arch={"intermediate_size": 4096},
    ),
    "branchformer": dict(
        name="branchformer", family="speechbrain_branchformer", source="speechbrain/asr-branchformer-large-tedlium2",
        pretrained=True, d_model=512, num_heads=8, num_layers=18, batch_size=1, frame_ms=40, position="xl", arch={},
    ),
}
SEED_ATTENTION = {  # per model: mla's latent_dim follows d_model
    "mha": lambda d: dict(name="mha"),
    "mla": lambda d: dict(name="mla", latent_dim=d, calibration="plain"),
    "gqa": lambda d: dict(name="gqa", num_kv_heads=2),
    "linear": lambda d: dict(name="linear", feature_map="elu"),
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


def test_sweeps_go_to_multirun_and_grid_preset_covers_every_combination(compose_cfg):
    cfg = compose_cfg("train", ["experiment=grid"], return_hydra_config=True)
    assert cfg.hydra.sweep.dir.startswith("multirun/")
    assert cfg.hydra.run.dir.startswith("outputs/")
    assert dict(cfg.hydra.sweeper.params) == {"model": "conformer,branchformer", "attention": "mha,mla,gqa,linear"}


def test_train_cfg_job_prints_composed_values(run_module):
    out = run_module("asr_attention.train", "model=branchformer", "attention=gqa", "--cfg", "job").stdout
    cfg = OmegaConf.create(out)
    assert cfg.model.d_model == 512 and cfg.model.num_layers == 18 and cfg.model.position == "xl"
    assert dict(cfg.attention) == {"name": "gqa", "num_kv_heads": 2}


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
    (["attention=linear", "attention.feature_map=tanh"], "attention.feature_map='tanh'", "elu, relu, hedgehog"),
    (["attention=native", "optim.attention_only_steps=5"], "optim.attention_only_steps=5", "not attention=native"),
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
    ["attention=gqa", "attention.num_kv_heads=1"],
    ["attention=gqa", "attention.num_kv_heads=16"],
    ["attention=linear", "attention.feature_map=hedgehog"],
])
def test_boundary_values_pass(compose_cfg, overrides):
    validate(compose_cfg("train", overrides))


def test_train_entry_validates_before_any_work(run_module, tmp_path):
    proc = run_module("asr_attention.train", "attention=gqa", "attention.num_kv_heads=3", f"hydra.run.dir={tmp_path}",
                      check=False)
    assert proc.returncode != 0
    assert "attention.num_kv_heads=3 is not allowed" in proc.stderr
