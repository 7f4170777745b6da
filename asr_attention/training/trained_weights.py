"""A run's best checkpoint as only what training and conversion changed: small enough to bring home where a whole
checkpoint is not (a lent GPU machine returns files of at most 16 MiB; Whisper tiny.en's Lightning checkpoint is
hundreds), and loaded back by everything that loads a run (evaluate, transcribe, the end-to-end benchmark).
Written by `python -m asr_attention.training.save_trained RUN_DIR [--max-mib 16]` (from checkpoints/best-*.ckpt).

Kept: every tensor of the checkpoint's backbone that differs from (or is absent in) the backbone as `load_run`
rebuilds it before loading weights: the pinned pretrained weights with the run's attention structure. Attention-only
fine-tuning leaves the rest bit-identical, so for a converted Whisper decoder only its attention tensors are kept.
Written as checkpoints/trained-NN.pt parts of at most --max-mib each; each part names the SHA-256 of the whole
state dict, which loading recomputes after filling in the rest, so a part missing, another run's part or a
different rebuild fails by name rather than loading a different model."""

from __future__ import annotations

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
