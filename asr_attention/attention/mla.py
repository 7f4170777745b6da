"""Multi-head latent attention (DeepSeek-V2 style) converted from MHA: K and V share one low-rank latent.

Conversion: joint SVD of the stacked [W_k; W_v] (2d, d) = U S Vh, kept to rank r:
down = sqrt(S_r) Vh_r (d -> r), up = U_r sqrt(S_r) (r -> 2d), the K/V biases on the up side. Exact for r >= d
(the stack has rank <= d), the best rank-r approximation of the weights below. The activation-aware option
minimises the error of the projected *activations* X W^T on a calibration batch instead (whiten by X^T X first).

The cache keeps only the latent (r values per frame; two latents under rotary-on-inputs, where K reads rotated
inputs and V plain ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Cache, SoftmaxAttention, append
from .canonical import CanonicalMHA
from .positions import causal_keep, key_padding_to_sdpa


def _factor(weight: Tensor, rank: int, whiten: Tensor | None) -> tuple[Tensor, Tensor]:
    """weight (m, n) ~ up (m, rank) @ down (rank, n); zero-padded when rank exceeds weight's rank."""
    w = weight.double()
    if whiten is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        unwhiten = None
    else:
        # minimise ||(W - UD) C^1/2||: factor W C^1/2, then undo the whitening on the down side
        evals, evecs = torch.linalg.eigh(whiten.double())
        evals = evals.clamp_min(evals.max() * 1e-10)
        sqrt_c = evecs @ torch.diag(evals.sqrt()) @ evecs.T
        unwhiten = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
        u, s, vh = torch.linalg.svd(w @ sqrt_c, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    up = u[:, :k] * root
    down = root[:, None] * vh[:k]
    if unwhiten is not None:
        down = down @ unwhiten
    if k < rank:
        up = torch.cat((up, up.new_zeros(up.shape[0], rank - k)), dim=1)
        down = torch.cat((down, down.new_zeros(rank - k, down.shape[1])), dim=0)
    return up.to(weight.dtype), down.to(weight.dtype)


class MultiHeadLatentAttention(SoftmaxAttention):
    name = "mla"

    def __init__(self, mha: CanonicalMHA, latent_dim: int, calibration: Tensor | None = None):
        d = mha.d_model
        if not 1 <= latent_dim <= 2 * d:
            raise ValueError(f"attention.latent_dim={latent_dim} must be in [1, {2 * d}] (2 * d_model)")
        super().__init__(mha)
        self.kv_heads = self.num_heads
        self.latent_dim = latent_dim
        whiten = None
        if calibration is not None:
            x = calibration.reshape(-1, d).double()
            whiten = x.T @ x / x.shape[0]
        up, down = _factor(torch.cat((mha.k_weight, mha.v_weight)), latent_dim, whiten)
        self.kv_down = nn.Linear(d, latent_dim, bias=False)
        self.kv_down.weight.data.copy_(down)
        self.kv_up = nn.Linear(latent_dim, 2 * d, bias=mha.k_bias is not None or mha.v_bias is not None)
        self.kv_up.weight.data.copy_(up)
        if self.kv_up.bias is not None:
            zeros = torch.zeros(d)
            self.kv_up.bias.data.copy_(torch.cat((_or(mha.k_bias, zeros), _or(mha.v_bias, zeros))))
        self.absorb: bool | None = None  # cached path: None = whichever needs fewer FLOPs

    @property
    def latents_per_frame(self) -> int:
        return 2 if self.position == "rotary_input" else 1

    def cache_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        return self.latents_per_frame * batch * frames * self.latent_dim * dtype.itemsize

    def _up(self, latent_k: Tensor, latent_v: Tensor) -> tuple[Tensor, Tensor]:
        if latent_k is latent_v:  # one shared latent: a single (r -> 2d) GEMM, then split
            k, v = self.kv_up(latent_k).chunk(2, dim=-1)
            return self.split_heads(k), self.split_heads(v)
        d = self.d_model
        w, b = self.kv_up.weight, self.kv_up.bias
        k = F.linear(latent_k, w[:d], None if b is None else b[:d])
        v = F.linear(latent_v, w[d:], None if b is None else b[d:])
        return self.split_heads(k), self.split_heads(v)

    def merges(self, tokens: int | None) -> bool:
        """Whether K/V are cheaper through the merged (2d, d) map up @ down than down then up. Merging costs
        2d·r·d once per call, or once in all for inference (tokens=None), then 2d·d per frame against 3·d·r."""
        d, r = self.d_model, self.latent_dim
        if tokens is None:
            return 2 * d < 3 * r
        return tokens * 2 * d * d + 2 * d * r * d < tokens * 3 * d * r

    def kv_input_projection(self, tokens: int | None):
        if self.merges(tokens):
            return self.kv_up.weight @ self.kv_down.weight, self.kv_up.bias, self._split_kv
        return None  # a narrow latent: stacking the down projection with Q measured slower (H200, r = d/4)

    def _split_kv(self, kv: Tensor):
        k, v = kv.chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def keys_values(self, x: Tensor, qk_in: Tensor, cache: Cache | None, use_cache: bool):
        """Without a cache: rotary-on-inputs (K reads rotated inputs, V plain ones) or a narrow latent."""
        if self.merges(x.shape[0] * x.shape[1]):
            w, b, _ = self.kv_input_projection(x.shape[0] * x.shape[1])
            d = self.d_model
            k = F.linear(qk_in, w[:d], None if b is None else b[:d])
            v = F.linear(x, w[d:], None if b is None else b[d:])
            return self.split_heads(k), self.split_heads(v), None
        latent_v = self.kv_down(x)
        latent_k = self.kv_down(qk_in) if self.position == "rotary_input" else latent_v
        k, v = self._up(latent_k, latent_v)
        return k, v, None

    def _latents(self, x: Tensor, qk_in: Tensor, cache: Cache | None) -> Cache:
        if self.position == "rotary_input":
            return append(cache, latent_k=self.kv_down(qk_in), latent_v=self.kv_down(x))
        return append(cache, latent=self.kv_down(x))

    def _should_absorb(self, chunk: int, frames: int) -> bool:
        if self.absorb is not None:
            return self.absorb
        h, hd, r, d = self.num_heads, self.head_dim, self.latent_dim, self.d_model
        up_projected = frames * r * 2 * d + 2 * h * chunk * frames * hd
        absorbed = 2 * chunk * h * hd * r + 2 * h * chunk * frames * r
        return absorbed < up_projected

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        causal: bool = False,
        memory: Tensor | Cache | None = None,
    ) -> tuple[Tensor, Cache | None]:
        if memory is None and cache is None and not use_cache:
            return super().forward(x, key_padding_mask, pos, causal=causal)
        self.check_decoder_use(causal, memory)
        if memory is not None:
            return self.cross_attention(x, memory, key_padding_mask, use_cache)
        self.check_cache(cache, use_cache)
        qk_in = self.query_input(x, pos)
        new = self._latents(x, qk_in, cache)
        mask = key_padding_to_sdpa(key_padding_mask, None)
        if causal:
            mask = causal_keep(mask, x.shape[1], next(iter(new.values())).shape[1], x.device)
        return self._attend_latents(self.split_heads(self.q_proj(qk_in)), new, mask), new

    def cross_attention(self, x: Tensor, memory: Tensor | Cache, key_padding_mask: Tensor | None, use_cache: bool):
        """The cache is the memory's latent only (r values per frame), built once and reused."""
        latents = memory if isinstance(memory, dict) else {"latent": self.kv_down(memory)}
        out = self._attend_latents(self.split_heads(self.q_proj(x)), latents,
                                   key_padding_to_sdpa(key_padding_mask, None))
        return out, latents if use_cache else None

    def _attend_latents(self, q: Tensor, latents: Cache, mask: Tensor | None) -> Tensor:
        """Queries against cached latents: up-projected to K/V, or attended in latent space (absorbed), whichever
        needs fewer FLOPs."""
        latent_k = latents.get("latent_k", latents.get("latent"))
        latent_v = latents.get("latent_v", latents.get("latent"))
        if not self._should_absorb(q.shape[-2], latent_k.shape[1]):
            k, v = self._up(latent_k, latent_v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            return self.o_proj(self.merge_heads(out))
        return self._absorbed(q, latent_k, latent_v, mask)

    def _absorbed(self, q: Tensor, latent_k: Tensor, latent_v: Tensor, mask: Tensor | None) -> Tensor:
        """Attend in latent space: q·(U_k c) = (U_k^T q)·c; the K bias adds a per-query constant that softmax
        ignores, and since weights sum to one the V bias passes straight through."""
        h, hd, r, d = self.num_heads, self.head_dim, self.latent_dim, self.d_model
        w_k = self.kv_up.weight[:d].view(h, hd, r)
        w_v = self.kv_up.weight[d:].view(h, hd, r)
        b, _, t, _ = q.shape
        # heads folded into the query axis: one bmm against the shared latent, never an expanded copy of it
        q_latent = torch.einsum("bhtd,hdr->bhtr", q, w_k).reshape(b, h * t, r)
        scores = torch.bmm(q_latent, latent_k.transpose(1, 2)) * self.scale  # (B, H*T, S)
        if mask is not None:
            scores = scores.view(b, h, t, -1).masked_fill(~mask, float("-inf")).view(b, h * t, -1)
        weights = scores.float().softmax(-1).to(q.dtype)
        out_latent = torch.bmm(weights, latent_v).view(b, h, t, r)
        out = torch.einsum("bhtr,hdr->bhtd", out_latent, w_v)
        if self.kv_up.bias is not None:
            out = out + self.kv_up.bias[d:].view(1, h, 1, hd)
        return self.o_proj(self.merge_heads(out))


def _or(t: Tensor | None, default: Tensor) -> Tensor:
    return default if t is None else t
