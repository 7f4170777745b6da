"""A run folder's model, rebuilt outside training (evaluate.py, transcribe.py, `export_dir=` on a finished run).

The run's stored config (.hydra/config.yaml), with Hydra-style overrides on top (`data=manifest`,
`data.test_split=/x/test.tsv`, `trainer.accelerator=cpu`, `model.decoding.max_tokens=96`); the backbone built from
it and given the run's attention structure (experiment.patch_structure, at the MLA ranks its results.json
recorded); then the weights of its best checkpoint (or last.ckpt; or, where only they came home, the trained-weight
parts written from the best one: trained_weights.py). A character vocabulary built from training
texts comes from the run's own data, whatever the overrides say.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from ..backbones import Backbone
from .checkpointing import LAST
from .converted_model import export
from .ctc_module import ASRFineTuner
from .experiment import build_module, build_tokenizer_and_backbone, patch_structure
from .trained_weights import PARTS, trained_state

CONF = Path(__file__).resolve().parents[2] / "conf"
RUN_CONFIG = Path(".hydra") / "config.yaml"
HYDRA_CONFIG = Path(".hydra") / "hydra.yaml"


def run_config(run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's config with the overrides applied, resolved."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it lacks {RUN_CONFIG} "
                                "(python -m asr_attention.train writes it)")
    cfg = with_hydra_values(OmegaConf.load(path), Path(run_dir) / HYDRA_CONFIG)
    apply_overrides(cfg, overrides, str(path))
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


HYDRA_VALUE = re.compile(r"\$\{hydra:([^}]+)\}")


def with_hydra_values(cfg: DictConfig, hydra_yaml: Path) -> DictConfig:
    """The stored config with each ${hydra:...} (a run name built from the sweep's choices, a W&B folder) replaced by
    what Hydra held when the run started (its .hydra/hydra.yaml): outside a Hydra app nothing else can resolve it."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    if "${hydra:" not in json.dumps(tree):
        return cfg
    if not hydra_yaml.is_file():
        raise FileNotFoundError(f"{hydra_yaml.parent.parent}'s config reads Hydra's run-time values (${{hydra:...}}) "
                                f"but {hydra_yaml} is missing")
    held = OmegaConf.load(hydra_yaml).hydra

    def fill(node):
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str):
            return HYDRA_VALUE.sub(lambda m: str(OmegaConf.select(held, m.group(1))), node)
        return node

    return OmegaConf.create(fill(tree))


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], where: str) -> None:
    """Hydra-style overrides on a stored config, in place: a config group (`data=manifest`) is read from conf/;
    a dotted key must exist in the config (`+key=value` adds one). The model and attention stay the checkpoint's
    (the model's decoding and source may change)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ValueError(f"overrides {list(overrides)}: {err}") from None
    for override in sorted(parsed, key=lambda o: "." in o.key_or_group):  # groups first, as Hydra does
        key, value = override.key_or_group, override.value()
        if key.split(".")[0] == "attention" or key == "model":
            raise ValueError(f"{key}={value}: the checkpoint fixes the model and attention; for others, convert "
                             "afresh (python -m asr_attention.transcribe model=... attention=... <audio>)")
        if "." not in key:
            cfg[key] = group_node(key, value)
        elif OmegaConf.select(cfg, key, default=KeyError) is KeyError and not override.is_add():
            raise ValueError(f"{key}: no such field in {where} (+{key}=... adds one)")
        else:
            OmegaConf.update(cfg, key, value, merge=True)


def group_node(group: str, name: str) -> DictConfig:
    """conf/<group>/<name>.yaml as train.yaml composes it, interpolations left for the run's config to resolve."""
    if not (CONF / group).is_dir():
        raise ValueError(f"{group}={name}: conf/ has no config group {group!r}")
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            node = compose("train", overrides=[f"{group}={name}"])[group]
    except HydraException:
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        raise ValueError(f"{group}={name}: no conf/{group}/{name}.yaml (one of {options})") from None
    return OmegaConf.create(OmegaConf.to_container(node, resolve=False))


