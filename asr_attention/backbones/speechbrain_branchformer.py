"""SpeechBrain Branchformer (recipe Tedlium2/ASR/transformer/hparams/branchformer_large.yaml), encoder + CTC head.

  waves -> Fbank (80 mel, 10 ms hop) -> global mean/std normalisation -> ConvolutionFrontEnd (2 blocks, stride 4)
        -> TransformerASR.encode (branchformer, RelPosMHAXL, causal=False) -> Linear CTC head -> log-softmax
The attention-decoder of the recipe is not built (num_decoder_layers=0): CTC fine-tuning only.

Attention: transformer.encoder.layers[i].mha_layer = speechbrain.nnet.attention.RelPosMHAXL, called as
  mha_layer(x, x, x, attn_mask=None, key_padding_mask=(B, T) True = pad, pos_embs=(1, 2T-1, d)) -> (out, weights)
Its quirks, mapped in `to_canonical`:
  in_proj_weight (3d, d), no bias, rows interleaved per head: W.view(H, 3, hd, d)[:, i] is Q/K/V (i = 0/1/2);
  optional value_bias_weight (d,) if vbias; out_proj with bias; linear_pos without bias;
  pos_bias_u/v stored (hd, H) but used as .view(1, 1, H, hd): a reshape of the storage, not a transpose;
  scores scaled by 1/sqrt(d_model), not 1/sqrt(head_dim).

Pretrained layout (the hub repo speechbrain/asr-branchformer-large-tedlium2, a local copy of it, or an export of
this framework):
  model.ckpt       state dict of the recipe's `model` ModuleList [CNN, Transformer, seq_lin, ctc_lin] -> keys "0.",
                   "1.", "2.", "3." (or [CNN, Transformer, ctc_lin]: the last index is the CTC head either way).
                   SpeechBrain's from_hparams saves it under that name too; this framework's exports call it asr.ckpt.
  normalizer.ckpt  {"count", "glob_mean", "glob_std"} of InputNormalization(norm_type="global") (the 2023 files add
                   empty spk_dict_* entries)
  hyperparams.yaml the recipe's modules: the sizes are read from it and every other argument of the modules built
                   here is checked against it (speechbrain_hparams.py). In the hub's file set; exports have none.
  tokenizer.ckpt   sentencepiece model (the vocabulary of the checkpoint's CTC head)
"""

from __future__ import annotations

import logging
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from asr_attention.attention import AttentionVariant, CanonicalMHA

from .base import Backbone, arch_of, check_sizes, checkpoint_dir, load_checkpoint_file
from .speechbrain_hparams import HPARAMS, check_hyperparams, read_hyperparams, recipe_sizes

log = logging.getLogger(__name__)

# The recipe's sizes; model.arch may override any of them (tiny models in tests).
RECIPE = {
    "n_mels": 80, "n_fft": 400, "win_length": 25, "cnn_channels": (64, 32), "csgu_linear_units": 3072,
    "kernel_size": 31, "dropout": 0.1, "vocab_size": 500, "norm_update_batches": 0,
}
WEIGHTS = ("model.ckpt", "asr.ckpt")  # the hub's name first; this framework's exports write asr.ckpt
NEEDS = (WEIGHTS, "normalizer.ckpt")
HUB_NEEDS = (HPARAMS, "tokenizer.ckpt")  # the hub repo has them: missing from a cached copy = a partial download


