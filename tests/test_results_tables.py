"""Every number in the WER tables of the README and docs/ is a committed run's or report's. The quality-study tables
are recomputed by the study report from the results.json files under benchmarks/quality/<study>/runs (at the
recipe chosen on val, superseded shared-order runs left out); the others are read from their committed reports.
Tables are read as cells (tests/markdown_tables.py), never sentences."""

from __future__ import annotations

import csv
import json
import re
import statistics
from functools import cache
from pathlib import Path

from asr_attention.reports import cost_matrix, recipe_choice
from asr_attention.reports.study import CONTROL_ATTENTIONS, aggregate, collect

from markdown_tables import REPO, assert_shown, header_line, numbers, shown, table, tables

README, RESULTS, SCORING = REPO / "README.md", REPO / "docs/results.md", REPO / "docs/scoring.md"

HEADLINE = "| model: sites converted | attention | cache removed | cost after fine-tuning, WER points | report |"
GOAL_ROWS = "| sites | variant | decode cache cut (window) | WER after %, seeds 0 / 1 / 2 | cost after, points |"
COST_MATRIX = "| variant | decoder self | cross | decoder self + cross | all (encoder too) | encoder |"
CTC = "| variant | encoder cache cut | WER after % | cost after, points |"
DISTILL = "| recipe | control test WER % | r = d/2 | r = d/4 | r = d/8 | val, 12 cells |"
ENCODERS = ("| model | variant | encoder K/V cache cut | WER zero-shot % | WER after %, seeds 0 / 1 / 2 | "
            "cost after, points |")
ZERO_SHOT = "| variant | encoder | decoder_self | cross | decoder_self+cross |"
WHISPER_200 = ("| variant (decoder self + cross) | decode cache cut | WER zero-shot % | WER after % (seeds 0 / 1 / 2) | "
               "cost after, points (mean) |")
DEMO_SWEEP = ("| model | attention | WER before → after % | CER before → after % | cache MiB / 1000 frames | "
              "cache saved |")
SCORING_TABLE = "| scoring | WER % |"
RETENTION = ("| model | decoder self + cross | cache cut | AN4 after % | vs control | speechocean762: original → after % | "
             "vs original | goal |")
CHECKED = {HEADLINE, GOAL_ROWS, COST_MATRIX, CTC, DISTILL, ENCODERS, ZERO_SHOT, WHISPER_200, DEMO_SWEEP,
           SCORING_TABLE, RETENTION}

# The README's wording of where a headline row converted -> the study report's (model, head, sites)
HEADLINE_SITES = {"Whisper tiny.en: decoder self + cross": ("whisper", "seq2seq", "decoder_self+cross"),
                  "Whisper tiny.en: cross": ("whisper", "seq2seq", "cross"),
                  "Whisper tiny.en: encoder, new CTC head": ("whisper", "ctc", "encoder"),
                  "AN4 Branchformer: encoder": ("branchformer_demo", "ctc", "encoder"),
                  "AN4 Conformer: encoder": ("conformer_demo", "ctc", "encoder")}


def variant_label(text: str) -> str:
    """A table's wording of a variant -> the report's label ('mla r = d/4 = 96, plain SVD' -> 'mla r=96')."""
    if text.startswith("mha"):
        return "mha"
    if text.startswith("gqa"):
        return "gqa kv=" + re.search(r"(\d+) KV head", text).group(1)
    if text.startswith("mla"):
        rank = re.search(r"r = [^,]*?(\d+),", text).group(1)
        label = f"mla r={rank}" + (" act" if "activation-aware" in text else "")
        return label + (" spread" if "ranks spread" in text else "")
    return text  # linear elu / linear hedgehog


@cache
def study(name: str) -> tuple[list[dict], dict, list[dict]]:
    """A committed study's runs, its recipe choice and its aggregates."""
    rows = collect(REPO / "benchmarks/quality" / name / "runs")
    choices = recipe_choice.compare(rows)
    return rows, choices, aggregate(rows, choices)


def chosen(name: str) -> dict[tuple[str, str, str, str], dict]:
    return {(a["model"], a["head"], a["sites"], a["variant"]): a for a in study(name)[2] if a["chosen"]}


def width(results_json: Path) -> int:
    return json.loads(results_json.read_text())["config"]["model"]["d_model"]


def check_rank(name: str, a: dict, text: str) -> None:
    """'r = d/4 = 96' (or 'r = d = 384'): the rank is that fraction of the model width the run stored."""
    check_fraction(text, width(REPO / "benchmarks/quality" / name / "runs" / a["runs"][0]["job"] / "results.json"))


