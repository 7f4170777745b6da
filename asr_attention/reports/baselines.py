"""Regenerate baselines/<model>_baseline.json: the backbones' architecture facts, computed here.

    python -m asr_attention.reports.baselines           # rebuild the architectures (CPU) and write the files
    python -m asr_attention.reports.baselines --check   # recompute and exit 1 where a file differs

Whisper tiny.en's file comes from its real weights (asr_attention/reports/whisper_baseline.py).

Sizes, parameter counts and frame rates come from building each architecture with random weights (no
download); batch_size from conf/model; kv_cache_mb from the attention variants' own cache_bytes. The only
fields not computed here are the model cards' reference WERs, each with its source.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf
from torch import nn

from asr_attention.backbones import count_parameters
from asr_attention.reports.kv_cache import CONF, cache_rows
from asr_attention.training.config_check import validate_model

BASELINES = Path(__file__).resolve().parents[2] / "baselines"
SAMPLE_RATE = 16000
KV_FRAMES, KV_BATCH, KV_DTYPE = 1000, 1, torch.float32


@dataclass
class Built:
    """What a builder reports about the architecture it built."""

    d_model: int
    num_heads: int
    num_layers: int
    frame_ms: float
    num_parameters: int  # the whole checkpoint's model
    encoder_parameters: int  # what runs to produce the encoder output
    attention_parameters: int  # the encoder's self-attention modules: what a conversion replaces
    counted: str  # which modules were counted, in words


def build_wav2vec2_large_960h() -> Built:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    # facebook/wav2vec2-large-960h's config.json: the defaults of Wav2Vec2Config but for these sizes
    # (group-norm feature extractor, post-LN, no conv bias, 32 characters).
    config = Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, vocab_size=32,
        feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False,
    )
    model = Wav2Vec2ForCTC(config)
    layers = model.wav2vec2.encoder.layers
    return Built(
        d_model=config.hidden_size,
        num_heads=layers[0].attention.num_heads,
        num_layers=len(layers),
        frame_ms=1000 * math.prod(config.conv_stride) / SAMPLE_RATE,
        num_parameters=count_parameters(model),
        encoder_parameters=count_parameters(model.wav2vec2),
        attention_parameters=count_parameters(*(layer.attention for layer in layers)),
        counted="Wav2Vec2ForCTC: all parameters (conv feature encoder, projection, conv positional embedding, "
        "24 post-LN Transformer layers, masked_spec_embed, CTC lm_head); encoder = model.wav2vec2",
    )


def build_branchformer_large_tedlium2() -> Built:
    from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
    from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
    from speechbrain.nnet.linear import Linear

    # recipes/Tedlium2/ASR/transformer/hparams/branchformer_large.yaml; its `model` is
    # ModuleList([CNN, Transformer, seq_lin, ctc_lin]) (the input normaliser has no parameters).
    hop_ms, strides = 10, (2, 2)  # Fbank hop_length 10 ms; the CNN front end subsamples by each stride
    cnn = ConvolutionFrontEnd(
        input_shape=(8, 10, 80), num_blocks=2, num_layers_per_block=1, out_channels=(64, 32),
        kernel_sizes=(3, 3), strides=strides, residuals=(False, False),
    )
    transformer = TransformerASR(
        input_size=640, tgt_vocab=500, d_model=512, nhead=8, num_encoder_layers=18, num_decoder_layers=6,
        dropout=0.1, activation=nn.GELU, branchformer_activation=nn.GELU, encoder_module="branchformer",
        csgu_linear_units=3072, kernel_size=31, attention_type="RelPosMHAXL", normalize_before=True, causal=False,
    )
    seq_lin, ctc_lin = Linear(input_size=512, n_neurons=500), Linear(input_size=512, n_neurons=500)
    layers = transformer.encoder.layers
    return Built(
        d_model=transformer.encoder.layers[0].mha_layer.embed_dim,
        num_heads=layers[0].mha_layer.num_heads,
        num_layers=len(layers),
        frame_ms=float(hop_ms * math.prod(strides)),
        num_parameters=count_parameters(cnn, transformer, seq_lin, ctc_lin),
        encoder_parameters=count_parameters(cnn, transformer.custom_src_module, transformer.encoder),
        attention_parameters=count_parameters(*(layer.mha_layer for layer in layers)),
        counted="the recipe's model ModuleList([CNN, Transformer, seq_lin, ctc_lin]): CNN front end, "
        "TransformerASR (18 Branchformer encoder + 6 Transformer decoder layers, embeddings), attention-decoder "
        "and CTC heads; encoder = CNN + input projection + Branchformer encoder",
    )


@dataclass
class Card:
    """Facts taken from outside (model cards), each with its source, plus the builder of the architecture."""

    checkpoint: str
    build: Callable[[], Built]
    architecture: str
    reference_wer: list[dict]
    extra: dict | None = None  # further card-level facts, e.g. which checkpoint is the true Conformer


CARDS = {
    "conformer": Card(
        checkpoint="facebook/wav2vec2-large-960h",
        build=build_wav2vec2_large_960h,
        architecture="Transformer encoder (wav2vec 2.0 large): conv feature encoder, a convolutional positional "
        "embedding before the layers, post-LayerNorm Transformer layers, CTC head. NOT a Conformer (no "
        "convolution module inside the layers).",
        extra={
            "note": "The seed calls this model 'conformer'; the true Conformer of the same size (1024/16/24) is "
            "true_conformer_checkpoint (relative-position self-attention, pre-LN).",
            "true_conformer_checkpoint": "facebook/wav2vec2-conformer-rel-pos-large-960h-ft",
        },
        reference_wer=[
            {"wer": 2.8, "test_set": "LibriSpeech test-clean", "source": "https://huggingface.co/facebook/wav2vec2-large-960h (model card)"},
            {"wer": 6.3, "test_set": "LibriSpeech test-other", "source": "https://huggingface.co/facebook/wav2vec2-large-960h (model card)"},
        ],
    ),
    "branchformer": Card(
        checkpoint="speechbrain/asr-branchformer-large-tedlium2",
        build=build_branchformer_large_tedlium2,
        architecture="Branchformer encoder (parallel RelPosMHAXL self-attention and cgMLP branches, pre-LN) over "
        "a 2-block CNN front end on 80-mel Fbank, Transformer decoder, joint CTC/attention; SpeechBrain recipe "
        "Tedlium2/ASR/transformer/hparams/branchformer_large.yaml.",
        reference_wer=[
            {"wer": 8.11, "test_set": "TED-LIUM 2 test (no LM)", "source": "https://huggingface.co/speechbrain/asr-branchformer-large-tedlium2 (model card)"},
        ],
    ),
}


def model_config(name: str) -> dict:
    model = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"), resolve=True)
    validate_model(model)
    return model


def kv_cache_mb(model: dict) -> dict:
    rows = cache_rows(model, None, KV_FRAMES, KV_BATCH, KV_DTYPE)
    return {"frames": KV_FRAMES, "batch": KV_BATCH, "dtype": "float32", "unit": "MiB (2^20 bytes), all layers",
            "presets": {r.attention: r.options for r in rows}, **{r.attention: r.mib for r in rows},
            "linear_is": "state plus normaliser, constant in frames",
            "computed_by": "asr_attention.reports.kv_cache.cache_rows: each variant's cache_bytes x num_layers"}


def baseline(name: str, built: Built) -> dict:
    card, model = CARDS[name], model_config(name)
    return {
        "model": name,
        "checkpoint": card.checkpoint,
        "architecture_family": card.architecture,
        **(card.extra or {}),
        "d_model": built.d_model,
        "num_heads": built.num_heads,
        "num_layers": built.num_layers,
        "batch_size": model["batch_size"],  # the seed's setting, from conf/model
        "num_parameters": built.num_parameters,
        "num_parameters_encoder": built.encoder_parameters,
        "num_parameters_attention": built.attention_parameters,
        "num_parameters_counted": built.counted + " (built with random weights, nothing downloaded)",
        "frame_ms": built.frame_ms,
        "frames_per_second": 1000 / built.frame_ms,
        "kv_cache_mb": kv_cache_mb(model),
        "reference_wer": card.reference_wer,
    }


def path(name: str) -> Path:
    return BASELINES / f"{name}_baseline.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args(argv)
    from asr_attention.reports.whisper_baseline import load_model, whisper_baseline

    stale = []
    generated = {name: lambda name=name, card=card: baseline(name, card.build()) for name, card in CARDS.items()}
    generated["whisper"] = lambda: whisper_baseline(*load_model())
    for name, build in generated.items():
        text = json.dumps(build(), indent=2) + "\n"
        if args.check:
            if not path(name).exists() or path(name).read_text() != text:
                stale.append(str(path(name)))
        else:
            path(name).write_text(text)
            print(f"wrote {path(name)}")
    if stale:
        print("out of date (run python -m asr_attention.reports.baselines):", *stale, sep="\n  ")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
