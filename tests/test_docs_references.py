"""References from the code to the documentation resolve: every ``docs/….md`` path that a source file, a test,
README.md or the Makefile names exists, every ``#anchor`` after it is a heading of that page, and nothing
cites the design by section number of a file outside the repository. (Links inside docs/ are checked by
``mkdocs build --strict``, which ``make test`` runs.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    [p for d in ("src", "tests", "experiments", "benchmarks", "testbed") for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".proto", ".pyi", ".toml")]
    + [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
)
DOC_REF = re.compile(r"docs/[\w./-]+?\.md(?:#[^\s)`'\"\],;]+)?")
FENCE = re.compile(r"^\s*(```|~~~)")


def slug(heading: str) -> str:
    """The anchor GitHub and the docs site (pymdownx slugify, lower case) give a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The heading anchors of a Markdown page (headings inside fenced code do not count)."""
    out, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            out.add(slug(m.group(1)))
    return out


def references() -> list[tuple[str, str]]:
    """(where, reference) for every docs/….md reference in the sources."""
    refs = []
    for path in SOURCES:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in DOC_REF.finditer(line):
                refs.append((f"{path.relative_to(ROOT)}:{i}", m.group(0).rstrip(".:")))
    return refs


def test_slug_matches_the_site() -> None:
    assert slug("Reading the paper's numbers") == "reading-the-papers-numbers"
    assert slug("5.5 Accusation (any number, between other entries)") == "55-accusation-any-number-between-other-entries"
    assert slug("Choosing σ") == "choosing-σ"
    assert slug("`clicooper node` and [TLS](x.md)") == "clicooper-node-and-tls"


def test_sources_cite_the_design() -> None:
    refs = references()
    assert any(ref.startswith("docs/design/") for _, ref in refs), "no source cites docs/design/"


@pytest.mark.parametrize("where,ref", references())
def test_doc_reference_resolves(where: str, ref: str) -> None:
    page, _, anchor = ref.partition("#")
    target = ROOT / page
    assert target.is_file(), f"{where}: {page} does not exist"
    if anchor:
        assert anchor in anchors(target), f"{where}: {page} has no heading with anchor #{anchor}"


def test_no_citation_of_an_outside_design_file() -> None:
    cited = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES + sorted((ROOT / "docs").rglob("*.md"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"DESIGN\s*§|shared/DESIGN\.md", line)]
    assert not cited, f"cite the pages of docs/design/, not sections of an outside file: {cited[:10]} ({len(cited)})"
