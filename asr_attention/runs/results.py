"""results.json: one file per run, rewritten atomically after every phase, so a crash keeps what finished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from ..config.errors import UserError


class CorruptResults(UserError, ValueError):
    """A results.json that is not a JSON object (the message names the file and where it breaks)."""


def read_results(path: Path) -> dict[str, Any]:
    """A run's results.json. It is only ever replaced whole (see `Results.update`), so one that does not parse
    was damaged outside this program: CorruptResults names it, instead of a JSONDecodeError traceback."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f"line {err.lineno} column {err.colno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else err
        raise CorruptResults(f"{path} is not valid JSON ({where})") from None
    if not isinstance(data, dict):
        raise CorruptResults(f"{path} holds a JSON {type(data).__name__}, not a run's results (an object)")
    return data


class Results:
    def __init__(self, path: Path, **initial: Any):
        self.path = Path(path)
        self.data: dict[str, Any] = read_results(self.path) if self.path.exists() else {}
        self.update(**initial)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def discard(self, *keys: str) -> None:
        """Drop fields (an earlier attempt's error, once a resumed run is under way)."""
        for key in keys:
            self.data.pop(key, None)
        self.update()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        if rank_zero_only.rank != 0:
            return  # under DDP every rank runs the job; only the first writes the file (as W&B logging does)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)  # atomic: a reader never sees half a file


def cache_rows(data: dict) -> list[tuple[str, str]]:
    """Encoder families and Whisper's CTC head (its decoder never runs): the encoder cache per 1000 frames.
    Whisper seq2seq: its decoder caches, against the same sites as MHA."""
    cache, conv = data.get("cache_per_site"), data.get("conversion", {})
    if not cache or data.get("config", {}).get("model", {}).get("head") == "ctc":
        return [("KV cache per 1000 frames (fp32, batch 1)",
                 f"{conv['cache_mib_per_1000_frames']:.4g} MiB" if "cache_mib_per_1000_frames" in conv else "native")]
    return [(f"{label} (fp32, batch 1)", f"{cache[key]:,} B (MHA {cache['mha_' + key]:,} B, "
                                         f"-{100 * (1 - cache[key] / cache['mha_' + key]):.1f} %)")
            for label, key in (("decoder self cache per token", "decoder_self_per_token"),
                               ("cross cache per second of audio", "cross_per_second"))]


def _pct(d: dict, key: str) -> str:
    return f"{100 * d[key]:.1f} %" if key in d else "-"


def wer_rows(phases: dict, label: str = "") -> list[tuple[str, str]]:
    """WER unconverted (if measured), WER and CER before -> after fine-tuning, of one test set's phases."""
    before, after = phases.get("before") or {}, phases.get("after") or {}
    rows = [(f"{label}WER unconverted", _pct(phases["unconverted"], "test_wer"))] if phases.get("unconverted") else []
    return rows + [(f"{label}{kind} before -> after fine-tuning",
                    f"{_pct(before, f'test_{kind.lower()}')} -> {_pct(after, f'test_{kind.lower()}')}")
                   for kind in ("WER", "CER")]


def ood_rows(data: dict) -> list[tuple[str, str]]:
    """The out-of-domain set's rows (training/ood.py), when the run has one."""
    ood = data.get("ood")
    if not ood:
        return []
    return [("out-of-domain test", f"{ood.get('set')}: {ood.get('utterances')} utterances, "
                                   f"{ood.get('normaliser')} normaliser"), *wer_rows(ood, "OOD ")]


def summary_table(data: dict) -> str:
    """The lines a run prints at its end: WER/CER before and after fine-tuning (on its test split, then on its
    out-of-domain set), cache, throughput."""
    cfg = data.get("config", {})
    rows = [("model / attention", f"{cfg.get('model', {}).get('name')} / {cfg.get('attention', {}).get('name')}")]
    rows += [
        *wer_rows(data),
        *ood_rows(data),
        *cache_rows(data),
        ("parameters", f"{data.get('parameters', 0):,}" + (f" (unconverted {data['parameters_unconverted']:,})"
                                                           if "parameters_unconverted" in data else "")),
        ("throughput (RTFx, test batch)", f"{data.get('throughput', {}).get('rtfx', 0):.1f} "
                                          f"on {data.get('throughput', {}).get('device')}"),
        ("skipped audio files", str(len(data.get("skipped_files", [])))),
        ("transcripts empty / changed by oov=drop", " / ".join(
            str(sum(map(len, (data.get("transcripts") or {}).get(kind, {}).values())))
            for kind in ("empty", "changed_by_oov_drop"))),
        ("durations off their audio file's", str(len(data.get("duration_mismatches") or []))),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