class GlobalNormalization(nn.Module):
    """SpeechBrain InputNormalization(norm_type="global") at inference: (x - mean) / std, stats per mel bin.

    Stats are buffers (they follow .to(device) and the state dict). With `update_batches` > 0 the first that many
    training batches accumulate the stats over non-padded frames, as the recipe does for its first epochs.
    """

    def __init__(self, n_mels: int, update_batches: int = 0, eps: float = 1e-10):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # frames seen
        self.update_batches, self.seen_batches, self.eps = update_batches, 0, eps

    def load_speechbrain(self, stats: dict, path: Path) -> None:
        """normalizer.ckpt. Its count is batches in the 2023 files, frames here: it only weighs further updates."""
        if not isinstance(stats, Mapping) or not {"count", "glob_mean", "glob_std"} <= set(stats):
            found = sorted(stats) if isinstance(stats, Mapping) else type(stats).__name__
            raise ValueError(f"{path}: expected SpeechBrain global normalisation stats (count, glob_mean, glob_std), "
                             f"found {found}")
        if stats["glob_mean"].numel() != self.mean.numel():
            raise ValueError(f"{path}: glob_mean has {stats['glob_mean'].numel()} values, the Fbank "
                             f"n_mels={self.mean.numel()}")
        self.mean.copy_(stats["glob_mean"].reshape(-1))
        self.std.copy_(stats["glob_std"].reshape(-1))
        self.count.fill_(int(stats["count"]))

    def speechbrain_stats(self) -> dict:
        return {"count": int(self.count), "glob_mean": self.mean.clone(), "glob_std": self.std.clone()}

    def forward(self, x: Tensor, frames: Tensor) -> Tensor:
        if self.training and self.seen_batches < self.update_batches:
            self._update(x, frames)
        return (x - self.mean) / self.std.clamp(min=self.eps)

    @torch.no_grad()
    def _update(self, x: Tensor, frames: Tensor) -> None:
        keep = torch.arange(x.shape[1], device=x.device)[None] < frames[:, None]
        v = x[keep].double()
        n, m = self.count.item(), self.mean.double()
        k = v.shape[0]
        new_mean = (m * n + v.sum(0)) / (n + k)
        old_sq = (self.std.double() ** 2 + m**2) * n if n else 0.0
        var = (old_sq + (v**2).sum(0)) / (n + k) - new_mean**2
        self.mean.copy_(new_mean)
        self.std.copy_(var.clamp_min(self.eps).sqrt())
        self.count += k
        self.seen_batches += 1


class SBAttention(nn.Module):
    """A variant in the place of RelPosMHAXL: same call (query, key, value, pos_embs, key_padding_mask, attn_mask)."""

    def __init__(self, variant: AttentionVariant):
        super().__init__()
        self.variant = variant

    @staticmethod
    def variant_inputs(
        query: Tensor, key: Tensor, value: Tensor, pos_embs: Tensor | None = None,
        key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None, return_attn_weights: bool = True,
    ) -> dict:
        if not (query is key is value or (torch.equal(query, key) and torch.equal(key, value))):
            raise NotImplementedError("only self-attention (query == key == value) is supported")
        if attn_mask is not None:
            raise NotImplementedError("attn_mask (causal / chunked encoders) is not supported; build with causal=False")
        return {"x": query, "key_padding_mask": key_padding_mask, "pos": pos_embs}

    def forward(self, *args, **kwargs) -> tuple[Tensor, None]:
        out, _ = self.variant(**self.variant_inputs(*args, **kwargs))
        return out, None


def speechbrain_classes() -> dict[str, type]:
    """The recipe's modules (by their names in hyperparams.yaml) that this adapter builds or reproduces."""
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
    from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
    from speechbrain.nnet.linear import Linear
    from speechbrain.processing.features import InputNormalization

    return {"compute_features": Fbank, "normalize": InputNormalization, "CNN": ConvolutionFrontEnd,
            "Transformer": TransformerASR, "ctc_lin": Linear}


