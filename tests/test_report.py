"""The sweep report on synthetic results.json files (made-up numbers written by the test into tmp_path: no
training): table values, cache reduction against the model's MHA job, the Pareto front, failed jobs, the PNGs."""

import csv
import json
from pathlib import Path

import pytest

from asr_attention.reports.sweep import collect, main, pareto_front, write_report

MIB = 2**20


def synthetic_job(sweep: Path, job: str, model: str, attention: dict, *, wer_after=None, cache_mib=None, rtfx=None,
                  status="completed", error=None, d_model=144, num_heads=4, num_layers=4) -> None:
    """A results.json shaped like asr_attention.train's, with SYNTHETIC numbers."""
    res = {
        "status": status,
        "config": {"model": {"name": model, "family": "hf_wav2vec2", "d_model": d_model, "num_heads": num_heads,
                             "num_layers": num_layers, "batch_size": 16, "frame_ms": 20, "position": "none"},
                   "attention": attention},
    }
    if status == "completed":
        res.update(before={"test_wer": wer_after + 0.1, "test_cer": wer_after / 2 + 0.05},
                   after={"test_wer": wer_after, "test_cer": wer_after / 2}, parameters=1_000_000,
                   throughput={"rtfx": rtfx})
        if attention["name"] != "native":
            res["conversion"] = {"cache_mib_per_1000_frames": cache_mib, "fidelity": []}
    if error:
        res["error"] = error
    (sweep / job).mkdir(parents=True)
    (sweep / job / "results.json").write_text(json.dumps(res))


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "sweep"
    # model A: mha is the reference (4.0 MiB); gqa halves it with a worse WER; mla r=32 is dominated by gqa;
    # linear is tiny and worst. Pareto front of (cache, WER): linear, gqa, mha.
    synthetic_job(s, "0", "A", {"name": "mha"}, wer_after=0.10, cache_mib=4.0, rtfx=100.0)
    synthetic_job(s, "1", "A", {"name": "gqa", "num_kv_heads": 2}, wer_after=0.20, cache_mib=2.0, rtfx=150.0)
    synthetic_job(s, "2", "A", {"name": "mla", "latent_dim": 32, "calibration": "plain"}, wer_after=0.25,
                  cache_mib=3.0, rtfx=120.0)
    synthetic_job(s, "3", "A", {"name": "linear", "feature_map": "elu"}, wer_after=0.50, cache_mib=0.01, rtfx=200.0)
    # model B: a failed job, and native (no conversion summary: its cache is MHA's, computed from the config)
    synthetic_job(s, "4", "B", {"name": "gqa", "num_kv_heads": 3}, status="failed",
                  error="ValueError: attention.num_kv_heads=3 is not allowed\nmore lines")
    synthetic_job(s, "10", "B", {"name": "native"}, wer_after=0.30, rtfx=90.0)
    return s


def test_pareto_front_on_a_known_example():
    points = [(4.0, 0.10), (2.0, 0.20), (3.0, 0.25), (0.01, 0.50), (2.0, 0.20), (5.0, 0.10), (0.01, 0.60)]
    assert pareto_front(points) == [True, True, False, True, True, False, False]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [True]


def test_table_values_reduction_and_failed_jobs(sweep):
    rows = {r["job"]: r for r in collect(sweep)}
    assert list(rows) == ["0", "1", "2", "3", "4", "10"]  # numeric job order
    a_gqa = rows["1"]
    assert (a_gqa["model"], a_gqa["attention"], a_gqa["variant"], a_gqa["status"]) == ("A", "gqa", "gqa kv=2",
                                                                                        "completed")
    assert a_gqa["wer_after"] == 0.20 and a_gqa["cer_after"] == 0.10
    assert a_gqa["wer_before"] == pytest.approx(0.30) and a_gqa["cer_before"] == pytest.approx(0.15)
    assert a_gqa["cache_mib_1000"] == 2.0 and a_gqa["cache_reduction_pct"] == pytest.approx(50.0)
    assert rows["0"]["cache_reduction_pct"] == 0.0
    assert rows["2"]["cache_reduction_pct"] == pytest.approx(25.0) and rows["2"]["variant"] == "mla r=32"
    assert rows["3"]["cache_reduction_pct"] == pytest.approx(99.75)
    assert rows["1"]["parameters"] == 1_000_000 and rows["3"]["rtfx"] == 200.0
    # native: fp32 K and V, 144 values each per frame, 4 layers, 1000 frames; it is model B's reference
    native = rows["10"]
    assert native["cache_mib_1000"] == pytest.approx(2 * 144 * 4 * 1000 * 4 / MIB)
    assert native["cache_reduction_pct"] == 0.0
    failed = rows["4"]
    assert failed["status"] == "failed" and failed["error"] == "ValueError: attention.num_kv_heads=3 is not allowed"
    assert failed["wer_after"] is None and failed["rtfx"] is None and failed["cache_mib_1000"] is None


def test_report_files_csv_markdown_and_pngs(sweep, tmp_path):
    out = tmp_path / "out"
    paths = write_report(sweep, out)
    assert {p.name for p in out.iterdir()} == {"report.csv", "report.md", "wer_vs_cache.png", "throughput.png"}
    for png in ("wer_vs_cache", "throughput"):
        assert paths[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[png].stat().st_size > 5000

    with paths["csv"].open() as f:
        table = {r["job"]: r for r in csv.DictReader(f)}
    assert set(table) == {"0", "1", "2", "3", "4", "10"}
    assert float(table["1"]["wer_after"]) == 0.20 and float(table["1"]["cache_reduction_pct"]) == 50.0
    assert table["4"]["status"] == "failed" and table["4"]["wer_after"] == "" and "num_kv_heads=3" in table["4"]["error"]

    md = paths["md"].read_text()
    assert "6 jobs: 5 completed, 1 failed." in md
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| gqa kv=2 ★ | completed | 30.0 | 15.0 | 20.0 | 10.0 | 2.000 | 50.0 | 1,000,000 | 150.0 |" in lines["1"]
    assert "★" not in lines["2"]  # mla r=32: gqa kv=2 has less cache and a lower WER
    assert "★" in lines["0"] and "★" in lines["3"]
    assert "★" not in lines["10"]  # one front over the whole sweep: B native (4.4 MiB, 30%) loses to A mha (4 MiB, 10%)
    assert "| failed |" in lines["4"] and "ValueError: attention.num_kv_heads=3 is not allowed |" in lines["4"]
    assert "Pareto front (no other job has both less cache and a lower WER): A linear elu, A gqa kv=2, " in md
    assert "![WER vs KV cache](wer_vs_cache.png)" in md


def test_cli_writes_into_the_sweep_dir_and_logs_to_an_offline_wandb_run(sweep, capsys):
    from asr_attention.runs.wandb_log import offline_runs, read_offline_run

    assert main([str(sweep), "--wandb"]) == 0
    assert (sweep / "report.md").exists() and (sweep / "wer_vs_cache.png").exists()
    assert "| failed |" in capsys.readouterr().out
    (run_dir,) = offline_runs(sweep)
    run = read_offline_run(run_dir)
    assert run["run"]["job_type"] == "report" and run["run"]["group"] == f"{sweep.parent.name}_{sweep.name}"
    assert run["summary"]["report/table"]["_type"] == "table-file" and run["summary"]["report/table"]["nrows"] == 6
    assert run["summary"]["report/wer_vs_cache"]["_type"] == "image-file"


def test_no_results_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        write_report(tmp_path)