def check_fraction(text: str, d_model: int) -> None:
    rank = re.search(r"r = d(?:/(\d+))? = (\d+)", text)
    assert rank or not text.startswith("mla"), text
    if rank:
        assert int(rank.group(2)) * int(rank.group(1) or 1) == d_model, text


def check_cut(a: dict, cell: str) -> None:
    """The cache cut over one window (a CTC encoder: 30 s of its cache), as shown; '(fixed state)' for linear."""
    assert_shown([a["reduction_window"]], cell, f"{a['variant']} cache cut")
    assert ("fixed state" in cell) == bool(a["cache_fixed"]), f"{a['variant']}: {cell!r}"


def check_row(a: dict, wers: str, cost: str) -> None:
    """The row's seeds 0 / 1 / 2 WER after fine-tuning (and their mean, where shown) and its cost ('0' for a
    control) are the aggregate's."""
    runs = sorted(a["runs"], key=lambda r: r["seed"])
    assert a["seeds"] == [0, 1, 2] and a["batch_order"] == "per seed"
    tokens = numbers(wers)
    assert tokens[:3] == [f"{100 * r['wer_after']:.2f}" for r in runs], (a["variant"], wers)
    assert tokens[3:] in ([], [f"{100 * a['wer_after']:.2f}"]), (a["variant"], wers)
    if cost == "0":
        assert a["cost_after"] == 0 and a["attention"] == "mha"
    else:
        assert cost == cost_matrix.points(a["cost_after"], a["cost_after_sd"]), (a["variant"], cost)


def test_readme_headline_table_is_the_committed_runs():
    for row in table(README, HEADLINE):
        name = re.fullmatch(r"\[\w+\]\(benchmarks/quality/(\w+)/study\.md\)", row["report"]).group(1)
        model, head, sites = HEADLINE_SITES[row["model: sites converted"]]
        a = chosen(name)[(model, head, sites, variant_label(row["attention"]))]
        check_rank(name, a, row["attention"])
        assert a["seeds"] == [0, 1, 2] and a["batch_order"] == "per seed"
        assert row["cost after fine-tuning, WER points"] == cost_matrix.points(a["cost_after"], a["cost_after_sd"])
        check_cut(a, row["cache removed"])


def test_whisper_goal_rows_and_ctc_table_are_the_committed_runs():
    aggs = chosen("whisper_1k")
    goal_rows, ctc_rows = table(RESULTS, GOAL_ROWS), table(RESULTS, CTC)
    assert len(goal_rows) == 4 and len(ctc_rows) == 16
    for row in goal_rows:
        assert row["sites"] == "decoder self + cross"
        a = aggs[("whisper", "seq2seq", "decoder_self+cross", variant_label(row["variant"]))]
        check_rank("whisper_1k", a, row["variant"])
        check_row(a, row["WER after %, seeds 0 / 1 / 2"], row["cost after, points"])
        check_cut(a, row["decode cache cut (window)"])
    for row in ctc_rows:
        a = aggs[("whisper", "ctc", "encoder", variant_label(row["variant"]))]
        check_rank("whisper_1k", a, row["variant"])
        check_row(a, row["WER after %"], row["cost after, points"])
        check_cut(a, row["encoder cache cut"])


def test_whisper_cost_matrix_is_the_report_s():
    """The docs' cost matrix is, line for line, the one the study report builds from the runs."""
    lines = cost_matrix.markdown(study("whisper_1k")[2], CONTROL_ATTENTIONS)
    report = [line for line in lines if line.startswith("|")]
    assert len(report) == 16  # header, rule and 14 variants
    docs = [t for t in tables(RESULTS) if t[0] == report[0].strip("| ").split(" | ")]
    assert len(docs) == 1
    assert ["| " + " | ".join(cells) + " |" for cells in docs[0]] == [report[0], *report[2:]]


