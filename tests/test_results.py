"""results.json: rewritten whole after each phase, kept across restarts, written by rank 0 only."""

import json

from asr_attention.runs.results import Results, summary_table


def test_updates_accumulate_and_survive_a_restart(tmp_path):
    path = tmp_path / "results.json"
    Results(path, status="running").update(before={"test_wer": 0.5})
    again = Results(path, status="running")  # a resumed run reads what the killed one wrote
    assert again.get("before") == {"test_wer": 0.5}
    again.update(status="completed")
    assert json.loads(path.read_text()) == {"status": "completed", "before": {"test_wer": 0.5}}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_a_corrupt_results_json_is_named_not_a_json_traceback(tmp_path):
    import pytest

    from asr_attention.runs.results import CorruptResults

    path = tmp_path / "results.json"
    for text, message in (('{"status": ', "is not valid JSON (line 1 column 12: Expecting value)"),
                          ("[1, 2]", "holds a JSON list, not a run's results (an object)")):
        path.write_text(text)
        with pytest.raises(CorruptResults) as err:
            Results(path, status="running")
        assert str(err.value) == f"{path} {message}"
        assert path.read_text() == text  # left as it was


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)  # what Lightning sets in a DDP rank other than 0
    Results(tmp_path / "results.json", status="running")
    assert not (tmp_path / "results.json").exists()


def test_summary_table_shows_before_and_after():
    table = summary_table({
        "config": {"model": {"name": "m"}, "attention": {"name": "gqa"}},
        "before": {"test_wer": 0.164, "test_cer": 0.075}, "after": {"test_wer": 0.149, "test_cer": 0.067},
        "conversion": {"cache_mib_per_1000_frames": 2.197265625}, "parameters": 1133612,
        "throughput": {"rtfx": 833.8, "device": "cpu"},
    })
    assert "16.4 % -> 14.9 %" in table and "7.5 % -> 6.7 %" in table and "2.197 MiB" in table
    assert "1,133,612" in table and "833.8 on cpu" in table


def test_summary_table_of_a_whisper_ctc_run_shows_the_encoder_cache():
    per_site = {"decoder_self_per_token": 12288, "mha_decoder_self_per_token": 12288,
                "cross_per_second": 614400, "mha_cross_per_second": 614400}  # the decoder's: unused under CTC
    run = {"config": {"model": {"name": "whisper", "head": "ctc"}, "attention": {"name": "mla"}},
           "conversion": {"cache_mib_per_1000_frames": 5.859375}, "cache_per_site": per_site}
    table = summary_table(run)
    assert "KV cache per 1000 frames (fp32, batch 1)" in table and "5.859 MiB" in table
    assert "decoder self cache" not in table and "cross cache" not in table
    run["config"]["model"]["head"] = "seq2seq"
    assert "decoder self cache per token" in summary_table(run)
