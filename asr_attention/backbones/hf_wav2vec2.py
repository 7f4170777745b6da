"""Hugging Face wav2vec2 family: `Wav2Vec2ForCTC` and `Wav2Vec2ConformerForCTC` (transformers 5.17).

Where attention lives and how the layer calls it:
  Wav2Vec2ForCTC:          model.wav2vec2.encoder.layers[i].attention = Wav2Vec2Attention
                           called as attention(hidden_states, attention_mask=mask, **kwargs)
  Wav2Vec2ConformerForCTC: model.wav2vec2_conformer.encoder.layers[i].self_attn = Wav2Vec2ConformerSelfAttention
                           called as self_attn(hidden_states=..., attention_mask=mask,
                                               relative_position_embeddings=pos, **kwargs)
  Both must return a tuple (out, attn_weights or None).
  mask: None (no padding), sdpa: bool keep-mask, eager: additive float (0 keep, dtype-min drop); (B,1,T,T) or
        (B,1,1,T). Converted here to key_padding_mask (B, T), True = padding.
  pos:  "relative": (1, 2T-1, d) sinusoids (linear_pos is applied inside attention) -> canonical "xl" as is;
        "rotary": stack(cos, sin) shaped (2, T, 1, 1, hd) -> canonical "rotary_input" (2, T, hd).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2ConformerConfig,
    Wav2Vec2ConformerForCTC,
    Wav2Vec2ForCTC,
    Wav2Vec2PreTrainedModel,
)

from asr_attention.attention import AttentionVariant, CanonicalMHA

from .base import Backbone, arch_of, check_sizes, checkpoint_dir
from .hf_attention import HFAttention, SharedKeyPadding

log = logging.getLogger(__name__)

CLASSES = {"Wav2Vec2ForCTC": (Wav2Vec2ForCTC, Wav2Vec2Config), "Wav2Vec2ConformerForCTC": (Wav2Vec2ConformerForCTC, Wav2Vec2ConformerConfig)}
HF_POSITIONS = {None: "none", "relative": "xl", "rotary": "rotary_input"}
# A checkpoint folder (the hub repos facebook/wav2vec2-large-960h and facebook/wav2vec2-conformer-rel-pos-large-960h-ft
# hold pytorch_model.bin with the legacy weight_g / weight_v names, which transformers renames on load)
NEEDS = ("config.json", ("model.safetensors", "pytorch_model.bin"))
HUB_NEEDS = ("vocab.json", "preprocessor_config.json")  # the hub repos have them: missing = a partial download
OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def position_type(module: nn.Module) -> str:
    hf_type = getattr(module, "position_embeddings_type", None)
    if hf_type not in HF_POSITIONS:
        # transformers itself silently runs such a module without any position term; we refuse.
        raise ValueError(
            f"position_embeddings_type={hf_type!r} is not one of {sorted(k for k in HF_POSITIONS if k)} or None"
        )
    return HF_POSITIONS[hf_type]


def zero_mean_unit_var(waves: Tensor, wave_lengths: Tensor, eps: float = 1e-7) -> Tensor:
    """Per utterance over its valid samples, padding kept at 0: Wav2Vec2FeatureExtractor's normalisation, in torch
    so it runs on the batch's device (tests compare it with the extractor's own)."""
    valid = torch.arange(waves.shape[1], device=waves.device)[None] < wave_lengths[:, None]
    n = wave_lengths[:, None].clamp_min(1)
    mean = (waves * valid).sum(1, keepdim=True) / n
    var = (((waves - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return ((waves - mean) / torch.sqrt(var + eps)) * valid


class HFWav2Vec2(Backbone):
    family = "hf_wav2vec2"

    def __init__(self, model: Wav2Vec2PreTrainedModel, vocab: list[str] | None = None, normalize_waves: bool = True):
        super().__init__()
        self.model = model
        # the CTC head defines the vocabulary: tokenizers may list special tokens (<s>, </s>) beyond it
        self.vocab = None if vocab is None else vocab[: model.lm_head.out_features]
        cfg = model.config
        self.blank_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        # wav2vec2 with a group-norm feature extractor was trained without an attention mask: pad with zeros
        # and pass none. Layer-norm extractors (large-lv60, conformer) take the mask.
        self.use_attention_mask = cfg.feat_extract_norm == "layer"
        # The checkpoints' feature extractors normalise each utterance (do_normalize=True in
        # preprocessor_config.json of wav2vec2-large-960h and the conformer checkpoints); so does this adapter.
        self.normalize_waves = normalize_waves
        stride = 1
        for s in cfg.conv_stride:
            stride *= s
        self.frame_ms = 1000.0 * stride / 16000
        self.key_padding = SharedKeyPadding()  # one per model, shared by its patched layers
        for p in self.unused_parameters():
            p.requires_grad_(False)

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters HF builds that this forward never uses: frozen at build, because DDP waits for a gradient of
        every parameter that requires one and fails on these. Wav2Vec2ConformerEncoder builds a pos_conv_embed it
        never calls; masked_spec_embed only replaces time-masked frames (SpecAugment in training)."""
        cfg, base = self.model.config, self.model.base_model
        unused = []
        if isinstance(self.model, Wav2Vec2ConformerForCTC):
            unused += self.encoder.pos_conv_embed.parameters()
        time_masking = getattr(cfg, "apply_spec_augment", True) and cfg.mask_time_prob > 0
        if hasattr(base, "masked_spec_embed") and not time_masking:
            unused.append(base.masked_spec_embed)
        return unused

    @property
    def encoder(self) -> nn.Module:
        return self.model.base_model.encoder

    @property
    def vocab_size(self) -> int:
        return self.model.lm_head.out_features

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.model.lm_head.parameters())

    def reset_head(self, vocab_size: int) -> None:
        """A fresh CTC head over another vocabulary (the checkpoint's head is kept when sizes agree)."""
        d = self.model.lm_head.in_features
        self.model.lm_head = nn.Linear(d, vocab_size)
        self.model.config.vocab_size = vocab_size
        self.vocab = None
        self.fresh_head = True

    def forward(self, waves: Tensor, wave_lengths: Tensor) -> tuple[Tensor, Tensor]:
        self.key_padding.forget()
        mask = None
        if self.use_attention_mask:
            mask = torch.arange(waves.shape[1], device=waves.device)[None] < wave_lengths[:, None]
        if self.normalize_waves:
            waves = zero_mean_unit_var(waves, wave_lengths)
        logits = self.model(waves, attention_mask=mask).logits
        out_lengths = self.model._get_feat_extract_output_lengths(wave_lengths).clamp(max=logits.shape[1])
        return logits.float().log_softmax(-1), out_lengths

    def attention_sites(self) -> Iterator[tuple[nn.Module, str, nn.Module]]:
        name = "self_attn" if isinstance(self.model, Wav2Vec2ConformerForCTC) else "attention"
        for layer in self.encoder.layers:
            yield layer, name, getattr(layer, name)

    def to_canonical(self, original: nn.Module) -> CanonicalMHA:
        if hasattr(original, "q_proj"):  # Wav2Vec2Attention
            q, k, v, o = original.q_proj, original.k_proj, original.v_proj, original.out_proj
            return CanonicalMHA(
                q.weight.detach(), k.weight.detach(), v.weight.detach(), o.weight.detach(),
                _bias(q), _bias(k), _bias(v), _bias(o),
                num_heads=original.num_heads, scale=original.scaling, position="none",
                dropout=original.config.attention_dropout,
            )
        # Wav2Vec2ConformerSelfAttention
        q, k, v, o = original.linear_q, original.linear_k, original.linear_v, original.linear_out
        position = position_type(original)
        xl = position == "xl"
        return CanonicalMHA(
            q.weight.detach(), k.weight.detach(), v.weight.detach(), o.weight.detach(),
            _bias(q), _bias(k), _bias(v), _bias(o),
            num_heads=original.num_heads, scale=original.scaling, position=position,
            pos_bias_u=original.pos_bias_u.detach() if xl else None,  # (H, hd) already
            pos_bias_v=original.pos_bias_v.detach() if xl else None,
            linear_pos_weight=original.linear_pos.weight.detach() if xl else None,
            dropout=original.config.attention_dropout,
        )

    def wrap(self, variant: AttentionVariant) -> nn.Module:
        return HFAttention(variant, self.key_padding)

    def variant_inputs(self, args: tuple, kwargs: dict) -> dict:
        position = HF_POSITIONS.get(getattr(self.model.config, "position_embeddings_type", None), "none")
        return HFAttention.variant_inputs(*args, position=position, **kwargs)