def speechbrain_kwargs(s: Mapping) -> dict[str, dict]:
    """The keyword arguments this adapter gives each of those modules, for its sizes `s`. The model builds Fbank,
    CNN and Transformer from them; GlobalNormalization and nn.Linear reproduce InputNormalization and Linear
    with these arguments. The Fbank hop is the class default, 10 ms (frame_ms)."""
    channels = tuple(s["cnn_channels"])
    return {
        "compute_features": dict(sample_rate=16000, n_fft=s["n_fft"], win_length=s["win_length"], n_mels=s["n_mels"]),
        "normalize": dict(norm_type="global"),
        "CNN": dict(
            input_shape=(8, 10, s["n_mels"]), num_blocks=2, num_layers_per_block=1, out_channels=channels,
            kernel_sizes=(3, 3), strides=(2, 2), residuals=(False, False),
            dropout=s["dropout"],  # the recipe's 0.1 is the front end's default too; model.arch.dropout=0: all off
        ),
        "Transformer": dict(
            tgt_vocab=s["vocab_size"], input_size=channels[-1] * -(-s["n_mels"] // 4), d_model=s["d_model"],
            nhead=s["num_heads"], num_encoder_layers=s["num_layers"], num_decoder_layers=0, dropout=s["dropout"],
            activation=nn.GELU, branchformer_activation=nn.GELU, encoder_module="branchformer",
            csgu_linear_units=s["csgu_linear_units"], kernel_size=s["kernel_size"],
            attention_type="RelPosMHAXL", normalize_before=True, causal=False,
        ),
        "ctc_lin": dict(input_size=s["d_model"], n_neurons=s["vocab_size"]),
    }


class SpeechBrainBranchformer(Backbone):
    family = "speechbrain_branchformer"
    frame_ms = 40.0  # 10 ms Fbank hop x CNN stride 4

    def __init__(self, d_model: int, num_heads: int, num_layers: int, vocab_size: int, **sizes):
        super().__init__()
        s = self.sizes = {**RECIPE, **sizes, "d_model": d_model, "num_heads": num_heads, "num_layers": num_layers,
                          "vocab_size": vocab_size}
        classes, kwargs = speechbrain_classes(), speechbrain_kwargs(self.sizes)
        self.fbank = classes["compute_features"](**kwargs["compute_features"])
        self.normalize = GlobalNormalization(s["n_mels"], int(s["norm_update_batches"]))
        self.cnn = classes["CNN"](**kwargs["CNN"])
        self.transformer = classes["Transformer"](**kwargs["Transformer"])
        self.ctc_lin = nn.Linear(d_model, vocab_size)

    @property
    def vocab_size(self) -> int:
        return self.ctc_lin.out_features

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.ctc_lin.parameters())

    def reset_head(self, vocab_size: int) -> None:
        self.ctc_lin = nn.Linear(self.ctc_lin.in_features, vocab_size)
        self.sizes["vocab_size"] = vocab_size
        self.vocab = None
        self.fresh_head = True

    def forward(self, waves: Tensor, wave_lengths: Tensor) -> tuple[Tensor, Tensor]:
        relative = wave_lengths.float() / waves.shape[1]  # SpeechBrain passes lengths relative to the batch's longest
        feats = self.fbank(waves)
        feats = self.normalize(feats, torch.round(relative * feats.shape[1]))
        src = self.cnn(feats)
        encoded = self.transformer.encode(src, relative)
        out_lengths = torch.round(relative * encoded.shape[1]).long()  # as TransformerASR's key padding mask
        return self.ctc_lin(encoded).float().log_softmax(-1), out_lengths

    def attention_sites(self) -> Iterator[tuple[nn.Module, str, nn.Module]]:
        for layer in self.transformer.encoder.layers:
            yield layer, "mha_layer", layer.mha_layer

    def to_canonical(self, original: nn.Module) -> CanonicalMHA:
        h, d = original.num_heads, original.embed_dim
        hd = d // h
        w = original.in_proj_weight.detach().view(h, 3, hd, d)  # rows interleaved per head: [q_h, k_h, v_h] * H
        q_w, k_w, v_w = (w[:, i].reshape(d, d) for i in range(3))
        v_b = original.value_bias_weight.detach() if original.vbias is not None else None
        return CanonicalMHA(
            q_w, k_w, v_w, original.out_proj.weight.detach(),
            None, None, v_b, original.out_proj.bias.detach(),
            num_heads=h,
            scale=original.scale,  # 1 / sqrt(d_model)
            position="xl",
            pos_bias_u=original.pos_bias_u.detach().reshape(h, hd),  # (hd, H) storage read as (H, hd)
            pos_bias_v=original.pos_bias_v.detach().reshape(h, hd),
            linear_pos_weight=original.linear_pos.weight.detach(),
            dropout=original.dropout,  # RelPosMHAXL's dropout_att probability
        )

    def wrap(self, variant: AttentionVariant) -> nn.Module:
        return SBAttention(variant)

    def variant_inputs(self, args: tuple, kwargs: dict) -> dict:
        return SBAttention.variant_inputs(*args, **kwargs)

    # ------------------------------------------------------------------------- SpeechBrain checkpoint layout

    def speechbrain_state(self) -> dict[str, Tensor]:
        """asr.ckpt contents in the recipe's ModuleList [CNN, Transformer, seq_lin, ctc_lin] layout.
        seq_lin (the attention decoder's output layer) is not part of this model: written as zeros."""
        state = {f"0.{k}": v for k, v in self.cnn.state_dict().items()}
        state |= {f"1.{k}": v for k, v in self.transformer.state_dict().items()}
        state |= {"2.w.weight": torch.zeros_like(self.ctc_lin.weight), "2.w.bias": torch.zeros_like(self.ctc_lin.bias)}
        state |= {"3.w.weight": self.ctc_lin.weight, "3.w.bias": self.ctc_lin.bias}
        return {k: v.detach().clone() for k, v in state.items()}

    def save_speechbrain(self, directory: str | os.PathLike) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.speechbrain_state(), path / "asr.ckpt")
        torch.save(self.normalize.speechbrain_stats(), path / "normalizer.ckpt")

    def load_speechbrain_state(self, state: Mapping[str, Tensor], name: str = "model.ckpt") -> None:
        parts = split_asr_checkpoint(state, name)
        _load_exact(self.cnn, parts["cnn"], f"CNN ({name} 0.*)")
        _load_exact(self.transformer, parts["transformer"], f"Transformer encoder ({name} 1.*)")
        _load_exact(self.ctc_lin, {k.removeprefix("w."): v for k, v in parts["ctc"].items()}, f"ctc_lin ({name})")


