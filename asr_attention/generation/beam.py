"""Beam search: `beams` rows per utterance, as Whisper's own beam search. Scores are sums of token
log-probabilities. Each step, every running hypothesis proposes its continuations; in order of score, one that
ends in <|endoftext|> joins its utterance's finished list (it leaves the beam, so it never holds a beam a running
hypothesis could use), the others fill the beams. An utterance is done with round(beams x patience) finished; at
the token limit its running hypotheses count too. The best is chosen by score / length (text tokens plus
<|endoftext|>).

Each utterance's cross cache is shared by its beams (the cache's `beams`: queries folded into the query axis);
self caches are per beam and follow the beams that survive each step (the rows `update` returns)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asr_attention.backbones.whisper.adapter import DecoderCache, Whisper

from .caches import GrowingCache
from .loop import decode
from .token_decoder import Candidate, TokenDecoder


class BeamSearchDecoder(TokenDecoder):
    def __init__(self, beams: int, eot: int, patience: float = 1.0):
        self.candidates = round(beams * patience)
        if beams < 1 or self.candidates < 1:
            raise ValueError(f"beams={beams}, patience={patience}: need beams >= 1 and round(beams * patience) >= 1")
        self.rows_per_utterance, self.eot = beams, eot
        self.scores: Tensor | None = None
        self.finished: list[list[Candidate]] = []
        self.prompt = 0

    def reset(self, rows: int, prompt: int, device) -> None:
        k, self.prompt = self.rows_per_utterance, prompt
        self.scores = torch.full((rows // k, k), float("-inf"), device=device)
        self.scores[:, 0] = 0.0  # the beams start identical: only one may expand at the first step
        self.finished = [[] for _ in range(rows // k)]

    def update(self, tokens: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        (b, k), vocab, device = self.scores.shape, logits.shape[-1], logits.device
        logprobs = logits.log_softmax(-1)
        # each beam ends at most once, so the best 2k continuations hold k that do not
        top, index = (self.scores.reshape(-1, 1) + logprobs).view(b, k * vocab).topk(2 * k, dim=-1)
        rows, chosen, scores = [], [], []
        for u, (row_scores, row_index) in enumerate(zip(top.tolist(), index.tolist())):
            running = 0
            for score, i in zip(row_scores, row_index):
                row, token = u * k + i // vocab, i % vocab
                if token == self.eot:
                    if len(self.finished[u]) < self.candidates and score > float("-inf"):
                        self.finished[u].append(Candidate(tokens[row, self.prompt:].tolist(), score, True))
                    continue
                rows.append(row)
                chosen.append(token)
                scores.append(score)
                running += 1
                if running == k:
                    break
        rows = torch.tensor(rows, device=device)
        self.scores = torch.tensor(scores, device=device).view(b, k)
        chosen = torch.tensor(chosen, device=device)
        return torch.cat((tokens.index_select(0, rows), chosen[:, None]), dim=1), rows

    def completed(self) -> bool:
        return all(len(f) >= self.candidates for f in self.finished)

    def finalize(self, tokens: Tensor) -> list[Candidate]:
        """The best per utterance by log-probability per token; where fewer than `beams` finished, the running
        hypotheses fill up, best first (their text runs to the token limit)."""
        k = self.rows_per_utterance
        out = []
        for u, finished in enumerate(self.finished):
            hypotheses = list(finished)
            for j in self.scores[u].argsort(descending=True).tolist()[: max(k - len(hypotheses), 0)]:
                text = tokens[u * k + j, self.prompt:].tolist()
                hypotheses.append(Candidate(text, float(self.scores[u, j]), False))
            out.append(max(hypotheses, key=per_token))
        return out


def per_token(candidate: Candidate) -> float:
    """Log-probability per token scored: the text, and <|endoftext|> where it was emitted."""
    return candidate.sum_logprob / (len(candidate.tokens) + candidate.finished)


@dataclass
class BeamResult:
    tokens: list[list[int]]  # per utterance: the best hypothesis' tokens before <|endoftext|>
    scores: Tensor  # (B,) the best hypothesis' sum of log-probabilities
    cache: DecoderCache


@torch.no_grad()
def beam_search(backbone: Whisper, memory: Tensor, beams: int, max_tokens: int, share_cross: bool = True,
                patience: float = 1.0) -> BeamResult:
    """memory (B, frames, d) -> the best hypothesis per utterance. share_cross=False gives every beam its own copy
    of the utterance's memory and cross cache (the reference the shared path is tested against)."""
    decoder = BeamSearchDecoder(beams, backbone.tokens.eot, patience)
    cache = GrowingCache(backbone, beams if share_cross else 1)
    best = decode(cache, memory if share_cross else memory.repeat_interleave(beams, 0), decoder, backbone.tokens,
                  max_tokens)
    return BeamResult([c.tokens for c in best], torch.tensor([c.sum_logprob for c in best], device=memory.device),
                      cache.cache)
