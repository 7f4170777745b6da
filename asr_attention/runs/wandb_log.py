"""results.json into the run's W&B run, and reading an offline W&B run back (tests, scripts).

Lightning's WandbLogger logs the per-step training loss and the val/test WER/CER as they happen; at the end of a
job `log_results_to_wandb` adds what only results.json holds: the resolved config, the status (and error), WER/CER
before and after fine-tuning, cache bytes (analytic and measured), throughput, and the per-layer conversion
fidelity as a `wandb.Table`.

An offline run (the default) is a directory <run dir>/wandb/offline-run-<time>-<id>/ whose run-<id>.wandb file holds
every record (config, history, summary); `read_offline_run` decodes it without the network or a W&B account.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SECTIONS = ("before", "after", "throughput", "code")  # results.json dicts copied to the summary as <section>/<key>
SCALARS = ("status", "error", "parameters", "vocab_size", "global_step", "wall_seconds", "best_checkpoint")


def results_summary(results: Mapping) -> dict[str, Any]:
    """The flat W&B summary of a results.json: scalars, before/*, after/*, throughput/*, ood/<phase>/* (the
    out-of-domain set's), conversion/*, cache/* (analytic and measured bytes, MiB per 1000 frames) and fidelity/*
    (mean and max relative error)."""
    out: dict[str, Any] = {k: results[k] for k in SCALARS if results.get(k) is not None}
    ood = results.get("ood") or {}
    sections = [(section, results.get(section)) for section in SECTIONS]
    sections += [(f"ood/{phase}", ood.get(phase)) for phase in ("unconverted", "before", "after")]
    for section, values in sections:
        for k, v in (values or {}).items():
            if isinstance(v, (int, float, str, bool)):
                out[f"{section}/{k}"] = v
    conversion = results.get("conversion") or {}
    for k in ("layers_replaced", "params_before", "params_after"):
        if k in conversion:
            out[f"conversion/{k}"] = conversion[k]
    if "cache_mib_per_1000_frames" in conversion:
        out["cache/mib_per_1000_frames"] = conversion["cache_mib_per_1000_frames"]  # fp32, batch 1
    measured = conversion.get("measured_cache_bytes") or {}
    for k, name in (("analytic", "analytic_bytes"), ("measured", "measured_bytes"), ("frames", "frames"),
                    ("batch", "batch")):
        if k in measured:
            out[f"cache/{name}"] = measured[k]
    errors = [row["relative_error"] for row in conversion.get("fidelity") or []]
    if errors:
        out["fidelity/mean_relative_error"] = sum(errors) / len(errors)
        out["fidelity/max_relative_error"] = max(errors)
    return out


def _active_run(cfg: Mapping | None):
    """The active W&B run; else, when `cfg.logger` has a WandbLogger (the job failed before the trainer started
    one), a new run from that logger's settings, so failed jobs show in W&B too; else None."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        return sys.modules["wandb"].run
    entry = next((c for c in ((cfg or {}).get("logger") or {}).values()
                  if str(c.get("_target_", "")).endswith("WandbLogger")), None)
    if entry is None:
        return None
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # under DDP only rank 0 has a run (Lightning's WandbLogger does the same)
        return None
    import hydra

    return hydra.utils.instantiate(entry).experiment


def log_results_to_wandb(results: Mapping, cfg: Mapping | None = None) -> bool:
    """Log a job's results.json into its W&B run (see the module doc). Returns whether it logged. Never raises:
    W&B trouble must not turn a finished job into a failed one."""
    try:
        run = _active_run(cfg)
        if run is None:
            return False
        import wandb

        if results.get("config"):
            run.config.update(dict(results["config"]), allow_val_change=True)
        run.summary.update(results_summary(results))
        tables = {}
        fidelity = (results.get("conversion") or {}).get("fidelity") or []
        if fidelity:
            tables["fidelity"] = wandb.Table(columns=["layer", "relative_error"],
                                             data=[[r["layer"], r["relative_error"]] for r in fidelity])
        predictions = results.get("predictions") or []
        if predictions:
            tables["predictions"] = wandb.Table(columns=["utt_id", "ref", "hyp"],
                                                data=[[p["utt_id"], p["ref"], p["hyp"]] for p in predictions])
        if tables:
            run.log(tables)
        return True
    except Exception:  # noqa: BLE001
        log.exception("could not log results.json to W&B (results.json is unaffected)")
        return False


# --- reading an offline run back: the .wandb file is a LevelDB-style log of wandb.proto Record messages -----------

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B transaction log")
    i, pending = _HEADER, b""
    while i + _HEADER <= len(data):
        left = _BLOCK - i % _BLOCK
        if left < _HEADER:  # block tail too short for a header: zero padding
            i += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[i:i + _HEADER])
        if kind == 0:  # zero-filled rest of a block (or of an unfinished file)
            i += left
            continue
        chunk, i = data[i + _HEADER:i + _HEADER + n], i + _HEADER + n
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def _set(tree: dict, path: list[str], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def read_offline_run(path: str | Path, wait_s: float = 30.0) -> dict[str, Any]:
    """An offline run (its offline-run-* directory, or the .wandb file) as
    {"run": {id, project, name, group, job_type, tags}, "config": {...}, "summary": {...}, "history": [{...}],
    "exit_code": int | None}. Summary keys are as logged (e.g. "after/test_wer"), nested only where W&B nests.

    W&B's service writes the file in 32 KiB blocks and may still be flushing just after `run.finish()` returns:
    waits up to `wait_s` seconds for the run's exit record (exit_code stays None if it never comes)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        out = _read_offline_run(path)
        if out["exit_code"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_offline_run(path: str | Path) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        (path,) = path.glob("run-*.wandb")
    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "history": [], "exit_code": None}

    def items(updates) -> Iterator[tuple[list[str], Any]]:
        for item in updates:
            yield (list(item.nested_key) or [item.key]), json.loads(item.value_json)

    for chunk in _chunks(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out["run"] = {"id": r.run_id, "project": r.project, "entity": r.entity, "name": r.display_name,
                          "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags)}
            for key, value in items(r.config.update):
                _set(out["config"], key, value)
        elif kind == "config":
            for key, value in items(record.config.update):
                _set(out["config"], key, value)
        elif kind == "summary":
            for key, value in items(record.summary.update):
                _set(out["summary"], key, value)
        elif kind == "history":
            out["history"].append({"/".join(k): v for k, v in items(record.history.item)})
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def offline_runs(directory: str | Path) -> list[Path]:
    """Every offline-run-* directory below `directory` (e.g. a sweep's)."""
    return sorted(Path(directory).rglob("offline-run-*"))
