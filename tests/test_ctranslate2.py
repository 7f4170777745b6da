"""The CTranslate2 model.bin reader: a file written here in the documented format reads back exactly; the real
tiny.en file of the pinned package reads with the expected names and shapes and maps onto transformers' model."""

import struct

import pytest
import torch

from asr_attention.backbones.ctranslate2 import DTYPES, read_model_bin, whisper_state_dict


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(path, variables: dict, aliases: dict, version: int = 6) -> None:
    codes = {dtype: code for code, dtype in DTYPES.items()}
    out = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<I", 1) + struct.pack("<I", len(variables))
    for name, t in variables.items():
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out += _string(name) + struct.pack("<B", t.dim()) + b"".join(struct.pack("<I", s) for s in t.shape)
        out += struct.pack("<BI", codes[t.dtype], len(data)) + data
    out += struct.pack("<I", len(aliases)) + b"".join(_string(a) + _string(t) for a, t in aliases.items())
    path.write_bytes(out)


def test_every_dtype_and_an_alias_read_back_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    variables = {f"v/{dtype}".replace("torch.", ""): (torch.randn(3, 5, generator=g) * 50).to(dtype)
                 for dtype in DTYPES.values()}
    variables["scalar"] = torch.tensor(7, dtype=torch.int32)
    write_model_bin(tmp_path / "model.bin", variables, {"alias/of_half": "v/float16"})
    read = read_model_bin(tmp_path / "model.bin")
    assert set(read) == set(variables) | {"alias/of_half"}
    for name, t in variables.items():
        assert read[name].dtype == t.dtype and torch.equal(read[name], t), name
    assert torch.equal(read["alias/of_half"], variables["v/float16"])


def test_bad_files_fail_naming_the_file(tmp_path):
    write_model_bin(tmp_path / "model.bin", {"a": torch.zeros(2)}, {}, version=5)
    with pytest.raises(ValueError, match="model.bin.*version 5"):
        read_model_bin(tmp_path / "model.bin")
    write_model_bin(tmp_path / "model.bin", {"a": torch.zeros(4)}, {})
    (tmp_path / "model.bin").write_bytes((tmp_path / "model.bin").read_bytes()[:-10])
    with pytest.raises(ValueError, match="model.bin: truncated"):
        read_model_bin(tmp_path / "model.bin")


def test_the_packaged_tiny_en_reads_and_maps_onto_transformers():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from asr_attention.backbones.whisper_load import package_folder

    variables = read_model_bin(package_folder() / "model.bin")
    assert variables["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert variables["decoder/layer_3/attention/linear_1/weight"].shape == (768, 384)
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]  # the alias
    assert variables["encoder/layer_0/self_attention/linear_0/bias"][384:768].abs().max() == 0  # k: no bias
    state = whisper_state_dict(variables)
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=51864, d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
        decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["proj_out.weight"] and unexpected == []  # proj_out is tied to embed_tokens
