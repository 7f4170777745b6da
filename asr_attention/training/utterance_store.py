"""What a training module keeps per utterance across steps (seq2seq_module's encoder outputs, teacher_text's
transcripts): keyed by (utt_id, audio id), so a file whose audio changed under the same id is not mistaken for it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping


def utterance_keys(batch: dict, option: str, purpose: str) -> list[tuple[str, str]]:
    """The batch's (utt_id, audio id) keys; without audio ids, an error naming the option that needs them and why."""
    if "audio_ids" not in batch:
        raise ValueError(f"{option} needs batch['audio_ids'] (data/dataset.py's collate adds them) {purpose}")
    return list(zip(batch["utt_ids"], batch["audio_ids"]))


def fill_missing(store: MutableMapping, keys: list, compute: Callable[[list[int]], Iterable]) -> list[int]:
    """Stores compute(rows) for the batch rows whose key the store lacks (one call for all of them); those rows."""
    missing = [i for i, k in enumerate(keys) if k not in store]
    if missing:
        for i, value in zip(missing, compute(missing)):
            store[keys[i]] = value
    return missing
