"""Beam search over the backbone's own caches, each utterance's cross-attention cache shared by its beams.

The cross cache is built once per utterance (batch B) and never copied per beam: when the B*K beam rows attend to
it, their queries are folded into the query axis, (B*K, T, d) -> (B, K*T, d). Cross-attention puts no mask between
queries, so that is exactly K separate calls. Self-attention caches are per beam (B*K rows) and follow the beams
that survive each step. Scores are sums of token log-probabilities; a beam that emitted <|endoftext|> keeps its
score and only emits <|endoftext|> after; the best beam per utterance is picked by score / length (tokens
emitted up to and including the first <|endoftext|>)."""

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
    tokens: list[list[int]]  # per utterance: the best beam's tokens before <|endoftext|>
    scores: Tensor  # (B,) the best beam's sum of log-probabilities
    cache: DecoderCache


@torch.no_grad()
def beam_search(backbone: Whisper, memory: Tensor, beams: int, max_tokens: int, share_cross: bool = True) -> BeamResult:
    """memory (B, frames, d). share_cross=False gives every beam its own copy of the utterance's memory and cross
    cache (the reference the shared path is tested against)."""
    if beams < 1:
        raise ValueError(f"beams={beams} must be >= 1")
    t = backbone.tokens
    b, k, device = memory.shape[0], beams, memory.device
    cache = backbone.new_cache()
    seq = torch.tensor(t.prompt, device=device).repeat(b * k, 1)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # the beams start identical: only one may expand at the first step
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)
    offsets = torch.arange(b, device=device)[:, None] * k
    with shared_cross(backbone, k) if share_cross else contextlib.nullcontext():
        logits = backbone.decode(seq, memory if share_cross else memory.repeat_interleave(k, 0), cache)[:, -1]
        never, first = suppress_mask(backbone, logits.shape[-1], device)
        for step in range(max_tokens):
            logp = logits.float().masked_fill(first if step == 0 else never, float("-inf")).log_softmax(-1)
            logp[finished] = float("-inf")
            logp[finished, t.eot] = 0.0
            vocab = logp.shape[-1]
            scores, index = (scores.reshape(-1, 1) + logp).view(b, k * vocab).topk(k, dim=-1)
            rows = (offsets + index // vocab).view(-1)
            token = (index % vocab).view(-1)
            seq = torch.cat((seq.index_select(0, rows), token[:, None]), dim=1)
            finished = finished.index_select(0, rows) | (token == t.eot)
            if bool(finished.all()) or step + 1 == max_tokens:
                break
            for layer in cache.layers:  # self caches follow their beams; the cross caches are per utterance
                layer.self_attn = Cache({name: v.index_select(0, rows) for name, v in layer.self_attn.items()})
            logits = backbone.decode(token[:, None], None, cache)[:, -1]
    text = seq[:, len(t.prompt):]
    lengths = torch.where((text == t.eot).any(1), (text == t.eot).int().argmax(1) + 1, text.shape[1])
    best = (scores / lengths.view(b, k)).argmax(1)
    chosen = (torch.arange(b, device=device) * k + best).tolist()
    out = [row[: row.index(t.eot)] if t.eot in row else row for row in text[chosen].tolist()]
    return BeamResult(out, scores.gather(1, best[:, None]).squeeze(1), cache)