def test_distillation_table_is_the_committed_runs():
    """Per CTC recipe (the chosen one, distilled x 1 and x 10): the control's mean test WER, each MLA rank's cost
    against that control, and the recipe's mean best val WER over the cells it shares with the chosen one (the
    report's head-to-head table)."""
    rows, choices, _ = study("whisper_1k")
    choice = choices[("whisper", "ctc", "encoder")]
    aggs = {(a["recipe"], a["variant"]): a for a in aggregate(rows, {("whisper", "ctc", "encoder"): choice})
            if a["head"] == "ctc"}
    recipes = table(RESULTS, DISTILL)
    assert len(recipes) == 3
    for row in recipes:
        weight = re.fullmatch(r"distilled x (\d+)", row["recipe"])
        assert (weight is None) == row["recipe"].startswith("chosen")
        recipe = choice["chosen"] + (f"; distilled x {float(weight.group(1))}" if weight else "")
        assert row["control test WER %"] == f"{100 * aggs[(recipe, 'mha')]['wer_after']:.2f}"
        for column, rank in (("r = d/2", 192), ("r = d/4", 96), ("r = d/8", 48)):
            a = aggs[(recipe, f"mla r={rank} act")]
            assert a["seeds"] == [0, 1, 2] and row[column] == cost_matrix.points(a["cost_after"], a["cost_after_sd"])
        versus = choice["versus"][recipe if weight else choice["chosen"] + "; distilled x 1.0"]
        mean = versus["mean" if weight else "chosen_mean"]
        assert versus["cells"] == 12 and row["val, 12 cells"] == f"{100 * mean:.2f}"


def test_encoder_table_is_the_committed_runs():
    aggs, rows = chosen("encoders_gpu"), table(RESULTS, ENCODERS)
    assert len(rows) == 26
    for row in rows:
        a = aggs[(row["model"], "ctc", "encoder", variant_label(row["variant"]))]
        check_rank("encoders_gpu", a, row["variant"])
        check_row(a, row["WER after %, seeds 0 / 1 / 2"], row["cost after, points"])
        check_cut(a, row["encoder K/V cache cut"])
        zero_shot = [100 * r["wer_zero_shot"] for r in a["runs"]]
        assert row["WER zero-shot %"] == "–".join(dict.fromkeys(f"{w:.2f}" for w in (min(zero_shot), max(zero_shot))))


def test_zero_shot_table_is_the_committed_report():
    report = REPO / "benchmarks/whisper_zero_shot.md"
    assert table(RESULTS, ZERO_SHOT) == table(report, ZERO_SHOT)


def test_whisper_200_steps_table_is_the_committed_runs():
    folder = REPO / "benchmarks/quality/whisper_small"
    runs = [r for name in ("study_runs_seed0.csv", "study_runs_seeds12.csv") for r in csv.DictReader(open(folder / name))]
    rows = table(RESULTS, WHISPER_200)
    assert len(rows) == 3
    for row in rows:
        label = variant_label(row["variant (decoder self + cross)"])
        check_fraction(row["variant (decoder self + cross)"], width(folder / "seed0_mha_results.json"))
        seeds = sorted((r for r in runs if r["variant"] == label), key=lambda r: int(r["seed"]))
        assert [int(r["seed"]) for r in seeds] == [0, 1, 2] and {r["status"] for r in seeds} == {"completed"}
        first = seeds[0]
        assert_shown([100 - 100 * float(first["cache_window"]) / float(first["control_cache_window"])],
                     row["decode cache cut"], label)
        for r in seeds:
            assert shown(100 * float(r["wer_zero_shot"]), row["WER zero-shot %"]), (label, r["seed"])
        assert_shown([100 * float(r["wer_after"]) for r in seeds], row["WER after % (seeds 0 / 1 / 2)"], label)
        costs = [float(r["cost_after"]) for r in seeds]
        if row["cost after, points (mean)"] == "0":
            assert label == "mha" and costs == [0.0, 0.0, 0.0]
        else:
            assert_shown([100 * statistics.mean(costs)], row["cost after, points (mean)"], label)


def test_demo_sweep_table_is_the_committed_report():
    report = {(r["model"], r["attention"]): r for r in table(REPO / "benchmarks/demo_sweep/report.md",
              "| job | model | attention | status | WER before % | CER before % | WER after % | CER after % | "
              "cache MiB / 1000 frames | cache reduction % | parameters | RTFx | error |")}
    rows = table(RESULTS, DEMO_SWEEP)
    assert len(rows) == len(report) == 8
    for row in rows:
        job = report[(row["model"], row["attention"])]
        assert job["status"] == "completed"
        pairs = [("WER before → after %", ("WER before %", "WER after %")),
                 ("CER before → after %", ("CER before %", "CER after %")),
                 ("cache MiB / 1000 frames", ("cache MiB / 1000 frames",)),
                 ("cache saved", ("cache reduction %",))]
        for column, sources in pairs:
            assert_shown([float(job[s].replace(",", "")) for s in sources], row[column], f"{row['model']} {column}")