def checkpoint_file(run_dir: Path, which: str = "best") -> Path:
    """best: the run's best-val_wer checkpoint (its checkpoints/ holds one; where it holds none but the parts
    trained_weights.py writes from it, the checkpoints/ folder itself); last: checkpoints/last.ckpt."""
    folder = Path(run_dir) / "checkpoints"
    if which == "last":
        path = folder / LAST
    elif which == "best":
        found = sorted(folder.glob("best-*.ckpt"))
        if not found and any(folder.glob(PARTS)):
            return folder
        if len(found) != 1:
            held = "none" if not found else ", ".join(p.name for p in found)
            raise FileNotFoundError(f"{folder}: expected one best-*.ckpt, found {held} (--checkpoint last reads "
                                    "last.ckpt)")
        path = found[0]
    else:
        raise ValueError(f"--checkpoint {which!r}: expected best or last")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (the run saves it at the end of each epoch)")
    return path


def run_latent_dims(run_dir: Path) -> list[int] | None:
    """MLA's per-layer ranks when the run spread them (rank_allocation=spectrum), from its results.json."""
    path = Path(run_dir) / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    return (results.get("conversion") or {}).get("latent_dims")


def load_weights(backbone: Backbone, checkpoint: Path, rebuilt: Backbone | None = None) -> None:
    """The backbone's weights from a Lightning checkpoint of the run's module, or from trained-weight parts (a
    checkpoints/ folder, see trained_weights.py) over `rebuilt`: the run's backbone as load_run rebuilds it before
    any weights (default: `backbone` itself, when nothing has changed it yet). Strict: every tensor must fit."""
    if checkpoint.is_dir():
        backbone.load_state_dict(trained_state(checkpoint, (rebuilt or backbone).state_dict()), strict=True)
        return
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    backbone.load_state_dict(backbone_state(state), strict=True)


def backbone_state(lightning_state: dict) -> dict:
    return {k.removeprefix("backbone."): v for k, v in lightning_state.items()}


def rebuilt_backbone(run_dir: Path, cfg: DictConfig) -> tuple[object, Backbone]:
    """(tokenizer, the run's backbone before any trained weight: as loaded, with the run's attention structure)."""
    tokenizer, backbone = unconverted_model(run_dir, cfg)
    patch_structure(backbone, cfg.attention, run_latent_dims(run_dir))
    return tokenizer, backbone


def unconverted_model(run_dir: Path, cfg: DictConfig) -> tuple[object, Backbone]:
    """The run's tokenizer and its backbone as loaded, before conversion (a character vocabulary from the run's
    own training texts, not from data overrides)."""
    own = OmegaConf.create(OmegaConf.to_container(cfg))
    own.data = run_config(run_dir).data
    return build_tokenizer_and_backbone(own)


def load_run(run_dir: Path, overrides: Sequence[str] = (), checkpoint: str = "best"):
    """(config, tokenizer, backbone in eval mode holding the checkpoint's weights)."""
    cfg = run_config(run_dir, overrides)
    path = checkpoint_file(run_dir, checkpoint)
    tokenizer, backbone = rebuilt_backbone(run_dir, cfg)
    load_weights(backbone, path)
    return cfg, tokenizer, backbone.eval()


def inference_module(cfg: DictConfig, backbone: Backbone, tokenizer) -> ASRFineTuner:
    """The run's LightningModule for testing and transcribing: its head and decoding, no training options (no
    distillation teacher)."""
    return build_module(OmegaConf.create({"model": cfg.model, "optim": {}}), backbone, tokenizer).eval()


def export_run(run_dir: Path, directory: str | Path, checkpoint: str = "best") -> Path:
    """A finished run's checkpoint as export_dir= writes it (converted_model.export)."""
    cfg, tokenizer, backbone = load_run(run_dir, checkpoint=checkpoint)
    return export(backbone, directory, cfg, tokenizer)
