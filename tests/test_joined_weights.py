"""A weights file shipped in parts: joined once into the cache, verified, reused; a damaged part is refused naming
the file, and leaves nothing behind (small made-up parts: the real base join is tested in test_whisper_base.py)."""

import hashlib

import pytest

from asr_attention.backbones.whisper.joined_weights import (JoinedWeightsMismatch, SplitFile, cache_root, copy_beside,
                                                            joined_file, stamp_of)


def split_of(tmp_path, contents: list[bytes], sha256: str | None = None) -> SplitFile:
    parts = []
    for i, data in enumerate(contents):
        parts.append(tmp_path / f"parts/model.bin.part{i + 1}")
        parts[-1].parent.mkdir(exist_ok=True)
        parts[-1].write_bytes(data)
    whole = b"".join(contents)
    return SplitFile(tuple(parts), len(whole), sha256 or hashlib.sha256(whole).hexdigest())


def test_parts_are_joined_once_then_reused_while_size_and_stamp_agree(tmp_path):
    split = split_of(tmp_path, [b"abc" * 1000, b"defg" * 500])
    target = tmp_path / "cache/whisper-x/model.bin"
    assert joined_file(split, target) == target
    assert target.read_bytes() == b"abc" * 1000 + b"defg" * 500
    assert stamp_of(target).read_text().strip() == split.sha256
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.bin", "model.bin.verified"]  # no temp file

    for part in split.parts:  # a later load reads neither the parts nor the whole file again
        part.unlink()
    assert joined_file(split, target).read_bytes()[:3] == b"abc"

    target.write_bytes(b"abc")  # a damaged cache (wrong size): joined anew, from parts that must then exist
    with pytest.raises(FileNotFoundError, match=r"model.bin.part1: missing; it is one part of model.bin"):
        joined_file(split, target)


def test_a_stale_stamp_is_joined_again(tmp_path):
    split = split_of(tmp_path, [b"1234", b"5678"])
    target = tmp_path / "model.bin"
    target.write_bytes(b"xxxxxxxx")  # the right size, but no stamp vouches for it
    assert joined_file(split, target).read_bytes() == b"12345678"
    stamp_of(target).write_text("0" * 64)  # a stamp for other weights
    target.write_bytes(b"xxxxxxxx")
    assert joined_file(split, target).read_bytes() == b"12345678"


def test_parts_that_join_to_other_bytes_are_refused_naming_the_file(tmp_path):
    split = split_of(tmp_path, [b"1234", b"5678"], sha256="f" * 64)
    target = tmp_path / "cache/model.bin"
    with pytest.raises(JoinedWeightsMismatch) as err:
        joined_file(split, target)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{target}: joining {split.parts[0]}, {split.parts[1]}")
    assert f"8 bytes with sha256 {hashlib.sha256(b'12345678').hexdigest()}, not the expected 8 bytes with sha256 " \
           f"{'f' * 64}" in message
    assert list(target.parent.iterdir()) == []  # neither the file, a stamp nor the temporary join


def test_files_beside_are_copied_unless_present(tmp_path):
    source = tmp_path / "config.json"
    source.write_text('{"a": 1}')
    folder = tmp_path / "cache"
    copy_beside([source], folder)
    assert (folder / "config.json").read_text() == '{"a": 1}'
    (folder / "config.json").write_text('{"b": 2}')  # same size: kept
    copy_beside([source], folder)
    assert (folder / "config.json").read_text() == '{"b": 2}'
    with pytest.raises(FileNotFoundError, match="tokenizer.json: missing"):
        copy_beside([tmp_path / "tokenizer.json"], folder)


def test_cache_root_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "asr_attention"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home/.cache/asr_attention"