def _bias(linear: nn.Linear) -> Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


# ---------------------------------------------------------------------------------------------- building


def build_hf_wav2vec2(model_cfg: Mapping, vocab_size: int | None = None) -> HFWav2Vec2:
    arch = arch_of(model_cfg)
    class_name = arch.pop("hf_class", "Wav2Vec2ForCTC")
    if class_name not in CLASSES:
        raise ValueError(f"model.arch.hf_class={class_name!r} is not one of {sorted(CLASSES)}")
    model_cls, config_cls = CLASSES[class_name]
    attn_impl = arch.pop("attn_implementation", "sdpa")
    normalise = True
    if model_cfg.get("pretrained", True):
        model, vocab, normalise = _load_pretrained(model_cls, config_cls, model_cfg, attn_impl, arch)
    else:
        config = config_cls(
            hidden_size=int(model_cfg["d_model"]),
            num_attention_heads=int(model_cfg["num_heads"]),
            num_hidden_layers=int(model_cfg["num_layers"]),
            vocab_size=int(vocab_size or arch.pop("vocab_size", 32)),
            layerdrop=0.0,
            **arch,
        )
        if class_name == "Wav2Vec2ConformerForCTC":
            position_type(config)  # an unknown type raises here, before any weights are made
        model, vocab = model_cls._from_config(config, attn_implementation=attn_impl), None
    backbone = HFWav2Vec2(model, vocab, normalise)
    if vocab_size is not None and vocab_size != backbone.vocab_size:
        log.info("new CTC head: %d outputs (the checkpoint's head has %d)", vocab_size, backbone.vocab_size)
        backbone.reset_head(vocab_size)
    return backbone


