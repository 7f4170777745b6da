"""The code a run came from, recorded in its results.json: the git commit of the checkout that holds this package
(and whether tracked files differ from it), unless $ASR_ATTENTION_COMMIT names it: a tree sent to a GPU machine
may have no .git, or a stale one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_version() -> dict:
    # named explicitly first: a copied tree can carry a .git whose HEAD is not the code sent (seen on the GPU host)
    if os.environ.get("ASR_ATTENTION_COMMIT"):
        return {"commit": os.environ["ASR_ATTENTION_COMMIT"], "dirty": None, "source": "ASR_ATTENTION_COMMIT"}
    # only this package's own checkout: an installed copy inside some other repository (a venv in a clone) is not it
    commit = _git("rev-parse", "HEAD") if (REPO / ".git").exists() else None
    if commit:
        return {"commit": commit, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                "source": "git"}
    return {"commit": None, "dirty": None, "source": f"unknown: no git checkout at {REPO} and no $ASR_ATTENTION_COMMIT"}
