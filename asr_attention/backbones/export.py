"""Save a backbone (with its native attention) as a checkpoint its own loader reads back: an HF model dir with
vocab.json, or the SpeechBrain pretrained layout plus vocab.json. Weights are stored in fp16 to stay small;
loaders cast back to fp32."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .base import Backbone

FAMILIES = ("hf_wav2vec2", "speechbrain_branchformer")  # those with a format of their own, written here


def export_backbone(backbone: Backbone, directory: str | Path, vocab: dict[str, int]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if backbone.family == "hf_wav2vec2":
        from transformers import Wav2Vec2CTCTokenizer

        backbone.model.half().save_pretrained(directory)
        backbone.model.float()
        (directory / "vocab.json").write_text(json.dumps(vocab))
        blank = next(t for t, i in vocab.items() if i == backbone.blank_id)
        Wav2Vec2CTCTokenizer(str(directory / "vocab.json"), pad_token=blank, unk_token=blank,
                             word_delimiter_token="|").save_pretrained(directory)
    else:
        backbone.save_speechbrain(directory)
        for name in ("asr.ckpt",):
            state = torch.load(directory / name, map_location="cpu", weights_only=True)
            torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, directory / name)
        (directory / "vocab.json").write_text(json.dumps(vocab))
    return directory
