"""A run's best checkpoint as only what training and conversion changed: small enough to bring home where a whole
checkpoint is not (a lent GPU machine returns files of at most 16 MiB; Whisper tiny.en's Lightning checkpoint is
hundreds), and loaded back by everything that loads a run (evaluate, transcribe, the end-to-end benchmark).

    python -m asr_attention.training.trained_weights RUN_DIR [--max-mib 16]     # from checkpoints/best-*.ckpt

Kept: every tensor of the checkpoint's backbone that differs from (or is absent in) the backbone as `load_run`
rebuilds it before loading weights: the pinned pretrained weights with the run's attention structure. Attention-only
fine-tuning leaves the rest bit-identical, so for a converted Whisper decoder only its attention tensors are kept.
Written as checkpoints/trained-NN.pt parts of at most --max-mib each; each part names the SHA-256 of the whole
state dict, which loading recomputes after filling in the rest, so a part missing, another run's part or a
different rebuild fails by name rather than loading a different model."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from torch import Tensor

PARTS = "trained-*.pt"


def state_hash(state: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def changed(trained: dict[str, Tensor], rebuilt: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of `trained` that `rebuilt` lacks or holds otherwise (shape, dtype or any bit)."""
    return {k: v for k, v in trained.items()
            if k not in rebuilt or rebuilt[k].shape != v.shape or rebuilt[k].dtype != v.dtype
            or not torch.equal(rebuilt[k].cpu(), v.cpu())}


def write_parts(kept: dict[str, Tensor], whole: str, folder: Path, max_bytes: int, source: str) -> list[Path]:
    """kept split in order into parts of at most max_bytes of tensor data (a single larger tensor is refused)."""
    groups: list[dict[str, Tensor]] = [{}]
    size = 0
    for name in sorted(kept):
        n = kept[name].numel() * kept[name].element_size()
        if n > max_bytes:
            raise ValueError(f"{name}: {n:,} B is more than one part holds ({max_bytes:,} B): raise --max-mib")
        if groups[-1] and size + n > max_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = kept[name].detach().cpu().clone()  # a view would save its whole storage
        size += n
    for old in folder.glob(PARTS):
        old.unlink()
    paths = []
    for i, group in enumerate(groups):
        path = folder / f"trained-{i:02d}.pt"
        torch.save({"tensors": group, "part": i, "parts": len(groups), "sha256": whole, "source": source}, path)
        paths.append(path)
    return paths


def read_parts(folder: Path) -> tuple[dict[str, Tensor], str]:
    """(the kept tensors of every part, the whole state's SHA-256), refusing a set that is incomplete or mixed."""
    paths = sorted(folder.glob(PARTS))
    if not paths:
        raise FileNotFoundError(f"{folder}: no {PARTS} parts")
    parts = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    expected = {parts[0]["parts"]}
    wholes = {p["sha256"] for p in parts}
    if {p["parts"] for p in parts} != expected or sorted(p["part"] for p in parts) != list(range(parts[0]["parts"])) \
            or len(wholes) != 1:
        raise ValueError(f"{folder}: the parts {[p.name for p in paths]} are not one complete set (parts "
                         f"{sorted(p['part'] for p in parts)} of {sorted({p['parts'] for p in parts})}, "
                         f"{len(wholes)} different whole states)")
    tensors: dict[str, Tensor] = {}
    for p in parts:
        tensors.update(p["tensors"])
    return tensors, wholes.pop()


def trained_state(folder: Path, rebuilt: dict[str, Tensor]) -> dict[str, Tensor]:
    """The run's whole backbone state: `rebuilt` (its backbone as load_run rebuilds it before any weights) with the
    parts over it, checked against the hash the parts were written with."""
    tensors, whole = read_parts(folder)
    unknown = sorted(set(tensors) - set(rebuilt))
    if unknown:
        raise ValueError(f"{folder}: tensors the rebuilt backbone does not have: {unknown[:5]}")
    state = {**rebuilt, **tensors}
    if state_hash(state) != whole:
        raise ValueError(f"{folder}: the backbone with these parts is not the run's (its SHA-256 differs from the "
                         "one they were written with): the rebuild or the pretrained weights differ from the "
                         "run's, or a part is from another run")
    return state


def save_trained(run_dir: Path, max_mib: float = 16) -> list[Path]:
    """The parts of the run's best checkpoint, beside it."""
    from .run_model import backbone_state, checkpoint_file, rebuilt_backbone, run_config

    path = checkpoint_file(run_dir, "best")
    if path.is_dir():
        raise FileNotFoundError(f"{path}: holds parts but no best-*.ckpt to write them from")
    trained = backbone_state(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    rebuilt = rebuilt_backbone(run_dir, run_config(run_dir))[1].state_dict()
    kept = changed(trained, rebuilt)
    return write_parts(kept, state_hash(trained), path.parent, int(max_mib * 2**20), path.name)


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python -m asr_attention.training.trained_weights",
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
