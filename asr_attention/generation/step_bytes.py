"""What one decode step must read from memory, and the speed that bounds: the HBM-bound limit.

A greedy step of the decoder reads every decoder weight once (the output projection reads the whole token
embedding; position embeddings are one row and not counted) and every cache once (a cross latent that all cross
layers share, attention.cross_latent=memory, once per layer: the variants' `read_bytes`): the cross-attention cache over
all encoder frames and the self-attention cache over the tokens so far. At batch B the step yields B tokens, so
limit tokens/s = B / (bytes per step / bandwidth). Self caches grow a token per step: the mean over the steps is
taken (exact, since cache bytes are linear in tokens).
"""

from __future__ import annotations

from torch import nn

H200_BYTES_PER_S = 4.3e12  # HBM3e read bandwidth reachable on an H200 (4.8 TB/s peak)


def decoder_weight_bytes(decoder: nn.Module) -> int:
    """Bytes of the decoder's parameters that a step reads (the learned position table excluded)."""
    positions = {id(p) for p in decoder.embed_positions.parameters()}
    return sum(p.numel() * p.element_size() for p in decoder.parameters() if id(p) not in positions)


def mha_cache_bytes(d_model: int, layers: int, batch: int, tokens: int, frames: int, itemsize: int) -> dict[str, int]:
    """Whisper's own caches: K and V of d values per token (self) and per encoder frame (cross), every layer."""
    per_position = 2 * layers * batch * d_model * itemsize
    return {"decoder_self": per_position * tokens, "cross": per_position * frames}


def mean_step_bytes(weights: int, cache_at, prompt: int, new_tokens: int) -> float:
    """Mean bytes read per step over `new_tokens` steps: weights + every cache. cache_at(tokens) -> the caches'
    bytes {"decoder_self": …, "cross": …} with `tokens` tokens cached; the first step reads the prompt's
    (prefill), the last one prompt + new_tokens - 1."""
    first, last = cache_at(prompt), cache_at(prompt + new_tokens - 1)
    return weights + sum((first[k] + last[k]) / 2 for k in first)


def limit_tokens_per_s(batch: int, step_bytes: float, bandwidth: float = H200_BYTES_PER_S) -> float:
    return batch * bandwidth / step_bytes
