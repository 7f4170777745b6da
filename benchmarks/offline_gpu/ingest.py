"""Bring a wave's runs home: from the tarballs wave.sh wrote, each run's results.json and .hydra/{config,overrides}.yaml
into RUNS/<line name>/ (the layout the study report and tests/test_committed_runs_reproduce.py read), its W&B offline
run into one tarball, and -- with --done-list -- its sweep line moved from the list still to run into the list of
what ran. Refuses a run that is not completed or a folder that exists: a committed result is never overwritten.

    python benchmarks/offline_gpu/ingest.py WAVE.tgz... --runs benchmarks/quality/whisper_1k/runs/grid_seq2seq \
        --wandb benchmarks/quality/whisper_1k/wandb_offline_runs_6.tgz \
        [--todo-list benchmarks/quality/TODO.sweeps --done-list benchmarks/quality/grid_seq2seq.sweeps]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path, PurePosixPath

KEPT = ("results.json", ".hydra/config.yaml", ".hydra/overrides.yaml")


def wave_runs(tgz: Path) -> dict[str, dict[str, bytes]]:
    """{line name: {kept file: bytes}} of every job folder <wave>/<line>/0/ in a wave tarball; W&B files under
    the 'wandb/' key prefix, by their path from the job folder."""
    runs: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if len(parts) < 4 or parts[2] != "0" or not member.isfile():
                continue
            inside = "/".join(parts[3:])
            if inside in KEPT or inside.startswith("wandb/offline-run-"):
                runs.setdefault(parts[1], {})[inside] = tar.extractfile(member).read()
    return runs


def read_waves(tarballs: list[Path]) -> dict[str, dict[str, bytes]]:
    """Every run of the waves, each read once; a line name in two tarballs is an error."""
    runs: dict[str, dict[str, bytes]] = {}
    for tgz in tarballs:
        for name, files in wave_runs(tgz).items():
            if name in runs:
                raise SystemExit(f"{tgz}: run {name} is in two of the tarballs")
            runs[name] = files
    return runs


def check(runs: dict[str, dict[str, bytes]], runs_dir: Path, wandb_tgz: Path | None) -> None:
    """Every run completed, with its files, and nothing it would write exists yet."""
    for name, files in runs.items():
        missing = [f for f in KEPT if f not in files]
        status = json.loads(files["results.json"]).get("status") if "results.json" in files else None
        if missing or status != "completed":
            raise SystemExit(f"run {name}: status {status!r}, missing {missing}; nothing was written")
        if (runs_dir / name).exists():
            raise SystemExit(f"{runs_dir / name} exists; nothing was written")
    if wandb_tgz is not None and wandb_tgz.exists():
        raise SystemExit(f"{wandb_tgz} exists; nothing was written")


def write(runs: dict[str, dict[str, bytes]], runs_dir: Path, wandb_tgz: Path | None) -> None:
    for name, files in runs.items():
        for kept in KEPT:
            (runs_dir / name / kept).parent.mkdir(parents=True, exist_ok=True)
            (runs_dir / name / kept).write_bytes(files[kept])
    if wandb_tgz is not None:
        with tarfile.open(wandb_tgz, "w:gz") as out:
            for name, files in runs.items():
                for inside, data in files.items():
                    if inside.startswith("wandb/"):
                        info = tarfile.TarInfo(f"{name}/{inside}")
                        info.size = len(data)
                        out.addfile(info, io.BytesIO(data))


def split_lines(names: list[str], todo: Path) -> tuple[list[str], list[str]]:
    """(the list's lines that stay, the lines of `names`, one a name), or an error naming those it lacks."""
    lines = todo.read_text().splitlines(keepends=True)
    ran = [line for line in lines if line.split()[:1] and line.split()[0] in names]
    found = [line.split()[0] for line in ran]
    if sorted(found) != sorted(names):
        raise SystemExit(f"{todo} has no line (or more than one) for: "
                         f"{', '.join(n for n in names if found.count(n) != 1)}; nothing was written")
    return [line for line in lines if line not in ran], ran


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tarballs", nargs="+", type=Path)
    parser.add_argument("--runs", type=Path, required=True, help="folder the run folders go into")
    parser.add_argument("--wandb", type=Path, help="tarball for the runs' W&B offline runs")
    parser.add_argument("--todo-list", type=Path, help="sweep list the runs' lines leave")
    parser.add_argument("--done-list", type=Path, help="sweep list the runs' lines join")
    args = parser.parse_args(argv)
    if (args.todo_list is None) != (args.done_list is None):
        parser.error("--todo-list and --done-list go together")
    runs = read_waves(args.tarballs)
    check(runs, args.runs, args.wandb)  # every check before anything is written
    if args.todo_list is not None:
        stay, ran = split_lines(sorted(runs), args.todo_list)
    write(runs, args.runs, args.wandb)
    if args.todo_list is not None:
        args.todo_list.write_text("".join(stay))
        with args.done_list.open("a") as out:
            out.writelines(ran)
    print(f"{len(runs)} runs into {args.runs}" + (f", W&B into {args.wandb}" if args.wandb else ""))


if __name__ == "__main__":
    main()
