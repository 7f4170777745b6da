"""Every number in the README's Whisper 1k results tables is a committed run's: each row's per-seed test WER and
its cost (mean ± sd over seeds) are recomputed from the results.json files under benchmarks/quality/whisper_1k/runs
by the study report, at the recipe chosen on val, with superseded shared-order runs left out."""

import re

import pytest

from asr_attention import recipe_choice
from asr_attention.study_report import aggregate, collect

from test_sweep import REPO

SECTION = "### What fine-tuning recovers on Whisper: 1,000 steps"
SITES = {"decoder self + cross": "decoder_self+cross", "decoder self only": "decoder_self", "cross only": "cross",
         "all (encoder too)": "all", "encoder only (seq2seq)": "encoder"}


def variant_label(text: str) -> str:
    """The README's wording of a variant -> the report's label ('mla r = d/4 = 96, plain SVD' -> 'mla r=96')."""
    if text.startswith("mha"):
        return "mha"
    if text.startswith("gqa"):
        return "gqa kv=" + re.search(r"(\d+) KV head", text).group(1)
    if text.startswith("mla"):
        rank = re.search(r"r = [^,]*?(\d+),", text).group(1)
        return f"mla r={rank}" + (" act" if "activation-aware" in text else "")
    return text  # linear elu / linear hedgehog


def readme_rows() -> list[tuple[str, str, str, list[str], str]]:
    """(head, sites, variant, per-seed WER strings, cost string) for each row of the section's two tables."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n### ", 1)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip().replace("**", "") for c in line.strip("|").split("|")]
        if not line.startswith("| ") or cells[0] in ("sites", "variant") or set(cells[0]) <= {"-", ":"}:
            continue
        head, sites = ("seq2seq", SITES[cells.pop(0)]) if len(cells) == 5 else ("ctc", "encoder")
        rows.append((head, sites, variant_label(cells[0]), re.findall(r"\d+\.\d\d", cells[2])[:3], cells[3]))
    return rows


@pytest.fixture(scope="module")
def chosen_results() -> dict[tuple[str, str, str], dict]:
    rows = collect(REPO / "benchmarks/quality/whisper_1k/runs")
    aggs = aggregate(rows, recipe_choice.compare(rows))
    return {(a["head"], a["sites"], a["variant"]): a for a in aggs if a["chosen"]}


def test_readme_tables_are_the_committed_runs(chosen_results):
    rows = readme_rows()
    assert len(rows) == 26  # 19 seq2seq rows + 7 CTC rows: a table the parser missed would fail here
    for head, sites, variant, wers, cost in rows:
        a = chosen_results[(head, sites, variant)]
        runs = sorted(a["runs"], key=lambda r: r["seed"])
        assert a["seeds"] == [0, 1, 2] and a["batch_order"] == "per seed", (sites, variant)
        assert wers == [f"{100 * r['wer_after']:.2f}" for r in runs], (sites, variant)
        if cost == "0":
            assert a["cost_after"] == 0 and a["attention"] == "mha"
        else:
            assert cost == f"{100 * a['cost_after']:+.2f} ± {100 * a['cost_after_sd']:.2f}", (sites, variant)
