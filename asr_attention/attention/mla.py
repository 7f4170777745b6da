"""Multi-head latent attention (DeepSeek-V2 style) converted from MHA: K and V share one low-rank latent.

Conversion: joint SVD of the stacked [W_k; W_v] (2d, d) = U S Vh, kept to rank r:
down = sqrt(S_r) Vh_r (d -> r), up = U_r sqrt(S_r) (r -> 2d), the K/V biases on the up side. Exact for r >= d
(the stack has rank <= d), the best rank-r approximation of the weights below. The activation-aware option
minimises the error of the projected *activations* X W^T on a calibration batch instead (whiten by X^T X first).

The cache keeps only the latent (r values per frame; two latents under rotary-on-inputs, where K reads rotated
inputs and V plain ones). `latent_from_input`: no down projection, the latent is the input itself (r = d, up =
[W_k; W_v]: exact). At cross-attention that input is the encoder output, the same for every layer, so the layers'
caches are one tensor (attention.cross_latent=memory, backbones/patch.py): the first holds it (`owns_cache`), the
others count nothing. Against a cache, attention runs in latent space where that costs fewer FLOPs, which
is always so for a decode step: the up-projections are folded into the query and the output (`absorbed`), so a
step reads the latent and never re-expands K or V.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Cache, SoftmaxAttention
from .canonical import CanonicalMHA
from .kernels import runs_on
from .kernels.latent_decode import latent_decode, supported
from .masks import causal_keep


class SecondMoment:
    """X^T X and the row count of a layer's calibration inputs, added batch by batch in float64: all that
    activation-aware conversion reads of them, in d x d memory however many frames are seen (concatenating the
    rows took 8-10 GB of GPU memory per Whisper base run at 256 utterances)."""

    def __init__(self) -> None:
        self.sum: Tensor | None = None
        self.count = 0

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        self.sum = x.T @ x if self.sum is None else self.sum + x.T @ x
        self.count += x.shape[0]

    def rows(self) -> Tensor:
        """d rows R (float64) with R^T R / d = X^T X / N: calibration data that `whitening` reads as it reads X."""
        evals, evecs = torch.linalg.eigh(self.sum / self.count)
        return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T * self.sum.shape[0] ** 0.5


def whitening(calibration: Tensor) -> tuple[Tensor, Tensor]:
    """C^1/2 and C^-1/2 (float64) of the calibration inputs' second moment C = X^T X / N, X (..., d); eigenvalues
    below 1e-10 of the largest are clamped there, as C may be singular."""
    x = calibration.reshape(-1, calibration.shape[-1]).double()
    evals, evecs = torch.linalg.eigh(x.T @ x / x.shape[0])
    evals = evals.clamp_min(evals.max() * 1e-10)
    return evecs @ torch.diag(evals.sqrt()) @ evecs.T, evecs @ torch.diag(evals.rsqrt()) @ evecs.T


def _factor(weight: Tensor, rank: int, whiten: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """weight (m, n) ~ up (m, rank) @ down (rank, n); zero-padded when rank exceeds weight's rank. whiten: the
    calibration's (C^1/2, C^-1/2) for the activation-aware factors."""
    w = weight.double()
    if whiten is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        unwhiten = None
    else:
        # minimise ||(W - UD) C^1/2||: factor W C^1/2, then undo the whitening on the down side
        sqrt_c, unwhiten = whiten
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
    step_projections = ("q_proj", "kv_down")

    def __init__(self, mha: CanonicalMHA, latent_dim: int, calibration: Tensor | None = None,
                 latent_from_input: bool = False, owns_cache: bool = True):
        d = mha.d_model
        if not 1 <= latent_dim <= 2 * d:
            raise ValueError(f"attention.latent_dim={latent_dim} must be in [1, {2 * d}] (2 * d_model)")
        super().__init__(mha)
        if latent_from_input and self.position != "none":
            raise ValueError(f"mla: a latent that is the input itself needs position 'none' (cross-attention), "
                             f"this layer has {self.position!r}")
        self.kv_heads = self.num_heads
        self.latent_dim = d if latent_from_input else latent_dim
        self.owns_cache = owns_cache
        stacked = torch.cat((mha.k_weight, mha.v_weight))
        if latent_from_input:
            self.kv_down, up = None, stacked
            self.step_projections = ("q_proj",)
        else:
            up, down = _factor(stacked, latent_dim, None if calibration is None else whitening(calibration))
            self.kv_down = nn.Linear(d, latent_dim, bias=False)
            self.kv_down.weight.data.copy_(down)
        self.kv_up = nn.Linear(self.latent_dim, 2 * d, bias=mha.k_bias is not None or mha.v_bias is not None)
        self.kv_up.weight.data.copy_(up)
        if self.kv_up.bias is not None:
            zeros = mha.v_weight.new_zeros(d)
            self.kv_up.bias.data.copy_(torch.cat((_or(mha.k_bias, zeros), _or(mha.v_bias, zeros))))
        self.stack_step_projection()

    @property
    def latents_per_frame(self) -> int:
        return 2 if self.position == "rotary_input" else 1

    def cache_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        # a latent another layer holds (cross_latent=memory) is counted there, once
        return self.read_bytes(frames, batch, dtype) if self.owns_cache else 0

    def read_bytes(self, frames: int, batch: int, dtype: torch.dtype) -> int:
        return self.latents_per_frame * batch * frames * self.latent_dim * dtype.itemsize  # shared or not

    def compress(self, k_input: Tensor, v_input: Tensor) -> dict[str, Tensor]:
        if self.kv_down is None:  # the input itself, not a copy: layers given the same memory share it
            return {"latent": v_input}
        if self.position == "rotary_input":  # K reads rotated inputs, V plain ones: two latents
            return {"latent_k": self.kv_down(k_input), "latent_v": self.kv_down(v_input)}
        return {"latent": self.kv_down(v_input)}

    @staticmethod
    def latents(kept: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(B, S, r) latents K and V are made from (one tensor twice, but under rotary)."""
        if "latent" in kept:
            return kept["latent"], kept["latent"]
        return kept["latent_k"], kept["latent_v"]

    def expand(self, kept: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        latent_k, latent_v = self.latents(kept)
        if latent_k is latent_v:  # one shared latent: a single (r -> 2d) GEMM, then split
            k, v = self.kv_up(latent_k).chunk(2, dim=-1)
        else:
            d, w, b = self.d_model, self.kv_up.weight, self.kv_up.bias
            k = F.linear(latent_k, w[:d], None if b is None else b[:d])
            v = F.linear(latent_v, w[d:], None if b is None else b[d:])
        return self.split_heads(k), self.split_heads(v)

    def attend_kept(self, q: Tensor, kept: Cache, key_padding_mask: Tensor | None, pos: Tensor | None,
                    causal: bool) -> Tensor:
        latent_k, latent_v = self.latents(kept)
        if not self._should_absorb(q.shape[-2], latent_k.shape[1]):
            return super().attend_kept(q, kept, key_padding_mask, pos, causal)
        q, mask, is_causal = self.score_terms(q, key_padding_mask, pos, causal, latent_k.shape[1])
        return self.absorbed(q, latent_k, latent_v, mask, is_causal)

    def _should_absorb(self, chunk: int, frames: int) -> bool:
        """Whether attending in latent space costs fewer FLOPs than up-projecting the `frames` latents for a
        `chunk` of queries. A decode step (chunk 1) against two or more frames always absorbs."""
        h, hd, r, d = self.num_heads, self.head_dim, self.latent_dim, self.d_model
        up_projected = frames * r * 2 * d + 2 * h * chunk * frames * hd
        absorbed = 2 * chunk * h * hd * r + 2 * h * chunk * frames * r
        return absorbed < up_projected

    def absorbed(self, q: Tensor, latent_k: Tensor, latent_v: Tensor, mask: Tensor | None,
                 is_causal: bool) -> Tensor:
        """Attention in latent space: q.(U_k c) = (U_k^T q).c and sum_j a_j U_v c_j = U_v sum_j a_j c_j. The K
        bias adds a per-query constant that softmax ignores; the V bias passes through, as the weights sum to one.
        Heads are folded into the query axis: one SDPA head of width r against the latent, never a copy of it per
        head. q: (B, H, T, hd) as the content scores read it; mask, is_causal: SDPA's, as `score_terms` gives."""
        h, hd, r, d = self.num_heads, self.head_dim, self.latent_dim, self.d_model
        b, _, t, _ = q.shape
        s = latent_k.shape[1]
        q_latent = torch.einsum("bhtd,hdr->bhtr", q, self.kv_up.weight[:d].view(h, hd, r)).reshape(b, 1, h * t, r)
        if is_causal:
            mask = causal_keep(t, s, q.device)
        if t == 1 and self._decode_kernel_takes(q_latent, latent_k, latent_v, mask):
            keep = None if mask is None else mask.reshape(mask.shape[0], mask.shape[-1])
            out_latent = latent_decode(q_latent.view(b, h, r), latent_k, self.scale, keep).view(b, 1, h, r)
        elif h * t <= FEW_QUERIES:
            out_latent = _few_queries_attention(q_latent, latent_k, latent_v, mask, h, self.scale, self.dropout_p)
        else:
            if mask is not None:  # SDPA takes the heads-folded layout only
                mask = mask.expand(b, h, t, s).reshape(b, 1, h * t, s)
            out_latent = F.scaled_dot_product_attention(q_latent, latent_k[:, None], latent_v[:, None],
                                                        attn_mask=mask, dropout_p=self.dropout_p, scale=self.scale)
        out = torch.einsum("bhtr,hdr->bhtd", out_latent.view(b, h, t, r), self.kv_up.weight[d:].view(h, hd, r))
        if self.kv_up.bias is not None:
            out = out + self.kv_up.bias[d:].view(1, h, 1, hd)
        return self.o_proj(self.merge_heads(out))

    def _decode_kernel_takes(self, q: Tensor, latent_k: Tensor, latent_v: Tensor, mask: Tensor | None) -> bool:
        """The fused decode kernel (kernels/latent_decode.py) takes one new token per row where keys and values are
        one latent, no dropout, a keep mask per (utterance, frame) if any, and an H x r it holds in registers."""
        per_frame = mask is None or (mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1:3] == (1, 1))
        # not inside torch.compile: inductor fails to build the kernel (it views the bool mask as uint8 and passes
        # the scale as fp64; H100, eabd522), so compiled steps keep the PyTorch path it compiles itself
        return (latent_k is latent_v and per_frame and self.dropout_p == 0 and not torch.compiler.is_compiling()
                and runs_on(q, latent_k) and supported(self.num_heads, latent_k.shape[-1]))

    def decode_buffers(self, batch: int, slots: int) -> dict[str, Tensor]:
        if self.kv_down is None:
            raise NotImplementedError("mla: a latent that is the input itself is for cross-attention, not a decoder "
                                      "self-attention cache")
        if self.position == "rotary_input":
            raise NotImplementedError("mla: no preallocated decoder cache under rotary positions (two latents)")
        return {"latent": self.kv_down.weight.new_zeros(batch, slots, self.latent_dim)}

    def decode_step(self, x: Tensor, buffers: dict[str, Tensor], position: Tensor, keep: Tensor) -> Tensor:
        (weight, bias), sizes = self.step_projection
        q, latent = F.linear(x, weight, bias).split(sizes, dim=-1)
        buffers["latent"].index_copy_(1, position, latent)
        return self.absorbed(self.split_heads(q), buffers["latent"], buffers["latent"], keep, False)

    # -- fast path: K/V straight from x through the merged map, where that is cheaper ---------------------------
    def kv_projection(self, tokens: int) -> tuple[Tensor, Tensor | None] | None:
        """The merged (2d, d) map up @ down, where it costs fewer FLOPs than down then up: merging costs 2d.r.d
        once per call, then 2d.d per frame against 3.d.r. A narrow latent keeps the two narrow GEMMs."""
        d, r = self.d_model, self.latent_dim
        if self.kv_down is None:
            return self.kv_up.weight, self.kv_up.bias
        if tokens * 2 * d * d + 2 * d * r * d < tokens * 3 * d * r:
            return self.kv_up.weight @ self.kv_down.weight, self.kv_up.bias
        return None


# A decode step folds only its H heads into the query axis. SDPA's fused kernels are built for many queries and
# head widths <= 256 (the latent is wider: d/4 = 320 at large-v3); for a few queries two batched GEMMs and a
# softmax read the latent at HBM speed instead.
FEW_QUERIES = 64


def _few_queries_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, heads: int, scale: float,
                           dropout_p: float) -> Tensor:
    """SDPA's result for q (B, 1, H*T, r), heads folded into the query axis, against one head of k, v (B, S, r).
    mask: bool (True = attend) or additive, broadcastable to (B, H, T, S); it is applied to a (B, H, T, S) view
    of the scores, so it is never expanded to every head."""
    scores = torch.matmul(q, k.transpose(1, 2)[:, None]).float() * scale
    if mask is not None:
        b, _, queries, s = scores.shape
        by_head = scores.view(b, heads, queries // heads, s)
        by_head = by_head.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else by_head + mask
        scores = by_head.view(b, 1, queries, s)
    weights = F.dropout(scores.softmax(-1), dropout_p).to(v.dtype)
    return torch.matmul(weights, v[:, None])


def _or(t: Tensor | None, default: Tensor) -> Tensor:
    return default if t is None else t