def test_scoring_table_is_the_committed_transcripts():
    from asr_attention.bench.whisper_reference import read, wers

    measured = wers(read())
    rows = table(SCORING, SCORING_TABLE)
    keys = {"raw (texts as written)": "raw",
            "case and punctuation folded (`data.text.normalise`)": "case_and_punctuation",
            "`data.scoring.normalise_for_scoring` (references uncased, Whisper's output cased)": "scoring_normaliser"}
    assert [row["scoring"] for row in rows] == list(keys)
    for row in rows:
        assert_shown([measured[keys[row["scoring"]]]], row["WER %"], row["scoring"])


def test_retention_table_is_the_committed_report():
    """The README's retention rows: the retention report's aggregates at the chosen recipe (reports/retention.py over
    benchmarks/quality/retention/runs), one row each, the goal verdict included."""
    report = json.loads((REPO / "benchmarks/quality/retention/retention.json").read_text())
    aggs = {(a["model"], a["variant"]): a for a in report["aggregates"] if a["chosen"]}
    rows = table(README, RETENTION)
    assert len(rows) == len(aggs)
    for row in rows:
        model = {"Whisper tiny.en": "whisper", "Whisper base": "whisper-base"}[row["model"]]
        cell = row["decoder self + cross"]
        variant = "mha" if cell == "mha (control)" else f"mla r={numbers(cell.split(',')[0])[0]} act"
        assert ("activation-aware" in cell) == variant.endswith(" act"), cell
        variant += " cross-memory" if "cross-memory" in cell else ""
        a = aggs[(model, variant)]
        label = f"{model} {variant}"
        assert_shown([a["cut_window"]], row["cache cut"], label)
        assert row["goal"].strip("*") == {True: "met", False: "missed",
                                          None: "" if a["control"] else "not measured"}[a["goal"]], label
        ood = row["speechocean762: original → after %"]
        if a["wer_after"] is None:
            assert row["AN4 after %"] == "not measured" and ood.endswith("not measured"), label
            assert_shown([100 * a["ood_wer_original"]], ood, label)
            continue
        assert_shown([100 * a["wer_after"], 100 * a["wer_after_sd"]], row["AN4 after %"], label)
        if a["control"]:
            assert row["vs control"] == "", label
        else:
            assert_shown([100 * a["test_vs_control"], 100 * a["test_vs_control_sd"]], row["vs control"], label)
        assert_shown([100 * a["ood_wer_original"], 100 * a["ood_wer_after"], 100 * a["ood_wer_after_sd"]], ood, label)
        assert_shown([100 * a["ood_vs_original"], 100 * a["ood_vs_original_sd"]], row["vs original"], label)


def test_zero_shot_per_site_table_is_the_committed_rows():
    """benchmarks/zero_shot/README.md's per-site table: every cell is WER from the stored transcripts of the row it
    names (reports/zero_shot.wer, Whisper's English normaliser), blank exactly where no row was stored."""
    from asr_attention.reports.zero_shot import wer

    folder = REPO / "benchmarks/zero_shot"
    stored = {m: json.loads((folder / f"{m}_speechocean762_H100.json").read_text()) for m in ("whisper", "whisper_base")}
    header = ("| variant | tiny.en: decoder self | cross | self + cross | base: decoder self | cross | "
              "self + cross |")
    (matched,) = [t for t in tables(folder / "README.md") if header_line(t[0]) == header]
    rows = [{"variant": cells[0], "cells": cells[1:]} for cells in matched[1:]]  # the header repeats its names
    columns = [("whisper", "decoder_self"), ("whisper", "cross"), ("whisper", "decoder_self+cross"),
               ("whisper_base", "decoder_self"), ("whisper_base", "cross"), ("whisper_base", "decoder_self+cross")]
    for row in rows:
        variant = row["variant"].replace(" (elu)", "")
        assert len(row["cells"]) == len(columns), row
        for cell, (model, site) in zip(row["cells"], columns):
            measured = stored[model].get(f"{variant} @ {site}")
            label = f"{model} {variant} @ {site}"
            if measured is None:
                assert cell == "", label
                continue
            assert measured["measured_with"]["limit"] == 200 and measured["measured_with"]["device"] == "cuda", label
            assert_shown([100 * wer(measured["predictions"], True, "english")], cell, label)
    named = {r["variant"].replace(" (elu)", "") for r in rows}
    assert named == {k.split(" @ ")[0] for m in stored.values() for k in m if k != "unconverted"}
