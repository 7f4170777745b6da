"""A SpeechBrain checkpoint's hyperparams.yaml, read without building anything, and compared with what we build.

The adapter takes its sizes from the file (checked against the weights' shapes), then every keyword argument of
every module it builds must equal the file's -- Fbank n_fft / n_mels / hop, normalize_before, causal, the
activation, attention type, ... -- or loading fails naming the field and both values.

Loading the file with hyperpyyaml (`load_hyperpyyaml`) would instantiate the whole recipe -- encoder, decoder,
beam search, tokenizer -- and import every class it names, some renamed since the checkpoint was published. So
only its references are resolved, with hyperpyyaml's own `resolve_references` (SpeechBrain's `!ref <name>`
semantics, nothing constructed), and the result is read as plain YAML: a `!new:Class` node stays the mapping of
its keyword arguments, a `!name:torch.nn.GELU` a tagged scalar. Fields the file leaves out take the default of
the class it names, as they would when SpeechBrain builds it.
"""

from __future__ import annotations

import ast
import inspect
import pydoc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HPARAMS = "hyperparams.yaml"
# Our size names -> (module, keyword) in the recipe's file
RECIPE_FIELDS = {
    "n_fft": ("compute_features", "n_fft"), "win_length": ("compute_features", "win_length"),
    "n_mels": ("compute_features", "n_mels"), "cnn_channels": ("CNN", "out_channels"),
    "d_model": ("Transformer", "d_model"), "num_heads": ("Transformer", "nhead"),
    "num_layers": ("Transformer", "num_encoder_layers"), "csgu_linear_units": ("Transformer", "csgu_linear_units"),
    "kernel_size": ("Transformer", "kernel_size"), "dropout": ("Transformer", "dropout"),
    "vocab_size": ("ctc_lin", "n_neurons"),
}
# Keyword arguments the CTC encoder built here does not use: the attention decoder's (not built; the encoder's
# activation is branchformer_activation), and training-only ones.
NOT_BUILT = {
    "Transformer": {"tgt_vocab", "num_decoder_layers", "d_ffn", "activation", "dropout", "layerdrop_prob"},
    "CNN": {"dropout"},
    "normalize": {"update_until_epoch", "device"},
}


def recipe_sizes(hp: Mapping, path: Path, classes: Mapping[str, type], found: Mapping, weights: str) -> dict:
    """The sizes (RECIPE_FIELDS) the file gives; those the weights' shapes imply (`found`) must agree."""
    sizes = {}
    for key, (name, field) in RECIPE_FIELDS.items():
        sizes[key] = value(section(hp, name, classes[name], path), field, classes[name])
    diffs = [f"{'.'.join(RECIPE_FIELDS[k])}={sizes[k]!r} but {weights} has {k}={plain(v)!r}"
             for k, v in found.items() if sizes[k] != plain(v)]
    if diffs:
        raise ValueError(f"{path} disagrees with the weights beside it: " + "; ".join(diffs))
    return sizes


def check_hyperparams(hp: Mapping, path: Path, classes: Mapping[str, type], kwargs: Mapping[str, dict]) -> None:
    diffs = disagreements(hp, path, {name: (classes[name], kwargs[name]) for name in classes}, NOT_BUILT)
    if diffs:
        raise ValueError(f"{path} describes a model this adapter does not build: " + "; ".join(diffs))


def read_hyperparams(path: Path) -> dict:
    import ruamel.yaml
    from hyperpyyaml import resolve_references

    try:
        with open(path) as f:
            resolved = resolve_references(f)
        return dict(ruamel.yaml.YAML(typ="rt").load(resolved))
    except Exception as err:  # a YAML syntax error, a dangling !ref
        raise ValueError(f"{path}: cannot read it as a SpeechBrain hyperparams file: {err}") from err


def section(hp: Mapping, name: str, cls: type, path: Path) -> Mapping:
    """The `!new:` mapping named `name`, checked to build `cls`."""
    if name not in hp:
        raise ValueError(f"{path}: no `{name}` (expected a !new:{_qualname(cls)})")
    node = hp[name]
    tag = _tag(node) or ""
    if not tag.startswith("!new:") or pydoc.locate(tag[len("!new:"):]) is not cls:
        raise ValueError(f"{path}: {name} is {tag or type(node).__name__}, but this adapter builds {_qualname(cls)}")
    return node


def value(node: Mapping, field: str, cls: type) -> Any:
    """A keyword argument as the file gives it, else the class's default; plain Python values throughout."""
    if field in node:
        return plain(node[field])
    default = inspect.signature(cls).parameters[field].default
    return None if default is inspect.Parameter.empty else plain(default)


def disagreements(hp: Mapping, path: Path, built: Mapping[str, tuple[type, dict]],
                  ignore: Mapping[str, set[str]]) -> list[str]:
    """Every keyword argument of every module we build ({section: (class, kwargs)}) that differs from the file's,
    defaults filled in on both sides, as `section.field=file's value (we build ...)`."""
    diffs = []
    for name, (cls, kwargs) in built.items():
        node = section(hp, name, cls, path)
        known = inspect.signature(cls).parameters
        diffs += [f"{name}.{field}={_show(plain(node[field]))} (not an argument of {_qualname(cls)} here)"
                  for field in node if field not in known]
        for field in known:
            if field in ignore.get(name, ()):
                continue
            theirs = value(node, field, cls)
            ours = plain(kwargs[field]) if field in kwargs else value({}, field, cls)
            if theirs != ours:
                diffs.append(f"{name}.{field}={_show(theirs)} (this adapter builds {_show(ours)})")
    return diffs


def plain(v: Any) -> Any:
    """YAML / Python spellings of one value -> one comparable value: '(3, 3)' and [3, 3] -> (3, 3);
    !name:torch.nn.GELU -> the class torch.nn.GELU."""
    tag = _tag(v)
    if tag and tag.startswith("!name:"):
        return pydoc.locate(tag[len("!name:"):]) or tag
    if tag == "!tuple":  # once hyperpyyaml is imported, its tuple resolver tags '(3, 3)' so in every ruamel loader
        v = v.value
    if isinstance(v, str) and v.startswith("(") and v.endswith(")"):  # hyperpyyaml reads these as tuples
        try:
            return plain(ast.literal_eval(v))
        except (ValueError, SyntaxError):
            return v
    if isinstance(v, (list, tuple)):
        return tuple(plain(x) for x in v)
    return v


def _tag(node: Any) -> str | None:
    tag = getattr(node, "tag", None)
    return getattr(tag, "value", tag) if tag is not None else None


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _show(v: Any) -> str:
    return _qualname(v) if isinstance(v, type) else repr(v)
