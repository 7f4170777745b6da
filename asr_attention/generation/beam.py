"""Beam search over the backbone's own caches, each utterance's cross-attention cache shared by its beams.

The cross cache is built once per utterance (batch B) and never copied per beam: when the B*K beam rows attend to
it, their queries are folded into the query axis, (B*K, T, d) -> (B, K*T, d). Cross-attention puts no mask between
queries, so that is exactly K separate calls. Self-attention caches are per beam (B*K rows) and follow the beams
that survive each step. Scores are sums of token log-probabilities. As in Whisper's own beam search, a hypothesis
that emits <|endoftext|> leaves the beam for its utterance's finished list (so it never holds a beam that a running
hypothesis could use), and the best is picked by score / length (text tokens plus <|endoftext|>)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asr_attention.attention.base import Cache
from asr_attention.backbones.whisper import DecoderCache, Whisper
from asr_attention.decoding import suppress_mask


class SharedCrossAttention(nn.Module):
    """A cross-attention site called with K beam rows per utterance and one cache per utterance."""

    def __init__(self, site: nn.Module, beams: int):
        super().__init__()
        self.site, self.beams = site, beams

    def forward(self, x: Tensor, memory: Tensor | None = None, cache=None, use_cache: bool = False):
        rows, t, d = x.shape
        out, cache = self.site(x.reshape(rows // self.beams, self.beams * t, d), memory, cache, use_cache)
        return out.reshape(rows, t, d), cache


@contextlib.contextmanager
def shared_cross(backbone: Whisper, beams: int):
    layers = backbone.decoder.layers
    originals = [layer.encoder_attn for layer in layers]
    try:
        for layer, site in zip(layers, originals):
            layer.encoder_attn = SharedCrossAttention(site, beams)
        yield
    finally:
        for layer, site in zip(layers, originals):
            layer.encoder_attn = site


@dataclass
class BeamResult:
    tokens: list[list[int]]  # per utterance: the best hypothesis' tokens before <|endoftext|>
    scores: Tensor  # (B,) the best hypothesis' sum of log-probabilities
    cache: DecoderCache


@torch.no_grad()
def beam_search(backbone: Whisper, memory: Tensor, beams: int, max_tokens: int, share_cross: bool = True,
                patience: float = 1.0) -> BeamResult:
    """memory (B, frames, d). Each step, every utterance's `beams` running hypotheses propose their continuations;
    in order of score, one ending in <|endoftext|> joins the utterance's finished list (as in Whisper's own beam
    search: it leaves the beam, so `beams` hypotheses keep running), the others fill the beams. An utterance is done
    with round(beams * patience) finished; at the token limit the running ones count too. The best is chosen by
    log-probability per token. share_cross=False gives every beam its own copy of the utterance's memory and cross
    cache (the reference the shared path is tested against)."""
    candidates = round(beams * patience)
    if beams < 1 or candidates < 1:
        raise ValueError(f"beams={beams}, patience={patience}: need beams >= 1 and round(beams * patience) >= 1")
    t = backbone.tokens
    b, k, device = memory.shape[0], beams, memory.device
    cache = backbone.new_cache()
    prompt = len(t.prompt)
    seq = torch.tensor(t.prompt, device=device).repeat(b * k, 1)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # the beams start identical: only one may expand at the first step
    finished = [[] for _ in range(b)]
    with shared_cross(backbone, k) if share_cross else contextlib.nullcontext():
        logits = backbone.decode(seq, memory if share_cross else memory.repeat_interleave(k, 0), cache)[:, -1]
        never, first = suppress_mask(backbone, logits.shape[-1], device)
        for step in range(max_tokens):
            logp = logits.float().masked_fill(first if step == 0 else never, float("-inf")).log_softmax(-1)
            vocab = logp.shape[-1]
            # each beam ends at most once, so the best 2k continuations hold k that do not
            top, index = (scores.reshape(-1, 1) + logp).view(b, k * vocab).topk(2 * k, dim=-1)
            rows, tokens, kept = [], [], []
            for u, (row_scores, row_index) in enumerate(zip(top.tolist(), index.tolist())):
                running = 0
                for score, i in zip(row_scores, row_index):
                    row, token = u * k + i // vocab, i % vocab
                    if token == t.eot:
                        if len(finished[u]) < candidates and score > float("-inf"):
                            finished[u].append((seq[row, prompt:].tolist(), score))
                        continue
                    rows.append(row)
                    tokens.append(token)
                    kept.append(score)
                    running += 1
                    if running == k:
                        break
            rows = torch.tensor(rows, device=device)
            token = torch.tensor(tokens, device=device)
            seq = torch.cat((seq.index_select(0, rows), token[:, None]), dim=1)
            scores = torch.tensor(kept, device=device).view(b, k)
            if all(len(f) >= candidates for f in finished) or step + 1 == max_tokens:
                break
            for layer in cache.layers:  # self caches follow their beams; the cross caches are per utterance
                layer.self_attn = Cache({name: v.index_select(0, rows) for name, v in layer.self_attn.items()})
            logits = backbone.decode(token[:, None], None, cache)[:, -1]
    out, best_scores = [], []
    for u in range(b):
        hypotheses = [(text, score, len(text) + 1) for text, score in finished[u]]
        if len(hypotheses) < k:  # the token limit came first: the running hypotheses, best first, fill up
            order = scores[u].argsort(descending=True).tolist()
            hypotheses += [(seq[u * k + j, prompt:].tolist(), float(scores[u, j]), seq.shape[1] - prompt)
                           for j in order[: k - len(hypotheses)]]
        text, score, _ = max(hypotheses, key=lambda h: h[1] / h[2])
        out.append(text)
        best_scores.append(score)
    return BeamResult(out, torch.tensor(best_scores, device=device), cache)
