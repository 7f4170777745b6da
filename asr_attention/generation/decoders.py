"""The decoders the generation benchmark compares, behind one call: transformers' `generate` (static or dynamic
cache) and ours (the decoding loop, loop.py, greedy, over a Whisper backbone whose decoder sites run attention
variants, each keeping its own cache: growing, or preallocated with the step replayed as a CUDA graph).

Each takes an encoder output and a token count and emits exactly that many tokens per row: both suppress the same
tokens, <|endoftext|> and every special token after it, so no row stops early. Then each reports the bytes its
caches really hold and what they should hold."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from transformers import WhisperForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache
from transformers.modeling_outputs import BaseModelOutput

from asr_attention.backbones import patch_attention
from asr_attention.backbones.whisper.adapter import Whisper
from asr_attention.backbones.whisper.tokens import WhisperTokens

from .caches import GrowingCache
from .greedy import GreedyDecoder
from .loop import decode
from .static_decode import PreallocatedCache
from .step_bytes import mha_cache_bytes
from .whisper_sizes import EOT, NO_TIMESTAMPS, PROMPT, SOT


def prompt_ids(batch: int, device: torch.device) -> Tensor:
    return torch.tensor(PROMPT, device=device).expand(batch, -1)


def suppressed(vocab_size: int) -> list[int]:
    """<|endoftext|> and the special tokens after it: what our loop never emits when <|endoftext|> is in the
    suppress list."""
    return list(range(EOT, vocab_size))


class Decoder:
    """What the benchmark asks of a decoder besides the call: free the last call's caches (release), bytes it
    keeps between calls (held_bytes), and free everything (drop)."""

    cache = None

    def release(self) -> None:
        self.cache = None

    def held_bytes(self) -> int:
        """Bytes kept between calls (outside a call's peak)."""
        return 0

    def drop(self) -> None:
        self.release()


class HFGenerate(Decoder):
    """transformers' WhisperForConditionalGeneration.generate, greedy, sdpa. cache "static": a preallocated
    StaticCache of prompt + max_new_tokens (transformers then compiles the decode step: the first call at each
    batch size is slow, so time after a warm-up); "dynamic": grown by concatenation."""

    def __init__(self, model: WhisperForConditionalGeneration, cache: str, max_new_tokens: int):
        if cache not in ("static", "dynamic"):
            raise ValueError(f"cache={cache!r} is not one of ['static', 'dynamic']")
        self.model, self.kind, self.max_new_tokens = model, cache, max_new_tokens
        self.cache: EncoderDecoderCache | None = None

    @property
    def decoder(self) -> nn.Module:
        return self.model.model.decoder

    def _new_cache(self, frames: int) -> EncoderDecoderCache:
        config = self.model.config.get_text_config(decoder=True)
        if self.kind == "static":  # one length for every call, so the compiled step is reused
            return EncoderDecoderCache(StaticCache(config=config, max_cache_len=len(PROMPT) + self.max_new_tokens),
                                       StaticCache(config=config, max_cache_len=frames))
        return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))

    @torch.no_grad()
    def __call__(self, memory: Tensor, steps: int) -> Tensor:
        if steps > self.max_new_tokens:
            raise ValueError(f"steps={steps} exceeds max_new_tokens={self.max_new_tokens}")
        self.cache = None  # the previous call's cache is freed before the new one is allocated
        self.cache = self._new_cache(memory.shape[1])
        return self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            decoder_input_ids=prompt_ids(memory.shape[0], memory.device), past_key_values=self.cache,
            max_new_tokens=steps, suppress_tokens=suppressed(self.model.config.vocab_size), do_sample=False,
            num_beams=1,
        )

    def drop(self) -> None:
        """Also the compiled step and its CUDA-graph memory pools (transformers compiles with reduce-overhead)."""
        self.release()
        if self.kind == "static":
            self.model.__dict__.pop("_compiled_call", None)
            torch._dynamo.reset()

    def cache_nbytes(self) -> dict[str, int]:
        """Bytes of the K/V tensors the last call's caches hold (all layers)."""
        def total(cache):
            return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
                       if t is not None)
        return {"decoder_self": total(self.cache.self_attention_cache), "cross": total(self.cache.cross_attention_cache)}

    def cache_bytes(self, batch: int, tokens: int, frames: int, read: bool = False) -> dict[str, int]:
        """What the caches should hold after `tokens` tokens were fed (static: always its full length); a step
        reads all of it (`read` changes nothing)."""
        config = self.model.config
        if self.kind == "static":
            tokens = len(PROMPT) + self.max_new_tokens
        return mha_cache_bytes(config.d_model, config.decoder_layers, batch, tokens, frames, self.model.dtype.itemsize)


