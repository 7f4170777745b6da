"""Whisper (transformers' `WhisperForConditionalGeneration`): three kinds of attention site, one decoder forward.

Where attention lives (transformers 5.17), and who calls it:
  encoder self-attention   model.model.encoder.layers[i].self_attn     HF's encoder layer calls it; a patched one
                           is an `HFAttention` (same call as wav2vec2's: hidden_states, attention_mask=None)
  decoder self-attention   model.model.decoder.layers[i].self_attn     our decoder forward (`decode`) calls it
  decoder cross-attention  model.model.decoder.layers[i].encoder_attn  our decoder forward calls it
The decoder runs here, not in HF's forward, so that every decoder site keeps its variant's own cache (K/V, grouped
K/V, a latent, a state); at load its sites become MHA variants of the same weights (exactly the original: tested
against HF's own forward), and converting replaces them. `decode` runs each layer's sites through the cache it is
given: `DecoderCache` here (per-layer caches grown by concatenation), or a preallocated one
(generation/static_decode.py) that answers the same calls. The decoding loop itself is asr_attention/generation.

Whisper's quirks, handled here and nowhere else: k_proj has no bias (the canonical K bias is None); HF multiplies
q by head_dim**-0.5 before attention (the canonical score scale, the same product); positions are absolute and
added before the layers (canonical position "none").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import WhisperForConditionalGeneration
from transformers.models.whisper.modeling_whisper import WhisperAttention

from asr_attention.attention import AttentionVariant, Cache, CanonicalMHA, cache_nbytes
from asr_attention.attention.mha import MultiHeadAttention

from .. import sites
from ..base import Backbone
from ..hf_attention import HFAttention
from .mel import HOP, SAMPLE_RATE, LogMel
from .tokens import WhisperTokens


class DecoderSelfAttention(nn.Module):
    """A variant as causal decoder self-attention: over a whole prefix (teacher forcing) or, with a cache, one
    new token at a time attending to the cached ones and itself.

    padding (B, T), True = a padded teacher-forcing position (after a row's text): not passed to the variant (under
    causality no real token sees a later padded one), but read by those who record the site's rows (calibration,
    fidelity, distillation: `Whisper.site_padding`)."""

    kind = "decoder_self"

    def __init__(self, variant: AttentionVariant):
        super().__init__()
        self.variant = variant

    def forward(self, x: Tensor, cache: Cache | None = None, use_cache: bool = False, *,
                padding: Tensor | None = None):
        return self.variant(**self.inputs(x), cache=cache, use_cache=use_cache)

    @staticmethod
    def inputs(x: Tensor, *args, **kwargs) -> dict:
        """The variant-call inputs of one call (without the cache)."""
        return {"x": x, "causal": True}


class CrossAttention(nn.Module):
    """A variant as cross-attention: queries from the decoder, K/V from `memory` (the encoder output). With
    use_cache the first call returns the cache built from memory; later calls pass it back and no memory.
    padding: the padded query rows, as DecoderSelfAttention's (the variant never reads it)."""

    kind = "cross"

    def __init__(self, variant: AttentionVariant):
        super().__init__()
        self.variant = variant

    def forward(self, x: Tensor, memory: Tensor | None = None, cache: Cache | None = None, use_cache: bool = False,
                *, padding: Tensor | None = None):
        return self.variant(**self.inputs(x, memory if cache is None else None), cache=cache, use_cache=use_cache)

    @staticmethod
    def inputs(x: Tensor, memory: Tensor | None = None, *args, **kwargs) -> dict:
        return {"x": x, "memory": memory}


@dataclass
class LayerCache:
    """One decoder layer's caches: self-attention's grows a token per step, cross-attention's is built once."""

    self_attn: Cache | None = None
    cross: Cache | None = None


