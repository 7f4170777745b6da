"""Shared test set-up: offline everything, and composing configs the way the entry points do."""

import os
import subprocess
import sys
from pathlib import Path

# Before anything imports transformers or wandb: never touch the network in tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
import pytest  # noqa: E402
import torch  # noqa: E402

# Before Triton is imported (torch alone does not): without a GPU, the Triton kernels run in Triton's CPU
# interpreter, so their tests run here too.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hydra import compose, initialize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def compose_cfg():
    """compose_cfg("train", ["model=branchformer"]) -> the composed DictConfig."""

    def _compose(config_name: str, overrides: list[str] = (), **kwargs):
        with initialize(version_base="1.3", config_path="../conf"):
            return compose(config_name=config_name, overrides=list(overrides), **kwargs)

    return _compose


@pytest.fixture
def run_module():
    """run_module("asr_attention.kv_cache", "frames=2000") -> CompletedProcess, run from the repo root."""

    def _run(module: str, *args: str, check: bool = True):
        proc = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode:
            raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return _run