def split_asr_checkpoint(state: Mapping[str, Tensor], name: str = "model.ckpt") -> dict[str, dict[str, Tensor]]:
    """The recipe's `model` state dict -> {"cnn", "transformer", "ctc"} state dicts. The recipe's decoder
    (1.decoder.*, 1.custom_tgt_module.*) and seq_lin are dropped: this model is CTC-only."""
    heads = {k.split(".", 1)[0] for k in state} if isinstance(state, Mapping) else {"?"}
    top = sorted(int(h) for h in heads if h.isdigit())
    if len(top) != len(heads) or top[:2] != [0, 1] or len(top) not in (3, 4):
        raise ValueError(f"{name}: expected the state dict of ModuleList [CNN, Transformer, (seq_lin,) ctc_lin] "
                         f"(keys 0.*, 1.*, ...); its keys start with {sorted(heads)[:6]}")
    ctc = str(top[-1])
    parts: dict[str, dict[str, Tensor]] = {"cnn": {}, "transformer": {}, "ctc": {}}
    for key, value in state.items():
        index, rest = key.split(".", 1)
        if index == "0":
            parts["cnn"][rest] = value
        elif index == "1" and not rest.startswith(("decoder.", "custom_tgt_module.")):
            parts["transformer"][rest] = value
        elif index == ctc:
            parts["ctc"][rest] = value
    return parts


