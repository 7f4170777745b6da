"""What a user of each side waits for, audio in memory -> text: the end-to-end benchmark's two pipelines.

Ours: the waves padded and moved to the device, `Whisper.encode` (log-mel on the device, the encoder), `transcribe`
(the decoding loop; on a GPU its fast path: pooled preallocated caches, the step replayed as a CUDA graph), the text
detokenised. transformers': `WhisperFeatureExtractor` (its torch STFT on the device), then `generate` over
`input_features` (the encoder, then greedy decoding with a static or dynamic cache), the text detokenised.

Both decode greedily from the same prompt under the same rules: the checkpoint's suppress list and every special
token after <|endoftext|> barred at every step, its begin-suppress list at the first, at most `max_tokens` tokens.
transformers' `generate` is GenerationMixin's, the loop Whisper's own `generate` hands a 30-s window to, called
directly so that the prompt is the checkpoint's for English-only and multilingual models alike (Whisper's own would
detect the language of a multilingual one first). Each call returns per utterance its text, the tokens emitted
(<|endoftext|> counted where it came before the limit) and whether <|endoftext|> came (else the limit cut it)."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import GenerationConfig, GenerationMixin, WhisperFeatureExtractor, WhisperForConditionalGeneration

from asr_attention.backbones.whisper.adapter import Whisper
from asr_attention.backbones.whisper.tokens import WhisperTokens
from asr_attention.data.audio import SAMPLE_RATE, pad_waves
from asr_attention.generation.decoding import DecodingOptions, transcribe
from asr_attention.generation.fast_path import release_caches


class OursPipeline:
    def __init__(self, backbone: Whisper, max_tokens: int, fast="auto", compile: bool = False):
        self.backbone = backbone
        self.options = DecodingOptions(max_tokens=max_tokens, temperatures=(0.0,), fast=fast, compile=compile)

    @property
    def device(self) -> torch.device:
        return self.backbone.model.device

    def stages(self) -> dict:
        """What a call runs, in order, by name (the benchmark's split pass times each)."""
        return {"features + encoder": self.encode, "decoding": self.decode, "text": self.text}

    @torch.no_grad()
    def encode(self, waves: list[Tensor]) -> Tensor:
        padded, lengths = pad_waves(waves)
        return self.backbone.encode(padded.to(self.device), lengths.to(self.device))

    @torch.no_grad()
    def decode(self, memory: Tensor) -> list:
        return transcribe(self.backbone, memory, self.options)

    def text(self, hypotheses: list) -> list[tuple[str, int, bool]]:
        return [(self.backbone.tokens.decode(h.tokens), len(h.tokens) + (not h.truncated), not h.truncated)
                for h in hypotheses]

    def __call__(self, waves: list[Tensor]) -> list[tuple[str, int, bool]]:
        return self.text(self.decode(self.encode(waves)))

    def release(self) -> None:
        """The pooled caches and their graphs (the next batch size captures its own)."""
        release_caches(self.backbone)


class HFPipeline:
    """cache: "static" (transformers compiles the decode step on the first call of each batch shape) or "dynamic"."""

    def __init__(self, model: WhisperForConditionalGeneration, tokens: WhisperTokens, max_tokens: int, cache: str):
        if cache not in ("static", "dynamic"):
            raise ValueError(f"cache={cache!r} is not one of ['static', 'dynamic']")
        self.model, self.tokens = model, tokens
        self.extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        vocab = model.config.vocab_size
        self.generation = GenerationConfig(
            decoder_start_token_id=tokens.sot, eos_token_id=tokens.eot, pad_token_id=tokens.eot,
            suppress_tokens=sorted({i for i in tokens.suppress if i < vocab} | set(range(tokens.eot + 1, vocab))),
            begin_suppress_tokens=[i for i in tokens.suppress_begin if i < vocab], max_new_tokens=max_tokens,
            do_sample=False, num_beams=1, cache_implementation="static" if cache == "static" else None)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def stages(self) -> dict:
        return {"features": self.features, "encoder + decoding": self.generate, "text": self.text}

    def features(self, waves: list[Tensor]) -> Tensor:
        return self.extractor([w.numpy() for w in waves], sampling_rate=SAMPLE_RATE, return_tensors="pt",
                              device=self.device.type).input_features

    @torch.no_grad()
    def generate(self, features: Tensor) -> Tensor:
        prompt = torch.tensor(self.tokens.prompt, device=self.device).repeat(len(features), 1)
        out = GenerationMixin.generate(self.model, features.to(self.device, self.model.dtype),
                                       decoder_input_ids=prompt, generation_config=self.generation)
        return out[:, prompt.shape[1]:]

    def text(self, tokens: Tensor) -> list[tuple[str, int, bool]]:
        eot = self.tokens.eot
        return [(self.tokens.decode(row), row.index(eot) + 1 if eot in row else len(row), eot in row)
                for row in tokens.tolist()]

    def __call__(self, waves: list[Tensor]) -> list[tuple[str, int, bool]]:
        return self.text(self.generate(self.features(waves)))

    def release(self) -> None:
        pass  # transformers keeps its compiled step; a new static cache is made per call