def cross_per_utterance(site: nn.Module, x: Tensor, memory: Tensor | None, cache: Cache | None,
                        beams: int) -> tuple[Tensor, Cache]:
    """A cross-attention call for `beams` consecutive rows per utterance against one memory (or cache) per
    utterance: the beams' queries are folded into the query axis, (B*K, T, d) -> (B, K*T, d), so the cross cache is
    built and kept once per utterance, never copied per beam. Cross-attention puts no mask between queries: the
    same as K separate calls."""
    rows, t, d = x.shape
    out, cache = site(x.reshape(rows // beams, beams * t, d), memory, cache, True)
    return out.reshape(rows, t, d), cache


@dataclass
class DecoderCache:
    """Every decoder layer's caches, grown by concatenation, and the number of tokens they cover (the next token's
    position). beams: rows per utterance, which share the utterance's cross caches (`cross_per_utterance`).

    What `Whisper.decode` asks of a cache (a preallocated one, generation/static_decode.py, answers the same):
    positions(n) indexes the position embeddings of the next n tokens, self_attention / cross_attention run a
    layer's site against its cache, advance(n) counts the tokens fed."""

    layers: list[LayerCache]
    tokens: int = 0
    beams: int = 1

    def positions(self, n: int) -> slice:
        return slice(self.tokens, self.tokens + n)

    def self_attention(self, i: int, site: nn.Module, x: Tensor) -> Tensor:
        layer = self.layers[i]
        out, layer.self_attn = site(x, layer.self_attn, True)
        return out

    def cross_attention(self, i: int, site: nn.Module, x: Tensor, memory: Tensor | None) -> Tensor:
        """memory builds the layer's cross cache while it is empty (the first step) and is ignored after."""
        layer = self.layers[i]
        out, layer.cross = cross_per_utterance(site, x, memory if layer.cross is None else None, layer.cross,
                                               self.beams)
        return out

    def advance(self, n: int) -> None:
        self.tokens += n

    def clear(self) -> None:
        """Empty, for a new batch of utterances."""
        self.layers = [LayerCache() for _ in self.layers]
        self.tokens = 0

    def reorder(self, rows: Tensor) -> None:
        """Self caches follow their rows (beams that survive a step); the cross caches are per utterance."""
        for layer in self.layers:
            layer.self_attn = _rows(layer.self_attn, rows)

    def restart(self, utterances: Tensor) -> "DecoderCache":
        """Some utterances decoded again from the prompt, one row each: their cross caches kept (built once per
        utterance), self caches empty."""
        crosses = cross_rows([c.cross for c in self.layers], utterances)
        return DecoderCache([LayerCache(None, cross) for cross in crosses])

    @property
    def utterances(self) -> int:
        return next(iter(self.layers[0].cross.values())).shape[0]

    def nbytes(self) -> dict[str, int]:
        """Bytes the decoder self and cross caches really hold (all layers)."""
        return {"decoder_self": cache_nbytes(*(c.self_attn for c in self.layers)),
                "cross": cache_nbytes(*(c.cross for c in self.layers))}


def _rows(cache: Cache | None, rows: Tensor, picked: dict | None = None) -> Cache | None:
    """The same cache for some batch rows (every variant's cache tensors are batch-first). picked: the selections
    made so far, by tensor, so that a tensor several layers share (cross_latent=memory) stays one tensor."""
    if cache is None:
        return None
    picked = {} if picked is None else picked
    out = {}
    for k, v in cache.items():
        if id(v) not in picked:
            picked[id(v)] = (v, v.index_select(0, rows))  # v kept alive: its id stays its own
        out[k] = picked[id(v)][1]
    return Cache(out, from_memory=cache.from_memory)


def cross_rows(caches: Sequence[Cache | None], rows: Tensor) -> list[Cache | None]:
    """Every layer's cross cache for some utterances, a tensor shared by layers selected once and still shared."""
    picked: dict = {}
    return [_rows(c, rows, picked) for c in caches]


def canonical_of(module: nn.Module) -> CanonicalMHA:
    """HF WhisperAttention, or a site already holding an MHA variant -> its canonical description."""
    if isinstance(module, WhisperAttention):
        q, k, v, o = module.q_proj, module.k_proj, module.v_proj, module.out_proj
        return CanonicalMHA(
            q.weight.detach(), k.weight.detach(), v.weight.detach(), o.weight.detach(),
            _bias(q), _bias(k), _bias(v), _bias(o),  # k_proj has no bias in Whisper
            num_heads=module.num_heads, scale=module.scaling, position="none",  # HF scales q by this factor
            dropout=module.dropout,
        )
    variant = getattr(module, "variant", None)
    if type(variant) is not MultiHeadAttention:
        raise ValueError(f"cannot convert {type(module).__name__} holding {type(variant).__name__}: only the "
                         "original attention (an MHA variant of its weights) converts; load the model again")
    q, k, v, o = variant.q_proj, variant.k_proj, variant.v_proj, variant.o_proj
    return CanonicalMHA(
        q.weight.detach(), k.weight.detach(), v.weight.detach(), o.weight.detach(),
        _bias(q), _bias(k), _bias(v), _bias(o), num_heads=variant.num_heads, scale=variant.scale, position="none",
        dropout=variant.dropout,
    )


def _bias(linear: nn.Linear) -> Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


class Whisper(Backbone):
    """head: "seq2seq" (Whisper's decoder: `encode` then `decode`) or "ctc" (a linear CTC head on the encoder,
    `forward`). tokens: the special token ids and suppress lists of the checkpoint."""

    family = "whisper"
    frame_ms = 20.0  # encoder frames: 1500 per 30-s window

    def __init__(self, model: WhisperForConditionalGeneration, tokens: WhisperTokens, head: str = "seq2seq",
                 ctc_vocab_size: int | None = None):
        super().__init__()
        if head not in ("seq2seq", "ctc"):
            raise ValueError(f"model.head={head!r} is not one of ['seq2seq', 'ctc']")
        self.model, self.tokens, self.head = model, tokens, head
        self.mel = LogMel(model.config.num_mel_bins, 2 * model.config.max_source_positions)
        self.site_kinds = sites.site_kinds(None, self.family, head)
        self.ctc_head = None
        if head == "ctc":  # the encoder alone: the decoder and its output layer (~3/4 of tiny.en) are dropped
            model.model.decoder, model.proj_out = None, None
            self.ctc_head, self.fresh_head = nn.Linear(model.config.d_model, ctc_vocab_size or 32), True
        for layer in self.decoder_layers:  # the decoder's sites run through variants from the start
            layer.self_attn = DecoderSelfAttention(MultiHeadAttention(canonical_of(layer.self_attn)))
            layer.encoder_attn = CrossAttention(MultiHeadAttention(canonical_of(layer.encoder_attn)))

    @property
    def encoder(self) -> nn.Module:
        return self.model.model.encoder

    @property
    def max_audio_seconds(self) -> float:
        """The window the encoder reads: 30 s for the released models (2 x max_source_positions mel frames)."""
        return self.mel.frames * HOP / SAMPLE_RATE

    @property
    def decoder(self) -> nn.Module:
        if self.model.model.decoder is None:
            raise ValueError("this Whisper has a CTC head (model.head=ctc) and no decoder: use forward()")
        return self.model.model.decoder

    @property
    def decoder_layers(self) -> list[nn.Module]:
        """The decoder's layers; none with a CTC head."""
        return [] if self.model.model.decoder is None else list(self.decoder.layers)

    @property
    def vocab_size(self) -> int:
        return self.ctc_head.out_features if self.ctc_head is not None else self.model.config.vocab_size

    def head_parameters(self) -> list[nn.Parameter]:
        return [] if self.ctc_head is None else list(self.ctc_head.parameters())

    def reset_head(self, vocab_size: int) -> None:
        if self.head != "ctc":
            raise ValueError("model.head=seq2seq keeps Whisper's own vocabulary; a new CTC head needs model.head=ctc")
        self.ctc_head = nn.Linear(self.model.config.d_model, vocab_size)

    # ---- sites ---------------------------------------------------------------------------------------------
    def select_sites(self, kinds) -> None:
        """Unknown kinds are an error here (sites.site_kinds, which resolves null and 'all', skips them)."""
        named = [] if kinds is None or kinds == "all" or list(kinds) == ["all"] else list(kinds)
        allowed = sites.model_site_kinds(self.family, self.head)
        if any(k not in allowed for k in named):
            raise ValueError(f"attention.sites={named} is not allowed: expected a non-empty list of "
                             f"{list(allowed)} (model.head={self.head}), or 'all'")
        self.site_kinds = sites.site_kinds(kinds, self.family, self.head)

    def attention_sites(self) -> Iterator[tuple[nn.Module, str, nn.Module]]:
        """The selected kinds, in the order encoder layers, then per decoder layer self before cross."""
        if "encoder" in self.site_kinds:
            for layer in self.encoder.layers:
                yield layer, "self_attn", layer.self_attn
        for layer in self.decoder_layers:
            if "decoder_self" in self.site_kinds:
                yield layer, "self_attn", layer.self_attn
            if "cross" in self.site_kinds:
                yield layer, "encoder_attn", layer.encoder_attn

    def to_canonical(self, original: nn.Module) -> CanonicalMHA:
        return canonical_of(original)

    def site_kind(self, parent: nn.Module, name: str) -> str:
        if parent in self.encoder.layers:
            return "encoder"
        return "decoder_self" if name == "self_attn" else "cross"

    def wrap_site(self, parent: nn.Module, name: str, variant: AttentionVariant) -> nn.Module:
        wrapper = {"encoder": HFAttention, "decoder_self": DecoderSelfAttention, "cross": CrossAttention}
        return wrapper[self.site_kind(parent, name)](variant)

    def variant_inputs(self, args: tuple, kwargs: dict) -> dict:
        """An encoder self-attention call (HF's layer calls it as wav2vec2's do)."""
        return HFAttention.variant_inputs(*args, **kwargs)

    def site_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> dict:
        if isinstance(module, (DecoderSelfAttention, CrossAttention)):
            return module.inputs(*args, **kwargs)
        return self.variant_inputs(args, kwargs)

    def site_padding(self, module: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
        """Decoder sites: the padded teacher-forcing positions `decode` was given (None while generating)."""
        if isinstance(module, (DecoderSelfAttention, CrossAttention)):
            return kwargs.get("padding")
        return super().site_padding(module, args, kwargs)

    # ---- encoder -------------------------------------------------------------------------------------------
    def encode(self, waves: Tensor, wave_lengths: Tensor) -> Tensor:
        """waves (B, S) 16 kHz -> encoder output (B, 1500, d) over the 30-s window (what Whisper was trained on).
        In training, SpecAugment where the config asks for it (`masks_input`)."""
        features = self.mel(waves, wave_lengths).to(self.model.dtype)
        if self.training and self.masks_input:
            features = self.spec_augment(features, wave_lengths)
        return self.encoder(features).last_hidden_state

    @property
    def masks_input(self) -> bool:
        """Whether training masks the log-mel input (SpecAugment: WhisperConfig's apply_spec_augment with a
        mask_time_prob or mask_feature_prob above 0; set through model.arch)."""
        c = self.model.config
        return bool(c.apply_spec_augment) and (c.mask_time_prob > 0 or c.mask_feature_prob > 0)

    def spec_augment(self, features: Tensor, wave_lengths: Tensor) -> Tensor:
        """transformers' own SpecAugment for Whisper (time spans and mel bands set to 0), with the time spans
        placed within each utterance's audio rather than anywhere in its 30-s window of padding."""
        frames = torch.div(wave_lengths + HOP - 1, HOP, rounding_mode="floor").clamp(1, features.shape[-1])
        audio = torch.arange(features.shape[-1], device=features.device) < frames[:, None].to(features.device)
        return self.model.model._mask_input_features(features.clone(), attention_mask=audio.long())

    def frames(self, wave_lengths: Tensor) -> Tensor:
        """Encoder frames that hold audio: 2 conv strides of 160-sample hops = 320 samples each."""
        frames = torch.div(wave_lengths + 319, 320, rounding_mode="floor")
        return frames.clamp(1, self.model.config.max_source_positions)

    def forward(self, waves: Tensor, wave_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The CTC head: log_probs (B, T, V) over the frames that hold audio, and their number."""
        if self.ctc_head is None:
            raise ValueError("this Whisper has no CTC head (model.head=seq2seq): use encode() and decode()")
        lengths = self.frames(wave_lengths)
        memory = self.encode(waves, wave_lengths)[:, : int(lengths.max())]
        return self.ctc_head(memory).float().log_softmax(-1), lengths

    # ---- decoder -------------------------------------------------------------------------------------------
    def decode(self, tokens: Tensor, memory: Tensor | None, cache: DecoderCache | None = None,
               padding: Tensor | None = None) -> Tensor:
        """Logits (B, T, V) for `tokens` (B, T) given the encoder output.

        cache None: teacher forcing over the whole prefix, nothing kept. A cache (`new_cache()` to start, or a
        preallocated one): `tokens` continue the cached prefix and the cache is updated in place. memory is read
        while the cross caches are empty (the first step) and ignored after. padding (B, T): teacher forcing's
        padded positions (`WhisperTokens.padding`), handed to the decoder sites for whoever records them; the
        logits do not depend on it."""
        dec = self.decoder
        positions = slice(0, tokens.shape[1]) if cache is None else cache.positions(tokens.shape[1])
        x = dec.embed_tokens(tokens) + dec.embed_positions.weight[positions]
        x = F.dropout(x, dec.dropout, self.training)
        for i, layer in enumerate(dec.layers):
            x = self._layer(layer, i, x, memory, cache, padding)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.model.proj_out(dec.layer_norm(x))

    def _layer(self, layer: nn.Module, i: int, x: Tensor, memory: Tensor | None, cache: DecoderCache | None,
               padding: Tensor | None = None) -> Tensor:
        """WhisperDecoderLayer's computation (pre-LayerNorm residual blocks), through layer i's caches if any."""
        marked = {} if padding is None else {"padding": padding}  # teacher forcing only: decoding marks none
        h = layer.self_attn_layer_norm(x)
        h = layer.self_attn(h, **marked)[0] if cache is None else cache.self_attention(i, layer.self_attn, h)
        x = x + F.dropout(h, layer.dropout, self.training)
        h = layer.encoder_attn_layer_norm(x)
        h = (layer.encoder_attn(h, memory, **marked)[0] if cache is None
             else cache.cross_attention(i, layer.encoder_attn, h, memory))
        x = x + F.dropout(h, layer.dropout, self.training)
        h = layer.fc2(F.dropout(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))),
                                layer.activation_dropout, self.training))
        return x + F.dropout(h, layer.dropout, self.training)

    def new_cache(self, beams: int = 1) -> DecoderCache:
        return DecoderCache([LayerCache() for _ in self.decoder.layers], beams=beams)

    def cache_per_site(self, dtype: torch.dtype = torch.float32) -> dict[str, int]:
        """Bytes the decoder caches hold (batch 1, all layers): self-attention per token, cross-attention per
        second of audio (50 frames), beside the same sites as MHA. A linear variant's figure is its fixed state.
        A CTC head has no decoder: no figures."""
        if self.head == "ctc":
            return {}
        d, frames = self.model.config.d_model, round(1000 / self.frame_ms)
        layers = self.decoder.layers
        mha = 2 * d * dtype.itemsize * len(layers)  # K and V per token / frame
        return {
            "decoder_self_per_token": sum(l.self_attn.variant.cache_bytes(1, 1, dtype) for l in layers),
            "mha_decoder_self_per_token": mha,
            "cross_per_second": sum(l.encoder_attn.variant.cache_bytes(frames, 1, dtype) for l in layers),
            "mha_cross_per_second": mha * frames,
        }

    # ---- calibration and fidelity --------------------------------------------------------------------------
    def calibration_pass(self, waves: Tensor, wave_lengths: Tensor, targets: Tensor | None = None) -> None:
        """One forward that calls every selected site: the encoder, and the decoder teacher-forced on targets (its
        padded positions marked: `site_padding`)."""
        memory = self.encode(waves, wave_lengths)
        if self.site_kinds != ("encoder",):
            if targets is None:
                raise ValueError("calibrating Whisper's decoder sites needs the batch's targets")
            self.decode(self.tokens.teacher_forcing(targets)[0], memory, padding=self.tokens.padding(targets))