def checkpoint_sizes(parts: dict[str, dict[str, Tensor]]) -> dict:
    """The architecture sizes a checkpoint implies, read from its tensor shapes."""
    t, cnn = parts["transformer"], parts["cnn"]
    layers = {int(m.group(1)) for k in t if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    first = "encoder.layers.0."
    return {
        "d_model": t[first + "mha_layer.in_proj_weight"].shape[1],
        "num_heads": t[first + "mha_layer.pos_bias_u"].shape[1],  # stored (head_dim, heads)
        "num_layers": len(layers),
        "csgu_linear_units": t[first + "convolution_branch.pre_channel_proj.weight"].shape[0],
        "kernel_size": t[first + "convolution_branch.csgu.conv.conv.weight"].shape[-1],
        "cnn_channels": (cnn["convblock_0.convs.conv_0.conv.weight"].shape[0],
                         cnn["convblock_1.convs.conv_0.conv.weight"].shape[0]),
        "vocab_size": parts["ctc"]["w.weight"].shape[0],
    }


def _load_exact(module: nn.Module, state: dict, what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{what}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")


# ---------------------------------------------------------------------------------------------- building


def build_speechbrain_branchformer(model_cfg: Mapping, vocab_size: int | None = None) -> SpeechBrainBranchformer:
    arch = arch_of(model_cfg)
    d, h, n = int(model_cfg["d_model"]), int(model_cfg["num_heads"]), int(model_cfg["num_layers"])
    if not model_cfg.get("pretrained", True):
        size = int(vocab_size or arch.pop("vocab_size", RECIPE["vocab_size"]))
        arch.pop("vocab_size", None)
        return SpeechBrainBranchformer(d, h, n, size, **arch)

    source = str(model_cfg["source"])
    directory = checkpoint_dir(source, NEEDS, HUB_NEEDS)
    weights = next(name for name in WEIGHTS if (directory / name).is_file())
    state = load_checkpoint_file(directory / weights, source)
    found = checkpoint_sizes(split_asr_checkpoint(state, weights))
    check_sizes(source, [
        ("model.d_model", d, "d_model", found["d_model"]),
        ("model.num_heads", h, "nhead", found["num_heads"]),
        ("model.num_layers", n, "num_encoder_layers", found["num_layers"]),
    ])
    hparams = directory / HPARAMS
    hp = read_hyperparams(hparams) if hparams.is_file() else None
    recipe = recipe_sizes(hp, hparams, speechbrain_classes(), found, weights) if hp else {}
    shape = dict(d_model=d, num_heads=h, num_layers=n, vocab_size=found["vocab_size"])
    sizes = {**RECIPE, **recipe, **arch, **{k: found[k] for k in ("csgu_linear_units", "kernel_size", "cnn_channels")}}
    sizes = {k: v for k, v in sizes.items() if k not in shape}
    if hp:  # the sizes came from the file: what may still differ is the modules' other arguments, or model.arch
        check_hyperparams(hp, hparams, speechbrain_classes(), speechbrain_kwargs({**sizes, **shape}))
    else:
        log.info("%s has no %s: sizes from %s's tensor shapes, the front end as the recipe's", source, HPARAMS, weights)
    backbone = SpeechBrainBranchformer(**shape, **sizes)
    backbone.load_speechbrain_state(state, weights)
    normalizer = directory / "normalizer.ckpt"
    backbone.normalize.load_speechbrain(load_checkpoint_file(normalizer, source), normalizer)
    if (directory / "tokenizer.ckpt").exists():
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.ckpt"))
        backbone.vocab = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        backbone.tokenizer = sp
    if (directory / "vocab.json").exists():  # a character head exported by this framework (backbones/export.py)
        by_id = {i: t for t, i in json.loads((directory / "vocab.json").read_text()).items()}
        backbone.vocab = [by_id[i] for i in range(len(by_id))]
    backbone.blank_id = 0  # the recipe's blank_index
    if vocab_size is not None and vocab_size != backbone.vocab_size:
        log.info("new CTC head: %d outputs (the checkpoint's head has %d)", vocab_size, backbone.vocab_size)
        backbone.reset_head(vocab_size)
    return backbone
