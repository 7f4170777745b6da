"""Write a finished run's trained-weight parts beside its best checkpoint (the format: trained_weights.py):

    python -m asr_attention.training.save_trained RUN_DIR [--max-mib 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .run_model import backbone_state, checkpoint_file, rebuilt_backbone, run_config
from .trained_weights import changed, state_hash, write_parts


def save_trained(run_dir: Path, max_mib: float = 16) -> list[Path]:
    """The parts of the run's best checkpoint, beside it."""
    path = checkpoint_file(run_dir, "best")
    if path.is_dir():
        raise FileNotFoundError(f"{path}: holds parts but no best-*.ckpt to write them from")
    trained = backbone_state(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    rebuilt = rebuilt_backbone(run_dir, run_config(run_dir))[1].state_dict()
    kept = changed(trained, rebuilt)
    return write_parts(kept, state_hash(trained), path.parent, int(max_mib * 2**20), path.name)


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python -m asr_attention.training.save_trained",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--max-mib", type=float, default=16, help="the largest part, MiB of tensor data")
    args = p.parse_args(argv)
    paths = save_trained(args.run_dir, args.max_mib)
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} part(s), {total / 2**20:.1f} MiB: " + ", ".join(str(p) for p in paths))
    return paths


if __name__ == "__main__":
    main()
