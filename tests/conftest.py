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


def _let_interpreted_kernels_loop_over_scalar_arguments():
    """Triton 3.6's interpreter holds a scalar kernel argument as a 1-element array and loops over it with
    int(array) (`for j in range(0, T, BLOCK)`), which NumPy >= 2.4 refuses for anything but a 0-d array."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _let_interpreted_kernels_loop_over_scalar_arguments()
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
    """run_module("asr_attention.reports.kv_cache", "frames=2000") -> CompletedProcess, run from the repo root."""

    def _run(module: str, *args: str, check: bool = True):
        proc = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode:
            raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return _run


@pytest.fixture
def spy(monkeypatch):
    """calls = spy(module, "name"): module.name still runs, and each call's (args, kwargs) is appended to calls."""

    def _spy(owner, name: str) -> list[tuple[tuple, dict]]:
        calls, real = [], getattr(owner, name)

        def recorded(*args, **kwargs):
            calls.append((args, kwargs))
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)
        return calls

    return _spy
