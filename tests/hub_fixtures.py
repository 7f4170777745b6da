"""Checkpoint folders laid out file for file as the seed's hub repos, at tiny sizes, built with the architectures'
own classes (SpeechBrain's from the recipe-form hyperparams.yaml, transformers' for wav2vec2), random weights; and
an offline Hugging Face cache holding such a folder as huggingface_hub lays out a download.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import soundfile as sf
import torch

from asr_attention.data.audio import load_audio
from asr_attention.data.corpora.an4 import read_an4

SB_HUB_ID = "speechbrain/asr-branchformer-large-tedlium2"
W2V_HUB_ID = "facebook/wav2vec2-large-960h"
CONFORMER_HUB_ID = "facebook/wav2vec2-conformer-rel-pos-large-960h-ft"
SB_HPARAMS = Path(__file__).parent / "fixtures" / "branchformer_hyperparams.yaml"
SB_SIZES = dict(d_model=32, num_heads=4, num_layers=2)  # as in SB_HPARAMS
# facebook/wav2vec2-large-960h's vocab.json
W2V_VOCAB = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"])}


def an4_waves(count: int, split: str = "test") -> list[torch.Tensor]:
    """The first `count` utterances of an AN4 split, each as a float32 16 kHz tensor."""
    return [load_audio(u.path) for u in read_an4(split)[:count]]


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value, so a tensor loaded into the wrong place (or not at all: layer
    norms start at exactly 1 and 0) changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def speechbrain_hub_dir(path: Path, seed: int = 0) -> Path:
    """speechbrain/asr-branchformer-large-tedlium2's file set: hyperparams.yaml, model.ckpt (the state dict of the
    recipe's `model` ModuleList [CNN, Transformer, seq_lin, ctc_lin]), normalizer.ckpt (2023 format: batches seen,
    global mean and std, empty per-speaker dicts), tokenizer.ckpt (SentencePiece), config.json, example.wav."""
    import sentencepiece as spm
    from hyperpyyaml import load_hyperpyyaml

    path.mkdir(parents=True)
    text = SB_HPARAMS.read_text()
    (path / "hyperparams.yaml").write_text(text)
    torch.manual_seed(seed)
    hp = load_hyperpyyaml(text)
    perturb(hp["model"], seed)
    torch.save(hp["model"].state_dict(), path / "model.ckpt")

    normalize = hp["normalize"].train()  # SpeechBrain's own running global stats, over real speech
    waves = an4_waves(4, "train")
    for wave in waves:
        normalize(hp["compute_features"](wave[None]), torch.ones(1), epoch=0)
    torch.save({"count": len(waves), "glob_mean": normalize.glob_mean, "glob_std": normalize.glob_std,
                "spk_dict_mean": {}, "spk_dict_std": {}, "spk_dict_count": {}}, path / "normalizer.ckpt")

    (path / "texts.txt").write_text("\n".join(u.text for u in read_an4("train")))
    spm.SentencePieceTrainer.train(
        input=str(path / "texts.txt"), model_prefix=str(path / "tok"), vocab_size=hp["output_neurons"],
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, minloglevel=2,
    )
    (path / "tok.model").rename(path / "tokenizer.ckpt")
    for leftover in ("texts.txt", "tok.vocab"):
        (path / leftover).unlink()

    (path / "config.json").write_text(json.dumps({"speechbrain_interface": "EncoderDecoderASR"}))
    sf.write(path / "example.wav", waves[0].numpy(), 16000)
    return path


def wav2vec2_hub_dir(path: Path, conformer: bool = False, seed: int = 0):
    """facebook/wav2vec2-large-960h's file set (conformer: facebook/wav2vec2-conformer-rel-pos-large-960h-ft's):
    config.json, pytorch_model.bin with the positional conv's weight norm under the legacy weight_g / weight_v
    names, vocab.json, tokenizer_config.json, special_tokens_map.json, preprocessor_config.json.
    Returns (folder, the transformers model whose weights it holds)."""
    from transformers import (Wav2Vec2Config, Wav2Vec2ConformerConfig, Wav2Vec2ConformerForCTC,
                              Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC)

    tiny = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
                conv_dim=(16,) * 7,  # the checkpoints' 7-layer feature encoder (20 ms frames), narrow
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                vocab_size=len(W2V_VOCAB), pad_token_id=0, bos_token_id=1, eos_token_id=2, ctc_loss_reduction="sum")
    if conformer:  # the checkpoint's scheme: pre-LN, layer-norm feature extractor, relative positions
        config = Wav2Vec2ConformerConfig(**tiny, position_embeddings_type="relative", feat_extract_norm="layer",
                                         do_stable_layer_norm=True, conv_depthwise_kernel_size=3)
        model_cls = Wav2Vec2ConformerForCTC
    else:  # post-LN, group-norm feature extractor (no attention mask)
        config = Wav2Vec2Config(**tiny, feat_extract_norm="group", do_stable_layer_norm=False)
        model_cls = Wav2Vec2ForCTC
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    perturb(model, seed)

    path.mkdir(parents=True)
    config.save_pretrained(path)
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in model.state_dict().items()}
    assert any(k.endswith("pos_conv_embed.conv.weight_g") for k in legacy)
    torch.save(legacy, path / "pytorch_model.bin")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (path / "vocab.json").write_text(json.dumps(W2V_VOCAB))
    (path / "special_tokens_map.json").write_text(json.dumps(specials))
    (path / "tokenizer_config.json").write_text(json.dumps({**specials, "do_lower_case": False,
                                                            "word_delimiter_token": "|"}))
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=conformer).save_pretrained(path)
    return path, model


def hf_cache(cache: Path, repo_id: str, folder: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """Put `folder` into the Hugging Face cache `cache` (HF_HUB_CACHE) as huggingface_hub stores a download of
    `repo_id`: blobs/<hash>, snapshots/<commit>/<name> -> ../../blobs/<hash>, refs/main = <commit>. Files named in
    `leave_out` stay out (a partial download). Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        if file.name in leave_out:
            continue
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def padded(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-padded batch (B, S) and its lengths in samples."""
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, lengths
