"""`python -m asr_attention.train` as real processes, for the tests that run, stop, kill and resume them.

Each process starts a session of its own (so `os.killpg` reaches the DDP ranks it spawns too) and writes its
output to a log file beside the run dir (`<run dir>.<n>.log`, one per process, since two may share a run dir): a
file, not a pipe, so no process blocks on a pipe nobody reads yet."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
_started = itertools.count()


def start(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}  # single-threaded: the runs of one test share the machine's cores
    for k in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT"):  # a clean launch, not a child rank
        env.pop(k, None)
    cmd = [sys.executable, "-m", "asr_attention.train", *overrides, f"hydra.run.dir={run_dir}"]
    log_path = run_dir.parent / f"{run_dir.name}.{next(_started)}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    proc.log_path = log_path
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()


def finish(proc: subprocess.Popen, rc: int | None = 0) -> str:
    """Wait for the process and return its output; rc None: any failure is expected."""
    proc.wait(timeout=600)
    out = output(proc)
    if rc is None:
        assert proc.returncode != 0, out[-3000:]
    else:
        assert proc.returncode == rc, out[-3000:]
    return out


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}:\n{output(proc)[-3000:]}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def kill_mid_epoch(proc: subprocess.Popen, run_dir: Path, epoch: int, steps_per_epoch: int) -> dict:
    """Poll the run's last.ckpt (read when it changes) until one is written inside `epoch` (0-based), not at its
    end; then kill -9 the run and every process it started (its session: DDP ranks too), and return that
    checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    seen = {"mtime": 0}

    def saved_mid_epoch() -> bool:
        if not last.exists() or last.stat().st_mtime_ns == seen["mtime"]:
            return False
        seen["mtime"] = last.stat().st_mtime_ns
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        return ckpt["epoch"] == epoch and ckpt["global_step"] % steps_per_epoch != 0

    wait_for(saved_mid_epoch, proc, f"a mid-epoch-{epoch + 1} last.ckpt")
    os.killpg(proc.pid, signal.SIGKILL)  # a real kill: nothing runs after it
    proc.wait()
    return torch.load(last, map_location="cpu", weights_only=True)