def _load_pretrained(model_cls, config_cls, model_cfg: Mapping, attn_impl: str, overrides: dict):
    source = str(model_cfg["source"])
    folder = checkpoint_dir(source, NEEDS, HUB_NEEDS, OPTIONAL)
    try:
        config = config_cls.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder / 'config.json'} is not a readable {config_cls.__name__}: {err}") from err
    check_sizes(source, [
        ("model.d_model", model_cfg["d_model"], "hidden_size", config.hidden_size),
        ("model.num_heads", model_cfg["num_heads"], "num_attention_heads", config.num_attention_heads),
        ("model.num_layers", model_cfg["num_layers"], "num_hidden_layers", config.num_hidden_layers),
    ])
    if model_cls is Wav2Vec2ConformerForCTC:
        position_type(config)
    overrides.setdefault("layerdrop", 0.0)
    for key, value in overrides.items():
        setattr(config, key, value)
    # fp32 master weights whatever the checkpoint's storage dtype (fp16 exports); AMP decides compute precision
    model, info = model_cls.from_pretrained(
        folder, config=config, attn_implementation=attn_impl, dtype=torch.float32, output_loading_info=True
    )
    # transformers initialises what the file lacks at random and only logs it; a CTC head may be new (base models)
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("lm_head."))
    if len(missing) < len(info["missing_keys"]):
        log.warning("%s has no CTC head: a new one, trained from scratch", source)
    if missing:
        raise ValueError(f"the weights in {folder} lack {len(missing)} of {model_cls.__name__}'s tensors, e.g. "
                         f"{missing[:4]}: they would be random")
    return model, _load_vocab(folder), _normalises_waves(folder)


def _normalises_waves(folder: Path) -> bool:
    """preprocessor_config.json: whether the checkpoint's feature extractor normalises each utterance (do_normalize).
    It must expect what this adapter feeds: 16 kHz mono samples, zero padded. Folders without one (save_pretrained
    exports) keep the seed checkpoints' setting, True."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return True
    cfg = json.loads(path.read_text())
    for field, ours in (("sampling_rate", 16000), ("feature_size", 1), ("padding_value", 0.0)):
        if cfg.get(field, ours) != ours:
            raise ValueError(f"{path}: {field}={cfg[field]!r}, but this adapter feeds {field}={ours!r}")
    return bool(cfg.get("do_normalize", True))


def _load_vocab(folder: Path) -> list[str] | None:
    """The checkpoint's character vocabulary (vocab.json of its CTC tokenizer), by id; None if it has none."""
    from transformers import Wav2Vec2CTCTokenizer

    try:
        tok = Wav2Vec2CTCTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError):
        return None
    by_id = {i: t for t, i in tok.get_vocab().items()}
    return [by_id[i] for i in range(len(by_id))]
