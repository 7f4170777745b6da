"""What every backbone adapter offers: CTC log-probs from raw waves, and the three hooks patching needs.

An adapter knows its family's quirks; nothing outside `backbones/` does. Patching (patch.py) only uses:
  attention_sites()        -> (parent module, attribute name, original attention module) per encoder layer
  to_canonical(original)   -> CanonicalMHA (weights, heads, scale, position scheme), the variants' only input
  wrap(variant)            -> an nn.Module the backbone can call exactly as it called the original
  variant_inputs(args, kw) -> the variant's (x, key_padding_mask, pos) for one call of the original module
Families with more than encoder self-attention (Whisper: decoder self and cross) override the site hooks below
(`select_sites`, `wrap_site`, `site_inputs`, `calibration_pass`); the defaults serve encoder-only families.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from asr_attention.attention import AttentionVariant, CanonicalMHA

DEMO_HINT = "or run the embedded demo offline: `python -m asr_attention.train experiment=demo`"


class Backbone(nn.Module):
    family: str
    frame_ms: float  # duration of one encoder output frame
    vocab: list[str] | None = None  # tokens by id, when the checkpoint ships a vocabulary
    blank_id: int = 0
    max_seconds: float | None = None  # the longest audio one utterance may hold (Whisper: its 30-s window)

    def forward(self, waves: Tensor, wave_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """waves (B, S) at 16 kHz, zero padded; wave_lengths (B,) in samples -> log_probs (B, T, V), lengths (B,)."""
        raise NotImplementedError

    def attention_sites(self) -> Iterator[tuple[nn.Module, str, nn.Module]]:
        raise NotImplementedError

    def to_canonical(self, original: nn.Module) -> CanonicalMHA:
        raise NotImplementedError

    def wrap(self, variant: AttentionVariant) -> nn.Module:
        raise NotImplementedError

    def variant_inputs(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """One call of the original attention module -> the keyword arguments of the equivalent variant call."""
        raise NotImplementedError

    def select_sites(self, kinds: Any) -> None:
        """attention.sites: which kinds of attention site `attention_sites` yields. Encoder-only families have one."""
        if kinds is not None and list(kinds) not in (["encoder"], ["all"]) and kinds != "all":
            raise ValueError(f"attention.sites={list(kinds)} is not allowed for model.family={self.family}: its "
                             "only attention sites are encoder self-attention (sites: [encoder])")

    def site_kind(self, parent: nn.Module, name: str) -> str:
        """The kind of the site `parent.name` (one of attention.sites' kinds)."""
        return "encoder"

    def wrap_site(self, parent: nn.Module, name: str, variant: AttentionVariant) -> nn.Module:
        """`wrap`, for families whose sites differ in how they are called."""
        return self.wrap(variant)

    def site_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
        """`variant_inputs` of one call of this site's module."""
        return self.variant_inputs(args, kwargs)

    def calibration_pass(self, waves: Tensor, wave_lengths: Tensor, targets: Tensor | None = None) -> None:
        """A forward that calls every selected attention site (targets: for families with a decoder)."""
        self(waves, wave_lengths)

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def head_parameters(self) -> list[nn.Parameter]:
        """The CTC output layer's parameters (optim.head_lr trains them at their own lr); [] without one."""
        raise NotImplementedError

    fresh_head = False  # True once the CTC head starts random (reset_head, Whisper's new CTC head)

    def fresh_parameters(self) -> list[nn.Parameter]:
        """Parameters that start random: they train from step 0, optim.attention_only_steps included (the
        converted attention cannot learn through a head that knows nothing)."""
        return self.head_parameters() if self.fresh_head else []


def arch_of(model_cfg: Mapping) -> dict:
    """The optional `model.arch` node as a plain dict."""
    from omegaconf import DictConfig, OmegaConf

    arch = model_cfg.get("arch") or {}
    if isinstance(arch, DictConfig):  # plain lists and dicts: HF configs type-check their fields
        return OmegaConf.to_container(arch, resolve=True)
    return dict(arch)


def check_sizes(source: str, pairs: list[tuple[str, int, str, int]]) -> None:
    """pairs: (config field, its value, checkpoint field, its value); any disagreement fails naming both."""
    diffs = [f"{cf}={cv} but the checkpoint has {kf}={kv}" for cf, cv, kf, kv in pairs if int(cv) != int(kv)]
    if diffs:
        raise ValueError(f"checkpoint {source!r} disagrees with the model config: " + "; ".join(diffs))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so a missing network fails in seconds instead of after the hub client's retries."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_error(source: str, why: str) -> OSError:
    return OSError(
        f"cannot load model.source={source!r} from the Hugging Face hub ({why}). It is not a local directory "
        f"either. Point model.source at a local checkpoint directory (e.g. one written by save_pretrained / the "
        f"SpeechBrain pretrained layout), unset HF_HUB_OFFLINE with network access to download it, {DEMO_HINT}."
    )


# A file a loader needs: one name, or a tuple of names of which the first present is used (e.g. model.ckpt, or the
# older exports' asr.ckpt).
Needed = str | tuple[str, ...]


def checkpoint_dir(source: str, needs: Sequence[Needed], hub_needs: Sequence[Needed] = (),
                   optional: Sequence[str] = ()) -> Path:
    """model.source (a local directory or a hub id) -> the local folder that holds the checkpoint's files.

    A hub id resolves to its snapshot in the Hugging Face cache (HF_HUB_CACHE; offline with HF_HUB_OFFLINE=1),
    downloading only the listed files when it is not there and the hub can be reached. `needs` must be in any
    folder; `hub_needs` too in a hub snapshot (files every copy of the hub repo has, whose absence means a partial
    download). A missing file fails naming the file and the folder.
    """
    if os.path.isdir(source):
        return _complete(Path(source), needs, source, "")
    needs = [*needs, *hub_needs]
    folder = _cached_snapshot(source, [*_names(needs), *optional])
    if folder is not None and not _missing(folder, needs):
        return folder
    why = ("HF_HUB_OFFLINE is set" if hub_offline()
           else "no network: huggingface.co is unreachable" if not hub_reachable() else None)
    if why is None:
        return _complete(_download(source, needs, optional), needs, source, f" The hub repo {source!r} lacks it.")
    if folder is None:
        raise hub_error(source, f"{why} and it is not in the local cache")
    return _complete(folder, needs, source, f" It is a partial copy of {source!r} in the Hugging Face cache ({why}): "
                     "download it again with network access, or point model.source at a complete local directory.")


class MissingCheckpointFile(FileNotFoundError):
    """A checkpoint folder lacks a file its loader needs (the message names both)."""


def _names(needs: Sequence[Needed]) -> list[str]:
    return [name for need in needs for name in ((need,) if isinstance(need, str) else need)]


def _missing(folder: Path, needs: Sequence[Needed]) -> list[Needed]:
    return [n for n in needs if not any((folder / name).is_file() for name in ((n,) if isinstance(n, str) else n))]


def _complete(folder: Path, needs: Sequence[Needed], source: str, hint: str) -> Path:
    missing = _missing(folder, needs)
    if missing:
        what = ", ".join(n if isinstance(n, str) else f"{n[0]} (or {' or '.join(n[1:])})" for n in missing)
        raise MissingCheckpointFile(f"model.source={source!r}: the checkpoint folder {folder} lacks {what}.{hint}")
    return folder


def _cached_snapshot(source: str, names: list[str]) -> Path | None:
    """The hub id's snapshot folder in the local cache (complete or not), or None when it is not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, allow_patterns=names, local_files_only=True))
    except HFValidationError as err:
        raise FileNotFoundError(f"model.source={source!r} is not a local directory, nor a hub id ({err})") from err
    except LocalEntryNotFoundError as err:  # recent huggingface_hub versions know some snapshots are partial
        partial = getattr(err, "snapshot_path", None)
        return Path(partial) if partial else None


def _download(source: str, needs: Sequence[Needed], optional: Sequence[str]) -> Path:
    """Fetch the listed files; of alternatives, only the first the repo has (the hub's weights are large)."""
    from huggingface_hub import snapshot_download

    try:
        single = [n for n in needs if isinstance(n, str)]
        folder = Path(snapshot_download(source, allow_patterns=[*single, *optional]))
        for choice in (n for n in needs if not isinstance(n, str)):
            for name in choice:
                if not (folder / name).is_file():
                    folder = Path(snapshot_download(source, allow_patterns=[name]))
                if (folder / name).is_file():
                    break
    except Exception as err:
        raise hub_error(source, f"download failed: {err}") from err
    return folder
