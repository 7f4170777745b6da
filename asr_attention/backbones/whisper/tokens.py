"""Whisper's token side: the special ids decoding starts from and stops at, the suppress lists, and the text
tokenizer (a `tokenizers` BPE, tokenizer.json in both the CTranslate2 and the HF checkpoint folders)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from asr_attention.data.text import normalise as normalise_text

IGNORE = -100  # label padding, as the datamodule pads targets
MULTILINGUAL_VOCAB = 51865  # Whisper's own rule: a model whose vocabulary has this many tokens or more is multilingual
LANGUAGE, TASK = "<|en|>", "<|transcribe|>"  # what a multilingual model is told: transcribe English


@dataclass
class WhisperTokens:
    """Ids of <|endoftext|>, <|startoftranscript|>, <|notimestamps|>; language_task: the ids between those two in
    the prompt (a multilingual model's <|en|> <|transcribe|>; none for an English-only one); suppress: never
    emitted; suppress_begin: not as the first token (a bare space, or stopping at once). tokenizer: a
    `tokenizers.Tokenizer` or None (random-weight models decode ids only)."""

    eot: int
    sot: int
    no_timestamps: int
    suppress: list[int] = field(default_factory=list)
    suppress_begin: list[int] = field(default_factory=list)
    tokenizer: object | None = None
    language_task: list[int] = field(default_factory=list)

    @property
    def prompt(self) -> list[int]:
        """Greedy text without timestamps: [<|startoftranscript|>, <|notimestamps|>] for English-only checkpoints,
        [<|startoftranscript|>, <|en|>, <|transcribe|>, <|notimestamps|>] for multilingual ones."""
        return [self.sot, *self.language_task, self.no_timestamps]

    def teacher_forcing(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """targets (B, L) text ids padded with -100 -> decoder inputs prompt + text (padding read as <eot>) and
        labels text + <eot> (padding -100), both (B, P + L) for a prompt of P tokens: the prompt's positions but
        its last predict nothing."""
        b, p = targets.shape[0], len(self.prompt)
        prompt = targets.new_tensor(self.prompt).expand(b, -1)
        text = targets.masked_fill(targets == IGNORE, self.eot)
        inputs = torch.cat((prompt, text), dim=1)
        ends = (targets != IGNORE).sum(1)
        labels = torch.cat((targets.new_full((b, p - 1), IGNORE), targets, targets.new_full((b, 1), IGNORE)), dim=1)
        labels[torch.arange(b), ends + p - 1] = self.eot
        return inputs, labels

    def padding(self, targets: Tensor) -> Tensor:
        """(B, P + L) bool, True where `teacher_forcing`'s decoder input is padding: after a row's prompt and text
        (targets are right-padded with -100)."""
        ends = len(self.prompt) + (targets != IGNORE).sum(1, keepdim=True)
        return torch.arange(len(self.prompt) + targets.shape[1], device=targets.device) >= ends

    def decode(self, ids: list[int]) -> str:
        """Text of the ids before <|endoftext|>, special tokens dropped."""
        if self.tokenizer is None:
            raise ValueError("this Whisper has no tokenizer (a random-weight model): read the token ids instead")
        ids = [i for i in ids if i < self.eot]
        return self.tokenizer.decode(ids).strip()


class WhisperTextTokenizer:
    """What the datamodule asks of a tokenizer, for Whisper's own vocabulary: references keep the corpus text
    (the scorer normalises both sides); training targets are its BPE ids of " " + the text in lower case
    (AN4 shouts in capitals, which Whisper's BPE splits into many more tokens)."""

    def __init__(self, tokens: WhisperTokens):
        if tokens.tokenizer is None:
            raise ValueError("model.head=seq2seq needs the checkpoint's tokenizer.json")
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.tokenizer.get_vocab_size()

    def normal_form(self, text: str) -> str:
        return " ".join(text.split())

    def normalise(self, text: str, utt_id: str | None = None, oov: str | None = None) -> str:
        return self.normal_form(text)  # the BPE covers every character: nothing to restrict

    def encode(self, text: str, utt_id: str | None = None, oov: str | None = None) -> list[int]:
        return self.tokens.tokenizer.encode(" " + normalise_text(text, "lower"), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokens.decode(ids)


def read_tokens(folder: Path, vocab_size: int) -> WhisperTokens:
    """From a checkpoint folder: tokenizer.json (special ids), and the suppress lists of config.json
    (CTranslate2: suppress_ids / suppress_ids_begin) or generation_config.json (HF: suppress_tokens /
    begin_suppress_tokens). vocab_size: the model's (its output layer's rows), which says whether it is
    multilingual (then the prompt names English and transcription)."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a Whisper checkpoint folder needs its tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path))
    ids = {}
    for name, token in (("eot", "<|endoftext|>"), ("sot", "<|startoftranscript|>"),
                        ("no_timestamps", "<|notimestamps|>")):
        ids[name] = tokenizer.token_to_id(token)
        if ids[name] is None:
            raise ValueError(f"{path}: no {token} token: not a Whisper tokenizer")
    language_task = []
    if vocab_size >= MULTILINGUAL_VOCAB:
        for token in (LANGUAGE, TASK):
            language_task.append(tokenizer.token_to_id(token))
            if language_task[-1] is None:
                raise ValueError(f"{path}: no {token} token, which a multilingual Whisper ({vocab_size} tokens) is "
                                 "prompted with")
    suppress, begin = _suppress_lists(folder)
    return WhisperTokens(**ids, suppress=suppress, suppress_begin=begin, tokenizer=tokenizer,
                         language_task=language_task)


def _suppress_lists(folder: Path) -> tuple[list[int], list[int]]:
    for name, keys in (("config.json", ("suppress_ids", "suppress_ids_begin")),
                       ("generation_config.json", ("suppress_tokens", "begin_suppress_tokens"))):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            if keys[0] in data:
                return [int(i) for i in data[keys[0]]], [int(i) for i in data.get(keys[1]) or []]
    raise FileNotFoundError(f"{folder}: neither config.json (CTranslate2) nor generation_config.json (HF) lists "
                            "the suppressed tokens")
