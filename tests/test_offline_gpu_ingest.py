"""benchmarks/offline_gpu/ingest.py: a wave's tarball (as wave.sh writes it) lands as committed run folders, its W&B
offline runs in one tarball and its sweep lines in the list of what ran -- and nothing lands when a run failed or a
folder exists."""

import io
import json
import subprocess
import sys
import tarfile

import pytest

from test_sweep import REPO

LINE = "{name} experiment=quality_recipe study/variant=mha seed={seed}\n"


def wave_tgz(path, runs):
    """A tarball laid out as wave.sh's: <wave>/<line>/0/{results.json,.hydra/*,checkpoints absent,wandb/...}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, status in runs.items():
            files = {"results.json": json.dumps({"status": status}), ".hydra/config.yaml": "seed: 0\n",
                     ".hydra/overrides.yaml": "- seed=0\n", "train.log": "log\n",
                     "wandb/offline-run-20261201_000000-abc/run-abc.wandb": "wandb bytes",
                     "wandb/debug.log": "not a run\n"}
            for inside, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(f"w1/{name}/0/{inside}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def ingest(*args):
    return subprocess.run([sys.executable, str(REPO / "benchmarks/offline_gpu/ingest.py"), *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture
def lists(tmp_path):
    todo, done = tmp_path / "todo.sweeps", tmp_path / "done.sweeps"
    todo.write_text("# wave 1\n" + LINE.format(name="a", seed=0) + LINE.format(name="b", seed=1)
                    + LINE.format(name="c", seed=2))
    done.write_text("# ran\n")
    return todo, done


def test_a_wave_lands_as_run_folders_wandb_and_moved_lines(tmp_path, lists):
    todo, done = lists
    tgz = wave_tgz(tmp_path / "w1.tgz", {"a": "completed", "b": "completed"})
    runs, wandb = tmp_path / "runs", tmp_path / "wandb.tgz"
    proc = ingest(tgz, "--runs", runs, "--wandb", wandb, "--todo-list", todo, "--done-list", done)
    assert proc.returncode == 0, proc.stderr
    for name in "ab":
        assert sorted(p.relative_to(runs / name).as_posix() for p in (runs / name).rglob("*") if p.is_file()) == [
            ".hydra/config.yaml", ".hydra/overrides.yaml", "results.json"]
    with tarfile.open(wandb) as tar:
        assert sorted(tar.getnames()) == [f"{n}/wandb/offline-run-20261201_000000-abc/run-abc.wandb" for n in "ab"]
    assert todo.read_text() == "# wave 1\n" + LINE.format(name="c", seed=2)
    assert done.read_text() == "# ran\n" + LINE.format(name="a", seed=0) + LINE.format(name="b", seed=1)
    # the same wave again: its folders exist, so nothing is written or moved
    again = ingest(tgz, "--runs", runs)
    assert again.returncode != 0 and "exists; nothing was written" in again.stderr


def test_nothing_lands_when_a_run_did_not_complete_or_has_no_line(tmp_path, lists):
    todo, _ = lists
    runs = tmp_path / "runs"
    failed = ingest(wave_tgz(tmp_path / "f.tgz", {"a": "completed", "b": "failed"}), "--runs", runs)
    assert failed.returncode != 0 and "run b: status 'failed'" in failed.stderr
    stray = wave_tgz(tmp_path / "s.tgz", {"a": "completed", "z": "completed"})
    unlisted = ingest(stray, "--runs", runs, "--todo-list", todo, "--done-list", tmp_path / "done.sweeps")
    assert unlisted.returncode != 0 and "no line (or more than one) for: z" in unlisted.stderr
    assert not runs.exists()
