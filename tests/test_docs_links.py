"""The README links every page of docs/, and every relative link in the README, docs/ and benchmarks' READMEs
reaches a file (and, with #anchor, one of its headings, slugged as GitHub does)."""

import re
from pathlib import Path

from markdown_tables import DOCUMENTS, REPO

PAGES = DOCUMENTS + sorted((REPO / "benchmarks").glob("**/README.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


def test_readme_links_every_docs_page():
    linked = set(LINK.findall((REPO / "README.md").read_text()))
    assert {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")} <= linked


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"\w+://", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
