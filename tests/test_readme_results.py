"""Every number in the README's quality-study tables is a committed run's: each row's per-seed test WER and its
cost (mean ± sd over seeds), and the Whisper cost matrix line for line, are recomputed by the study report from
the results.json files under benchmarks/quality/{whisper_1k,encoders_gpu}/runs (Whisper: at the recipe chosen on
val, superseded shared-order runs left out)."""

import re

from asr_attention import cost_matrix, recipe_choice
from asr_attention.study_report import CONTROL_ATTENTIONS, aggregate, collect

from test_sweep import REPO

SECTION = "### What fine-tuning recovers on Whisper: 1,000 steps"
SITES = {"decoder self + cross": "decoder_self+cross"}  # the goal's rows; the other sites are in the cost matrix


def variant_label(text: str) -> str:
    """The README's wording of a variant -> the report's label ('mla r = d/4 = 96, plain SVD' -> 'mla r=96')."""
    if text.startswith("mha"):
        return "mha"
    if text.startswith("gqa"):
        return "gqa kv=" + re.search(r"(\d+) KV head", text).group(1)
    if text.startswith("mla"):
        rank = re.search(r"r = [^,]*?(\d+),", text).group(1)
        label = f"mla r={rank}" + (" act" if "activation-aware" in text else "")
        return label + (" spread" if "ranks spread" in text else "")
    return text  # linear elu / linear hedgehog


def section_text(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    return section[:section.index("\n### ", 1)]


def table_rows(heading: str, leave_out: tuple[str, ...] = ()) -> list[list[str]]:
    """The cells of every table row in the README section under `heading` (header and rule lines, and the lines
    of the tables in `leave_out`, left out)."""
    section = section_text(heading)
    for table in leave_out:
        section = section.replace(table, "")
    rows = [[c.strip().replace("**", "") for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")]
    header_or_rule = ("sites", "variant", "model", "recipe")
    return [cells for cells in rows if cells[0] not in header_or_rule and not set(cells[0]) <= {"-", ":"}]


def all_aggregates(runs: str) -> list[dict]:
    rows = collect(REPO / "benchmarks/quality" / runs / "runs")
    return aggregate(rows, recipe_choice.compare(rows))


def chosen(aggs: list[dict]) -> dict[tuple[str, str, str, str], dict]:
    return {(a["model"], a["head"], a["sites"], a["variant"]): a for a in aggs if a["chosen"]}


def check_row(a: dict, wers: str, cost: str) -> None:
    """The row's seeds 0 / 1 / 2 WER after fine-tuning and its cost ('0' for a control) are the aggregate's."""
    runs = sorted(a["runs"], key=lambda r: r["seed"])
    assert a["seeds"] == [0, 1, 2] and a["batch_order"] == "per seed"
    assert re.findall(r"\d+\.\d\d", wers)[:3] == [f"{100 * r['wer_after']:.2f}" for r in runs]
    if cost == "0":
        assert a["cost_after"] == 0 and a["attention"] == "mha"
    else:
        assert cost == cost_matrix.points(a["cost_after"], a["cost_after_sd"])


def cost_matrix_table(aggs: list[dict]) -> str:
    """The report's cost matrix, table lines only, as the README must hold it."""
    lines = cost_matrix.markdown(aggs, CONTROL_ATTENTIONS)
    return "\n".join(line for line in lines if line.startswith("|"))


def test_readme_whisper_tables_are_the_committed_runs():
    every = all_aggregates("whisper_1k")
    matrix = cost_matrix_table(every)
    assert matrix.count("\n") == 15  # header, rule and 14 variants
    assert matrix in section_text(SECTION)
    aggs, rows = chosen(every), table_rows(SECTION, leave_out=(matrix, readme_table(DISTILL_HEADER)))
    assert len(rows) == 20  # 4 seq2seq rows + 16 CTC rows: a table the parser missed would fail here
    for cells in rows:
        head, sites = ("seq2seq", SITES[cells.pop(0)]) if len(cells) == 5 else ("ctc", "encoder")
        check_row(aggs[("whisper", head, sites, variant_label(cells[0]))], cells[2], cells[3])


DISTILL_HEADER = "| recipe | control test WER % | r = d/2 | r = d/4 | r = d/8 | val, 12 cells |"


def readme_table(header: str) -> str:
    """The README table that starts with the line `header`, all its lines."""
    section = section_text(SECTION)
    lines = section[section.index(header):].splitlines()
    return "\n".join(lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))])


def test_readme_distillation_table_is_the_committed_runs():
    """Per CTC recipe (the chosen one, distilled x 1 and x 10): the control's mean test WER, each MLA rank's cost
    against that control, and the recipe's mean best val WER over the cells it shares with the chosen one (the
    report's head-to-head table)."""
    rows = collect(REPO / "benchmarks/quality/whisper_1k/runs")
    choice = recipe_choice.compare(rows)[("whisper", "ctc", "encoder")]
    aggs = {(a["recipe"], a["variant"]): a for a in aggregate(rows, {("whisper", "ctc", "encoder"): choice})
            if a["head"] == "ctc"}
    table = [[c.strip() for c in line.strip("|").split("|")] for line in readme_table(DISTILL_HEADER).splitlines()]
    assert len(table) == 5  # header, rule, 3 recipes
    for name, control, d2, d4, d8, val in table[2:]:
        weight = re.fullmatch(r"distilled x (\d+)", name)
        recipe = choice["chosen"] + (f"; distilled x {float(weight.group(1))}" if weight else "")
        assert (weight is None) == name.startswith("chosen")
        assert control == f"{100 * aggs[(recipe, 'mha')]['wer_after']:.2f}"
        for cost, rank in ((d2, 192), (d4, 96), (d8, 48)):
            a = aggs[(recipe, f"mla r={rank} act")]
            assert a["seeds"] == [0, 1, 2] and cost == cost_matrix.points(a["cost_after"], a["cost_after_sd"])
        versus = choice["versus"][recipe if weight else choice["chosen"] + "; distilled x 1.0"]
        assert versus["cells"] == 12 and val == f"{100 * versus['mean' if weight else 'chosen_mean']:.2f}"


def test_readme_encoder_table_is_the_committed_runs():
    aggs, rows = chosen(all_aggregates("encoders_gpu")), table_rows("### The shipped AN4 encoders")
    assert len(rows) == 26
    for model, variant, _, zero_shot, wers, cost in rows:
        a = aggs[(model, "ctc", "encoder", variant_label(variant))]
        check_row(a, wers, cost)
        low, high = (min(r["wer_zero_shot"] for r in a["runs"]), max(r["wer_zero_shot"] for r in a["runs"]))
        assert zero_shot == "–".join(dict.fromkeys(f"{100 * w:.2f}" for w in (low, high)))
