"""A -m sweep whose jobs failed ends non-zero, after every job ran, naming each failed job.

A failing job records `status: failed` and its error in its own results.json and returns, so the sweep goes on
(train.py). A job refused its folder (another config's run, or a live process's) must not write there: it
records itself as `refused-job<N>.json` in the sweep folder instead. This Hydra callback (hydra.callbacks in
conf/train.yaml) then reads the sweep folder once all jobs have ended, which works for every launcher, the ones
that run jobs in other processes or on other machines included. If any job of this sweep failed or was refused
it prints the list and exits with status 1 (SystemExit: Hydra turns a callback's exceptions into warnings).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

REFUSED = "refused-job{}.json"


def record_refused_job(hydra_config: Any, job_dir: Path, error: Exception) -> Path:
    """Note, in the sweep folder, a job refused its own folder: the sweep's end names it with the failed jobs."""
    path = Path(str(hydra_config.sweep.dir)) / REFUSED.format(hydra_config.job.num)
    path.write_text(json.dumps({"job_dir": str(job_dir), "overrides": list(hydra_config.overrides.task),
                                "error": f"{type(error).__name__}: {error}"}))
    return path


def _overrides(job_dir: Path) -> str:
    path = job_dir / ".hydra" / "overrides.yaml"
    return " ".join(OmegaConf.load(path)) if path.exists() else "?"


class FailedJobs(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        self.sweep_dir = Path(str(config.hydra.sweep.dir))  # resolved now: ${now:...} is cached from here on

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = []
        for path in sorted(self.sweep_dir.rglob("results.json"), key=lambda p: p.stat().st_mtime):
            if path.stat().st_mtime < self.started:
                continue  # an earlier sweep's job in the same folder, untouched by this one
            results = json.loads(path.read_text())
            if results.get("status") == "failed":
                failed.append(f"  {path.parent}  [{_overrides(path.parent)}]  {results.get('error')}")
        for path in sorted(self.sweep_dir.glob(REFUSED.format("*"))):
            if path.stat().st_mtime >= self.started:
                refused = json.loads(path.read_text())
                failed.append(f"  {refused['job_dir']}  [{' '.join(refused['overrides'])}]  {refused['error']}")
        if failed:
            raise SystemExit(f"{len(failed)} sweep job(s) failed or were refused their folder (a failed job's "
                             "results.json holds its traceback):\n"
                             + "\n".join(failed))
