"""Markdown tables read as cells, and numbers compared as a table shows them: what the results-table tests use to
check the README's and docs/'s tables against the committed runs and reports (tables, never sentences)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def _is_rule(cells: list[str]) -> bool:
    return all(cell and set(cell) <= set("-: ") for cell in cells)


def tables(path: Path) -> list[list[list[str]]]:
    """Every table in a markdown file: its rows as stripped cells (bold marks dropped), header first, rule left out.
    A table may be indented (inside a list item)."""
    found, current = [], None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("|"):
            current = None
            continue
        cells = [cell.strip().replace("**", "") for cell in line.strip("|").split("|")]
        if current is None:
            current = []
            found.append(current)
        if not _is_rule(cells):
            current.append(cells)
    return found


def header_line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(path: Path, header: str) -> list[dict[str, str]]:
    """The body of the one table in `path` whose header row is `header`, each row a dict keyed by the header's
    cells; a blank first cell repeats the row above's (rows grouped under one model)."""
    matches = [t for t in tables(path) if header_line(t[0]) == header]
    assert len(matches) == 1, f"{path.name}: {len(matches)} tables with the header {header}"
    names, rows = matches[0][0], []
    for cells in matches[0][1:]:
        assert len(cells) == len(names), f"{path.name}: row {cells} does not fit {header}"
        row = dict(zip(names, cells))
        if not row[names[0]] and rows:
            row[names[0]] = rows[-1][names[0]]
        rows.append(row)
    assert rows, f"{path.name}: the table {header} has no rows"
    return rows


def numbers(text: str) -> list[str]:
    """The numbers written in a cell, in order ('0.76 / 0.51 / 0.25' -> ['0.76', '0.51', '0.25'])."""
    return NUMBER.findall(text)


def shown(value: float, token: str) -> bool:
    """`token` ('8,706', '+0.34', '37', '1.5e-3') is `value` rounded to the token's digits."""
    text = token.replace(",", "")
    mantissa = text.lower().split("e")[0]
    digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
    rounded = f"{value:.{digits}e}" if "e" in text.lower() else f"{value:.{digits}f}"
    return float(rounded) == float(text)


def assert_shown(values: list[float], cell: str, what: str) -> None:
    """Every number of `cell`, in order, is the matching value as the table rounds it; no number more or less."""
    tokens = numbers(cell)
    assert len(tokens) == len(values), f"{what}: {cell!r} holds {len(tokens)} numbers, the source {len(values)}"
    for token, value in zip(tokens, values):
        assert shown(value, token), f"{what}: {cell!r} shows {token}, the source says {value}"
