"""The GPU studies' runs are reproducible from the committed sweep lists: every line of every list names a folder
of runs (under benchmarks/quality/whisper_1k/runs or encoders_gpu/runs), and composing the line (plus what its
sweep expanded to and the flags side_by_side.sh added, as each run's .hydra/overrides.yaml recorded them) with
today's configs gives each run's stored config, up to the keys that cannot change its numbers
(run_identity.COSMETIC). A preset default that changed since a run must be pinned in its line, or this fails
naming the field."""

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize
from omegaconf import OmegaConf, open_dict

import asr_attention.config.resolvers  # noqa: F401  (registers ${pkg:}, ${floordiv:}, ${sweep_group:})
from asr_attention.runs.identity import COSMETIC, identity
from asr_attention.reports.study import data_seed

from test_sweep import REPO

RUNS = REPO / "benchmarks/quality/whisper_1k/runs"
LISTS = {"whisper_1k": RUNS, **{name: RUNS / name for name in
                               ("recipe", "chosen_recipe", "ctc_recipe", "breadth", "independent_seeds", "grid_ctc",
                                "grid_seq2seq", "ctc_warmup", "ctc_specaugment", "ctc_rank_spread", "ctc_distill")},
         "encoders_gpu": REPO / "benchmarks/quality/encoders_gpu/runs"}


def sweep_lines(name: str) -> list[tuple[str, list[str]]]:
    lines = (REPO / f"benchmarks/quality/{name}.sweeps").read_text().splitlines()
    return [(words[0], words[1:]) for words in (line.split() for line in lines) if words and words[0][0] != "#"]


def job_dirs(folder: Path) -> list[Path]:
    """A line's runs: the folder itself (one job) or one sub-folder per job of its -m sweep."""
    return [folder] if (folder / "results.json").exists() else sorted(p.parent for p in folder.glob("*/results.json"))


def key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def job_overrides(line: list[str], recorded: list[str]) -> list[str]:
    """One job's overrides: the line's, with each sweep on it (`k=a,b`) set to the value this job recorded (one
    of the line's), plus what the line does not set (the preset's sweep, side_by_side.sh's flags)."""
    taken = {key(o): o for o in recorded}
    out = []
    for o in line:
        value = o.split("=", 1)[1]
        if "," in value and value[0] not in "[{'\"":
            assert taken[key(o)].split("=", 1)[1] in value.split(","), (o, taken[key(o)])
            o = taken[key(o)]
        out.append(o)
    on_line = {key(o) for o in line}
    return out + [o for o in recorded if key(o) not in on_line]


def flat(tree, prefix=""):
    """{dotted key: value} without null values: an option added later defaults to null (the earlier behaviour)."""
    if isinstance(tree, dict):
        return {k: v for name, sub in tree.items() for k, v in flat(sub, f"{prefix}{name}.").items()}
    return {} if tree is None else {prefix[:-1]: tree}


def composed_identity(overrides: list[str]) -> dict:
    cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        for dotted in COSMETIC:  # they interpolate Hydra's runtime (run names, W&B folders): not result-determining
            *parents, last = dotted.split(".")
            node = OmegaConf.select(cfg, ".".join(parents)) if parents else cfg
            if node is not None and last in node:
                del node[last]
    return identity(OmegaConf.to_container(cfg, resolve=True))


def mismatches(jobs: list[tuple[Path, list[str]]]) -> list[str]:
    """Each (job dir, its sweep line) whose composed config differs from the stored one, with the fields."""
    found = []
    with initialize(version_base="1.3", config_path="../conf"):
        for job, line in jobs:
            recorded = yaml.safe_load((job / ".hydra/overrides.yaml").read_text())
            config = json.loads((job / "results.json").read_text())["config"]
            # data.seed, absent before conf/train.yaml set it (45c9d44), read as the report reads it
            config.setdefault("data", {})["seed"] = data_seed(config)
            composed = flat(composed_identity(job_overrides(line, recorded)))
            # model.ood_test, absent before issue 31 (a run tested on AN4 alone): the out-of-domain test changes no
            # other number of a run (training/ood.py), so today's default stands for it
            config.setdefault("model", {}).setdefault("ood_test", composed.get("model.ood_test"))
            stored = flat(identity(config))
            diff = [f"{k}: stored {stored.get(k)!r}, composed {composed.get(k)!r}"
                    for k in sorted(stored.keys() | composed.keys()) if stored.get(k) != composed.get(k)]
            if diff:
                found.append(f"{job.relative_to(REPO)}: " + "; ".join(diff))
    return found


def on_every_core(fn, items: list) -> list:
    """fn over slices of items, one forked process per core (composing is pure Python, ~0.35 s a job)."""
    n = max(1, min(os.cpu_count() or 1, len(items)))
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) as pool:
        return [x for part in pool.map(fn, [items[i::n] for i in range(n)]) for x in part]


@pytest.mark.parametrize("list_name", sorted(LISTS))
def test_every_committed_sweep_line_reproduces_its_runs(list_name):
    jobs = []
    for name, line in sweep_lines(list_name):
        dirs = job_dirs(LISTS[list_name] / name)
        assert dirs, f"{list_name}.sweeps line {name}: no run folder under {LISTS[list_name]}"
        jobs += [(job, line) for job in dirs]
    found = on_every_core(mismatches, jobs)
    assert not found, "\n".join(found)
    assert len(jobs) >= len(sweep_lines(list_name))

