"""No table in the README or docs/ escapes the results-table tests: each is checked against committed runs or
reports by test_results_tables.py or test_speed_tables.py, or is named here as holding no results."""

import test_results_tables
import test_speed_tables
from markdown_tables import DOCUMENTS, header_line, tables

# What each attention variant is (names, conversions, cache formulas); the retention knobs (docs/whisper.md): no
# measured numbers
NO_RESULTS = {"| attention | converted how | cache per frame per layer |", "| key | default | what it does |"}


def test_every_table_is_checked_or_holds_no_results():
    checked = test_results_tables.CHECKED | test_speed_tables.CHECKED
    found = {header_line(t[0]): path.name for path in DOCUMENTS for t in tables(path)}
    unchecked = {header: name for header, name in found.items() if header not in checked | NO_RESULTS}
    assert not unchecked, f"tables no test checks: {unchecked}"
    assert checked | NO_RESULTS <= set(found), f"checked tables not found: {(checked | NO_RESULTS) - set(found)}"
