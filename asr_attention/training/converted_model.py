"""A converted (and fine-tuned) model as a folder that loads back without its run folder:

    <dir>/model.safetensors   every weight of the backbone, the converted attention's included (fp32)
    <dir>/converted.json      how to rebuild it: the model and attention config nodes, MLA's rank per layer, and
                              the character tokenizer of a CTC head whose vocabulary came from training texts

    from asr_attention.training.converted_model import load_converted
    cfg, tokenizer, backbone = load_converted("exports/whisper-mla")

`load_converted` builds the backbone from the model config (its architecture and tokenizer come from model.source,
the pretrained checkpoint the run started from, e.g. Whisper tiny.en from the installed package; the weights are
all replaced), gives every site the variant the conversion gave it (no calibration: the weights come next), and
loads the weights, strictly (a tensor missing or of another shape fails naming it). `export_dir=` writes this
folder (`export`), unless the attention is the backbone's own and its family has a format of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from ..backbones import Backbone, patched_variants
from ..backbones.export import FAMILIES as OWN_FORMATS
from ..backbones.export import export_backbone
from ..data.text import CharTokenizer
from ..runs.code_version import code_version
from .experiment import build_tokenizer_and_backbone, patch_structure

WEIGHTS, META = "model.safetensors", "converted.json"


def export(backbone: Backbone, directory: str | Path, cfg: DictConfig, tokenizer) -> Path:
    """export_dir=: the family's own checkpoint format (which its loader reads as model.source) for a backbone that
    keeps its own attention; otherwise this module's folder."""
    if cfg.attention.name == "native" and backbone.family in OWN_FORMATS:
        return export_backbone(backbone, directory, tokenizer.vocab)
    return save_converted(backbone, directory, cfg, tokenizer)


def save_converted(backbone: Backbone, directory: str | Path, cfg: DictConfig, tokenizer) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "attention": OmegaConf.to_container(cfg.attention, resolve=True),
        "data": {"oov": cfg.data.oov},  # what a tokenizer rebuilt from the checkpoint's vocabulary is given
        "latent_dims": ([v.latent_dim for v in patched_variants(backbone)] if cfg.attention.name == "mla" else None),
        "tokenizer": (dict(vocab=tokenizer.vocab, blank_id=tokenizer.blank_id, word_delimiter=tokenizer.word_delimiter,
                           case=tokenizer.case, oov=tokenizer.oov) if isinstance(tokenizer, CharTokenizer) else None),
        "code": code_version(),
    }
    source = meta["model"].get("source")
    if source is not None and Path(source).exists():  # a local checkpoint: found from wherever it is loaded
        meta["model"]["source"] = str(Path(source).resolve())
    # Each tensor on its own: a decoder site's Q/K/V Parameters are views of one stacked matrix (and Whisper ties
    # its embedding and output layer), which safetensors refuses to store as shared storage.
    save_file({k: t.detach().contiguous().clone() for k, t in backbone.state_dict().items()}, str(directory / WEIGHTS))
    (directory / META).write_text(json.dumps(meta, indent=1))
    return directory


def load_converted(directory: str | Path) -> tuple[DictConfig, object, Backbone]:
    """(config with model, attention and data.oov; tokenizer; backbone in eval mode, on the CPU)."""
    directory = Path(directory)
    for name in (META, WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a converted model folder: it lacks {name} "
                                    "(export_dir= writes one)")
    meta = json.loads((directory / META).read_text())
    cfg = OmegaConf.create({key: meta[key] for key in ("model", "attention", "data")})
    saved = CharTokenizer(**meta["tokenizer"]) if meta["tokenizer"] else None
    tokenizer, backbone = build_tokenizer_and_backbone(cfg, saved=saved)
    patch_structure(backbone, cfg.attention, meta["latent_dims"])
    backbone.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)  # copies into the stacked views
    return cfg, tokenizer, backbone.eval()
