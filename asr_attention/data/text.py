"""Character vocabulary for CTC: normalise transcripts, encode/decode, greedy CTC decoding.

Either built from corpus texts (`CharTokenizer.from_texts`) or given explicitly, e.g. to reuse a pretrained
wav2vec2 head's vocabulary: `CharTokenizer(processor.tokenizer.get_vocab(), blank_id=pad_id, word_delimiter="|")`.
Multi-character tokens of a given vocab (`<pad>`, `<s>`, `<unk>`) are never produced by `encode` and are
dropped by `decode`.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from typing import Literal

import torch

Case = Literal["upper", "lower", "keep"]
OOVPolicy = Literal["error", "drop"]


def check_oov_policy(oov: str, field: str = "oov") -> OOVPolicy:
    if oov not in ("error", "drop"):
        raise ValueError(f"{field}={oov!r} is not allowed: expected 'error' or 'drop'")
    return oov

# Punctuation that separates words becomes a space ("well-known" -> "WELL KNOWN"); the apostrophe is part of
# words ("DON'T") and is kept; every other ASCII punctuation mark is removed.
_TO_SPACE = "-/_–—"
_APOSTROPHES = {"’": "'", "‘": "'", "`": "'"}
_REMOVE = "".join(c for c in string.punctuation if c not in _TO_SPACE + "'") + "“”«»…"
_TRANSLATE = str.maketrans({**{c: " " for c in _TO_SPACE}, **_APOSTROPHES, **{c: None for c in _REMOVE}})


def normalise(text: str, case: Case = "upper") -> str:
    """Case-fold, map punctuation away (see above), collapse whitespace."""
    text = text.translate(_TRANSLATE)
    if case == "upper":
        text = text.upper()
    elif case == "lower":
        text = text.lower()
    return " ".join(text.split())


class CharTokenizer:
    """CTC character tokenizer.

    vocab: token -> id; `blank_id` is the CTC blank (index 0 when built here; wav2vec2 uses its pad id 0).
    word_delimiter: the token that stands for a space between words (`|` for wav2vec2, or " ").
    oov: what `encode` does with characters outside the vocabulary after normalisation:
      "error" raises ValueError naming the utterance and the characters (default: a silent change of the
      transcript would corrupt WER); "drop" removes them (then collapses whitespace).
    """

    def __init__(self, vocab: dict[str, int], blank_id: int = 0, word_delimiter: str = "|",
                 case: Case = "upper", oov: OOVPolicy = "error"):
        check_oov_policy(oov)
        if case not in ("upper", "lower", "keep"):
            raise ValueError(f"case {case!r}: allowed 'upper', 'lower' or 'keep'")
        if blank_id not in vocab.values():
            raise ValueError(f"blank_id {blank_id} is not an id of the vocabulary")
        if word_delimiter not in vocab:
            raise ValueError(f"word delimiter {word_delimiter!r} is not in the vocabulary")
        self.vocab = dict(vocab)
        self.blank_id = blank_id
        self.word_delimiter = word_delimiter
        self.case = case
        self.oov = oov
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        # Characters a transcript may contain: single-character tokens, with the delimiter standing for space.
        self._char_to_id = {t: i for t, i in self.vocab.items() if len(t) == 1 and i != blank_id}
        self._char_to_id.pop(word_delimiter, None)  # a literal '|' in a transcript is not a word boundary
        self._char_to_id[" "] = self.vocab[word_delimiter]

    @classmethod
    def from_texts(cls, texts: Iterable[str], word_delimiter: str = "|", blank: str = "<blank>",
                   case: Case = "upper", oov: OOVPolicy = "error") -> CharTokenizer:
        """Vocabulary = blank (0), word delimiter (1), then every character of the normalised texts, sorted."""
        chars = set()
        for t in texts:
            chars.update(normalise(t, case))
        chars.discard(" ")
        vocab = {blank: 0, word_delimiter: 1}
        for c in sorted(chars):
            vocab.setdefault(c, len(vocab))
        return cls(vocab, blank_id=0, word_delimiter=word_delimiter, case=case, oov=oov)

    def __len__(self) -> int:
        return max(self.vocab.values()) + 1

    def normal_form(self, text: str) -> str:
        """The transcript as this tokenizer reads it, before the vocabulary restricts it."""
        return normalise(text, self.case)

    def normalise(self, text: str, utt_id: str | None = None, oov: OOVPolicy | None = None) -> str:
        """Normalised text restricted to the vocabulary (applies `oov`, default the tokenizer's policy)."""
        oov = check_oov_policy(oov or self.oov)
        text = self.normal_form(text)
        bad = sorted({c for c in text if c not in self._char_to_id})
        if bad:
            if oov == "error":
                raise ValueError(f"utterance {utt_id or '?'}: characters {bad} not in the vocabulary "
                                 f"(text {text!r}); set oov='drop' to remove them")
            text = " ".join("".join(c for c in text if c in self._char_to_id).split())
        return text

    def encode(self, text: str, utt_id: str | None = None, oov: OOVPolicy | None = None) -> list[int]:
        return [self._char_to_id[c] for c in self.normalise(text, utt_id, oov)]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text: the delimiter becomes a space; blank and multi-character special tokens vanish."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.blank_id:
                continue
            tok = self.id_to_token.get(i, "")
            if tok == self.word_delimiter:
                out.append(" ")
            elif len(tok) == 1:
                out.append(tok)
        return " ".join("".join(out).split())

    def ctc_decode(self, emissions: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None) -> list[str]:
        """Greedy CTC: (B, T, V) scores or (B, T) argmax ids, valid `lengths` per row -> strings.

        Per row: argmax, keep the first `length` frames, collapse repeats, drop blanks, decode.
        """
        ids = emissions.argmax(dim=-1) if emissions.dim() == 3 else emissions
        ids = ids.detach().cpu()
        if lengths is None:
            lengths = [ids.shape[1]] * ids.shape[0]
        texts = []
        for row, n in zip(ids, lengths):
            row = torch.unique_consecutive(row[: int(n)])
            texts.append(self.decode(row[row != self.blank_id].tolist()))
        return texts
