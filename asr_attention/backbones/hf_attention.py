"""The call HF's attention modules take (wav2vec2, wav2vec2-conformer, Whisper's encoder): a variant wrapped so the
layer calls it as it called the original, and HF's 4-D attention mask turned into a key-padding mask. Shared by
the adapters whose models come from transformers, so no adapter imports another."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asr_attention.attention import AttentionVariant


def key_padding_from_hf(attention_mask: Tensor | None) -> Tensor | None:
    """HF 4-D attention mask (bool keep-mask or additive float) -> (B, T) key padding mask, True = padding."""
    if attention_mask is None:
        return None
    if attention_mask.dtype == torch.bool:
        keep = attention_mask
    else:
        keep = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    if keep.dim() == 2:
        return ~keep
    if keep.dim() != 4:
        raise ValueError(f"unexpected attention_mask of shape {tuple(attention_mask.shape)}")
    keep = keep[:, 0]  # (B, T_q or 1, T_k)
    # The check reads the mask on the host, which a CUDA-graph capture forbids; the eager warm-up calls that a
    # capture needs have checked this model's masks already.
    capturing = keep.is_cuda and torch.cuda.is_current_stream_capturing()
    if keep.shape[-2] > 1 and not capturing and not torch.equal(keep, keep[:, :1].expand_as(keep)):
        raise NotImplementedError("only key-padding attention masks are supported (rows of the mask differ)")
    return ~keep[:, 0]


class SharedKeyPadding:
    """HF hands every encoder layer the same 4-D mask object in one forward: convert and validate it (the check
    is a host sync, which stalls the GPU) once per forward, not once per layer. Holds the last mask until the
    next one comes, so its memory cannot be reused by another mask while remembered."""

    def __init__(self):
        self._source: Tensor | None = None
        self._version = -1
        self._result: Tensor | None = None

    def __call__(self, attention_mask: Tensor | None) -> Tensor | None:
        if attention_mask is None:
            return None
        # Inference tensors (Lightning evaluates under torch.inference_mode) keep no version counter.
        version = None if attention_mask.is_inference() else attention_mask._version
        if attention_mask is not self._source or version != self._version:
            self._result = key_padding_from_hf(attention_mask)
            self._source, self._version = attention_mask, version
        return self._result

    def forget(self) -> None:
        """Called at the start of every forward: a mask is never reused across forwards, even one written in
        place under inference mode (where no version counter would show the write)."""
        self._source = self._result = None


class HFAttention(nn.Module):
    """A variant in the place of Wav2Vec2Attention / Wav2Vec2ConformerSelfAttention: same call, same return."""

    def __init__(self, variant: AttentionVariant, key_padding: SharedKeyPadding | None = None):
        super().__init__()
        self.variant = variant
        self.key_padding = key_padding or SharedKeyPadding()

    @staticmethod
    def variant_inputs(
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        relative_position_embeddings: Tensor | None = None,
        key_value_states: Tensor | None = None,
        position: str = "none",
        key_padding=key_padding_from_hf,
        **kwargs,
    ) -> dict:
        if key_value_states is not None:
            raise NotImplementedError("cross-attention (key_value_states) is not supported")
        pos = relative_position_embeddings
        if position == "rotary_input":
            pos = pos[:, :, 0, 0, :]  # (2, T, 1, 1, hd) -> (2, T, hd)
        elif position == "none":
            pos = None
        return {"x": hidden_states, "key_padding_mask": key_padding(attention_mask), "pos": pos}

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> tuple[Tensor, None]:
        # Wav2Vec2Attention's second positional argument is key_value_states; layers here pass keywords only.
        if args:
            raise TypeError("HFAttention takes hidden_states positionally and everything else by keyword")
        kwargs.pop("output_attentions", None)
        inputs = self.variant_inputs(hidden_states, position=self.variant.position, key_padding=self.key_padding,
                                     **kwargs)
        out, _ = self.variant(**inputs)
        return out, None
