"""benchmarks/side_by_side.sh starts a process per sweep line, at most JOBS at once, and reports once all ended.
A stand-in `python` on PATH records when each training process starts and ends, so no training runs here."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/usr/bin/env bash
# -c: the GPU count; -m asr_attention.train: one sweep line (half a second); -m asr_attention.reports.study: the report
case "$*" in
  -c*) echo 1 ;;
  *asr_attention.train*) echo "start $(date +%s.%N)" >> "$EVENTS"; sleep 0.5; echo "end $(date +%s.%N)" >> "$EVENTS" ;;
  *reports.study*) echo "report $(date +%s.%N) $*" >> "$EVENTS" ;;
esac
"""


def events(tmp_path: Path, jobs: str, lines: int) -> list[tuple[str, float]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    sweeps = tmp_path / "list.sweeps"
    sweeps.write_text("# a comment\n\n" + "".join(f"line{i} model=whisper seed={i}\n" for i in range(lines)))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "EVENTS": str(tmp_path / "events"),
           "JOBS": jobs}
    subprocess.run(["bash", "benchmarks/side_by_side.sh", str(sweeps), str(tmp_path / "out"), "trainer=gpu"],
                   cwd=REPO, env=env, check=True, timeout=60)
    return [(kind, float(t)) for kind, t, *_ in (e.split() for e in (tmp_path / "events").read_text().splitlines())]


def most_at_once(log: list[tuple[str, float]]) -> int:
    running = peak = 0
    for kind, _ in sorted(log, key=lambda e: (e[1], e[0] == "start")):  # an end before a start at the same time
        running += {"start": 1, "end": -1}.get(kind, 0)
        peak = max(peak, running)
    return peak


def test_at_most_jobs_lines_run_at_once_and_the_report_comes_last(tmp_path):
    log = events(tmp_path, "2", lines=5)
    assert [k for k, _ in log].count("start") == 5 and [k for k, _ in log].count("end") == 5
    assert most_at_once(log) == 2
    assert log[-1][0] == "report" and log[-1][1] >= max(t for k, t in log if k == "end")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.log")) == [f"line{i}.log" for i in range(5)]


def test_jobs_as_many_as_the_lines_starts_them_all_at_once(tmp_path):
    assert most_at_once(events(tmp_path, "4", lines=4)) == 4