class OursGreedy(Decoder):
    """Our decoding loop (greedy, growing caches) on a copy of the model whose decoder sites are converted:
    attention None keeps MHA (the same weights), else `patch_attention` at `sites`."""

    def __init__(self, model: WhisperForConditionalGeneration, attention: Mapping | None,
                 sites: Sequence[str] = ("decoder_self", "cross")):
        tokens = WhisperTokens(eot=EOT, sot=SOT, no_timestamps=NO_TIMESTAMPS, suppress=[EOT])
        # built on the model's device (no detour through host memory at large-v3), then in its dtype: Whisper
        # makes its decoder sites' MHA variants in the default dtype
        with torch.device(model.device):
            self.backbone = Whisper(copy.deepcopy(model), tokens).to(model.dtype).eval()
            if attention is not None:
                patch_attention(self.backbone, {**attention, "sites": list(sites)})
        self.cache = None

    @property
    def model(self) -> nn.Module:
        return self.backbone

    @property
    def decoder(self) -> nn.Module:
        return self.backbone.decoder

    @torch.no_grad()
    def __call__(self, memory: Tensor, steps: int) -> Tensor:
        self.cache = None
        self.cache = GrowingCache(self.backbone)
        return self.greedy(memory, steps)

    def greedy(self, memory: Tensor, steps: int) -> Tensor:
        """Tokens (batch, steps) through self.cache."""
        candidates = decode(self.cache, memory, GreedyDecoder(EOT), self.backbone.tokens, steps)
        return torch.tensor([c.tokens for c in candidates])

    def cache_nbytes(self) -> dict[str, int]:
        return self.cache.nbytes()

    def cache_bytes(self, batch: int, tokens: int, frames: int, read: bool = False) -> dict[str, int]:
        """Each site's variant's own analytic figure (MHA K/V, grouped K/V, a latent, a state); read: what a step
        reads of them instead (cross layers sharing one latent each read it: attention.cross_latent=memory)."""
        dtype = next(self.backbone.parameters()).dtype
        out = {"decoder_self": 0, "cross": 0}
        for layer in self.decoder.layers:
            for kind, site, length in (("decoder_self", layer.self_attn, tokens), ("cross", layer.encoder_attn, frames)):
                out[kind] += (site.variant.read_bytes if read else site.variant.cache_bytes)(length, batch, dtype)
        return out


class OursStatic(OursGreedy):
    """Ours with every cache preallocated (`PreallocatedCache`) and, on CUDA, the decode step replayed as a CUDA
    graph, compiled first if `compile`; one per batch size, kept between calls (its buffers count in
    `held_bytes`)."""

    def __init__(self, model: WhisperForConditionalGeneration, attention: Mapping | None,
                 sites: Sequence[str] = ("decoder_self", "cross"), max_steps: int = 128, compile: bool = False):
        super().__init__(model, attention, sites)
        self.max_steps, self.compile = max_steps, compile
        self.graph = torch.cuda.is_available() and next(self.backbone.parameters()).is_cuda
        self.cache: PreallocatedCache | None = None

    @torch.no_grad()
    def __call__(self, memory: Tensor, steps: int) -> Tensor:
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"steps={steps}: this decoder holds 1..{self.max_steps} steps")
        if self.cache is None or self.cache.batch != memory.shape[0]:
            self.drop()  # the previous batch size's buffers, graph and compiled step go first
            self.cache = PreallocatedCache(self.backbone, memory.shape[0], len(PROMPT) + self.max_steps - 1,
                                           graph=self.graph, compile=self.compile)
        return self.greedy(memory, steps)

    def cache_nbytes(self) -> dict[str, int]:
        return self.cache.nbytes()

    def cache_bytes(self, batch: int, tokens: int, frames: int, read: bool = False) -> dict[str, int]:
        """The self slots are preallocated for max_steps, whatever the call decoded."""
        return super().cache_bytes(batch, len(PROMPT) + self.max_steps - 1, frames, read)

    def held_bytes(self) -> int:
        return 0 if self.cache is None else sum(self.cache.nbytes().values())

    def release(self) -> None:
        pass  # the buffers and the captured graph are reused by the next call at this batch size

    def drop(self) -> None:
        self.cache = None
        if self.compile:  # each batch size compiles its own step: past dynamo's recompile limit (8) it would fail
            torch._dynamo.reset()
