"""A run folder belongs to one config: the same config resumes there, another one never touches it (unless that
run failed and retrain=true asks to replace it).

A run's identity is its resolved config minus the keys that cannot change its numbers (`COSMETIC`: where logs
and exports go, the folder's name and W&B group, checkpoint frequency, loader worker count, logging cadence, the
retrain flag). Everything else counts, including every key added later, and trainer.max_epochs: the learning-rate
schedule spans the whole run, so training longer is a new run. A key added with a default that does what runs did
before it existed (`ADDED_DEFAULTS`) counts only when set to another value: at its default, a config has the
identity and fingerprint of one written before the key. A path to a file the package ships (${pkg:...},
e.g. the demo checkpoints) counts relative to the package: the same run in a checkout moved elsewhere is the
same. The fingerprint is a hash of that identity; results.json stores it beside the config, and the check below
recomputes both sides from the stored config, so a run folder made before a key became cosmetic is judged by
today's rule.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..config.errors import UserError

PACKAGE_PATH = re.compile(r"^/.*?/asr_attention/(?=(pretrained|data)/)")  # ${pkg:pretrained/...}, ${pkg:data/...}
# the out-of-domain test (model.ood_test, data.limit_ood) adds results and changes none of the run's own (its phases
# run under their own RNG, training/ood.py): runs from before it keep their folders
COSMETIC = ("logger", "group", "run_name", "export_dir", "retrain", "checkpoint_every_n_steps",
            "data.num_workers", "trainer.log_every_n_steps", "model.ood_test", "data.limit_ood")
# dotted key -> the value that reproduces the runs made before the key was added
ADDED_DEFAULTS = {
    "optim.kl_weight": None, "optim.kl_temperature": 1.0, "optim.ce_weight": 1.0, "optim.distill_text": "reference",
    "calibration.split": "val", "calibration.text": "reference", "calibration.utterances": None,
    "attention.cross_latent": None,
}
_ABSENT = "(absent)"


def setting(config, dotted: str):
    """A config's value at an ADDED_DEFAULTS key ('calibration.text'), or that key's default where the config (one
    written before the key, or a hand-made one) lacks it."""
    group, key = dotted.split(".")
    return (config.get(group) or {}).get(key, ADDED_DEFAULTS[dotted])


class RunFolderTaken(UserError, RuntimeError):
    """The folder holds another config's run (or checkpoints nobody can vouch for): nothing was written."""


def identity(config: dict) -> dict:
    """The result-determining part of a resolved config (a plain dict, as results.json stores it)."""
    kept = json.loads(json.dumps(copy.deepcopy(config), default=str))  # the form results.json holds
    for dotted in COSMETIC:
        node, key = _parent(kept, dotted)
        if isinstance(node, dict):
            node.pop(key, None)
    for dotted, default in ADDED_DEFAULTS.items():
        node, key = _parent(kept, dotted)
        if isinstance(node, dict) and key in node and node[key] == default:
            del node[key]
    return _package_relative(kept)


def _parent(tree: dict, dotted: str) -> tuple[Any, str]:
    """(the node holding the dotted key's last part, or None; that part)."""
    *parents, key = dotted.split(".")
    node = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return node, key


def _package_relative(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _package_relative(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_package_relative(v) for v in tree]
    return PACKAGE_PATH.sub("${pkg}/", tree) if isinstance(tree, str) else tree


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:16]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differences(old: dict, new: dict) -> list[str]:
    """'field: old -> new' for every identity field that differs between two resolved configs."""
    a, b = _flat(identity(old)), _flat(identity(new))
    return [f"{k}: {a.get(k, _ABSENT)} -> {b.get(k, _ABSENT)}" for k in sorted(a.keys() | b.keys())
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def _first_line(text: str | None, most: int = 200) -> str:
    line = (text or "no error recorded").strip().splitlines()[0] if (text or "").strip() else "no error recorded"
    return line if len(line) <= most else line[: most - 3] + "..."


def stored_run(run_dir: Path, config: dict, run_name: str, retrain: bool = False) -> dict | None:
    """The folder's results.json when it is this config's run (or, with retrain, another config's failed run,
    which the caller then removes); None when the folder holds no run yet. Raises RunFolderTaken, naming the
    differing fields and what to do, when it is another config's, or when its results.json does not parse. Reads
    only: call it before writing anything into the folder."""
    from .results import CorruptResults, read_results  # here: results.py imports Lightning, the reports don't

    results = run_dir / "results.json"
    if not results.exists():
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise RunFolderTaken(f"{run_dir} holds checkpoints but no results.json, so nothing says which config "
                                 f"made them; nothing was changed. Delete the folder, or name a new run "
                                 f"(run_name=...).")
        return None
    try:
        stored = read_results(results)
    except CorruptResults as err:
        raise RunFolderTaken(f"{err}, so nothing says which config's run {run_dir} holds; nothing was changed. "
                             f"Delete the folder to start over, or name a new run (run_name=...).") from None
    changed = differences(stored.get("config", {}), config)
    if changed and stored.get("status") == "failed" and retrain:
        return stored  # retrain=true replaces a failed run of another config (train.start_over)
    if changed:
        new_name = f"run_name={run_name}-{fingerprint(config)[:8]}"
        if stored.get("status") == "failed":
            raise RunFolderTaken(
                f"{run_dir} holds a failed run of another config ({_first_line(stored.get('error'))}); "
                f"nothing there was changed. It differs in: {'; '.join(changed)}. Train this config there instead "
                f"with retrain=true (removes the failed run's checkpoints and results.json), or name a new run, "
                f"e.g. {new_name}.")
        raise RunFolderTaken(
            f"{run_dir} holds the run of another config ({stored.get('status', 'unknown status')}); nothing there "
            f"was changed. It differs in: {'; '.join(changed)}. A run folder belongs to one config: name a new run, "
            f"e.g. {new_name} (in a sweep: another hydra.sweep.dir), or delete the folder to start over.")
    return stored
