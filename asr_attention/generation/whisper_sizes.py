"""Whisper model sizes (OpenAI's published dimensions) as transformers `WhisperConfig`s, for random-weight
benchmarks, plus a tiny one for CPU tests. Every size keeps Whisper's 30-s window: 3000 mel frames -> 1500
encoder frames, and its 448 decoder positions."""

from __future__ import annotations

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

# name: (d_model, heads, layers per stack, mel bins, vocab)
SIZES = {
    "tiny.en": (384, 6, 4, 80, 51864),
    "base": (512, 8, 6, 80, 51865),
    "small": (768, 12, 12, 80, 51865),
    "medium": (1024, 16, 24, 80, 51865),
    "large-v3": (1280, 20, 32, 128, 51866),
    "test": (64, 4, 2, 80, 51864),  # CPU tests
}
ENCODER_FRAMES = 1500
EOT, SOT, NO_TIMESTAMPS = 50256, 50257, 50362  # ids shared by every vocabulary size above
PROMPT = (SOT, NO_TIMESTAMPS)


def whisper_config(size: str, init_std: float = 0.02) -> WhisperConfig:
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not one of {list(SIZES)}")
    d, heads, layers, mels, vocab = SIZES[size]
    return WhisperConfig(
        vocab_size=vocab, num_mel_bins=mels, d_model=d, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
        max_source_positions=ENCODER_FRAMES, max_target_positions=448, init_std=init_std,
        attn_implementation="sdpa",
    )


def random_whisper(size: str, device: torch.device, dtype: torch.dtype, seed: int = 0,
                   init_std: float = 0.02) -> WhisperForConditionalGeneration:
    """Random weights at `size`, built directly on `device` (large-v3 has 1.5 B parameters: no CPU detour).
    Generation config: no tokens suppressed at the first step (the benchmark forces every token count itself)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = WhisperForConditionalGeneration(whisper_config(size, init_std))
    model = model.to(dtype).eval()
    model.generation_config.begin_suppress_tokens = None
    model.generation_config.suppress_tokens = None
    return model
