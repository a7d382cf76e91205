"""The front page and the user documentation: README.md stays a front page (≤ 12,000 bytes), no user page
narrates the project's development (issue numbers, work sessions: that history is in CHANGELOG.md and
docs/research/), and every measured figure of README.md and the guides is the number its result file holds
(``results/figures.toml``: figure → result file → key, with the command that wrote the file)."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIGURES = ROOT / "results" / "figures.toml"
MAX_README_BYTES = 12_000

# What development history looks like in prose. "session" alone is a word of the code (the session core),
# so only a numbered session or "this/that/previous session" counts.
HISTORY = re.compile(
    r"\bissues?\s*#?\d+|\bissue-\d+|\bissue's\b|\bsessions?\s+\d+|\bsession-\d+|\bwork periods?\b"
    r"|\b(?:this|that|previous|earlier|last|next) session\b",
    re.IGNORECASE,
)
# Decimals in prose that are settings, not measurements, each matched with the words that make it a setting
# (a bare number is never excused: the same digits elsewhere on a page may be a measurement).
NOT_MEASURED = [
    re.compile(r"Python (?:≥ )?3\.\d+"),  # the supported Python version
    re.compile(r"at most 0\.03 SSIM above"),  # the design's goal: inversion ≤ class floor + 0.03
    re.compile(r"σ =? ?\d+\.\d+"),  # a noise setting: σ followed by its value
    re.compile(r"\(default \d+\.\d+"),  # an option's default, in the parenthesis that documents it
]
DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])")
MINUS = "−"  # U+2212, as the docs print a negative figure


def user_pages() -> list[Path]:
    """README.md and every docs page except the research notebooks (where measurements keep their dates)."""
    pages = [README] + sorted((ROOT / "docs").rglob("*.md"))
    return [p for p in pages if "research" not in p.relative_to(ROOT).parts]


def figures() -> list[dict[str, Any]]:
    return tomllib.loads(FIGURES.read_text("utf-8"))["figure"]


def prose(text: str) -> str:
    """The text outside fenced code blocks, inline code spans and link targets."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def untraced(text: str, traced: set[str]) -> list[str]:
    """The decimals in a page's prose that are neither a traced figure nor a setting (NOT_MEASURED)."""
    text = prose(text)
    for setting in NOT_MEASURED:
        text = setting.sub(" ", text)
    return sorted(set(DECIMAL.findall(text)) - traced)


def lookup(data: Any, key: list[Any], where: str) -> Any:
    """The value at a key path: dict keys, list indices, and {field = value} selecting one list element."""
    for part in key:
        if isinstance(part, dict):
            (field, want), = part.items()
            hits = [row for row in data if isinstance(row, dict) and row.get(field) == want]
            assert len(hits) == 1, f"{where}: {len(hits)} elements with {field} = {want!r}"
            data = hits[0]
        else:
            data = data[part]
    return data


def test_readme_is_a_front_page() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move reference material to docs/ (≤ {MAX_README_BYTES})"


def test_history_pattern_catches_what_it_should() -> None:
    for said in ("measured in issue 13", "issues 5 and 6", "issue #4", "the issue-13 bar", "session 10's run",
                 "sessions 11–12", "in this session", "the issue's point", "work period 3"):
        assert HISTORY.search(said), said
    for fine in ("the session core builds it", "a gRPC session", "Issue(kind=…)", "issues a certificate"):
        assert not HISTORY.search(fine), fine


def test_no_development_history_in_user_docs() -> None:
    found = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)!r}"
             for p in user_pages()
             for i, line in enumerate(p.read_text("utf-8").splitlines(), 1)
             for m in HISTORY.finditer(line)]
    assert not found, "development history belongs in CHANGELOG.md or docs/research/:\n" + "\n".join(found)


def test_no_development_history_in_the_api_reference() -> None:
    # the docstrings (and field descriptions) that the site's API reference renders are user documentation too
    modules = [m for page in sorted((ROOT / "docs" / "reference").glob("*.md"))
               for m in re.findall(r"^:::\s*([\w.]+)", page.read_text("utf-8"), re.M)]
    assert "clicooper.config.presets" in modules
    found = []
    for module in modules:
        path = ROOT / "src" / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        found += [f"{path.relative_to(ROOT)}:{i}: {m.group(0)!r}"
                  for i, line in enumerate(path.read_text("utf-8").splitlines(), 1) for m in HISTORY.finditer(line)]
    assert not found, "\n".join(found)


def test_changelog_exists() -> None:
    assert (ROOT / "CHANGELOG.md").read_text("utf-8").startswith("# Changelog")


@pytest.mark.parametrize("fig", figures(), ids=lambda f: f"{f['doc']}:{f['shown']}")
def test_figure_matches_its_result_file(fig: dict[str, Any]) -> None:
    # prepare: the number as the document shows it
    doc = ROOT / fig["doc"]
    shown = fig["shown"]
    assert shown in doc.read_text("utf-8"), f"{fig['doc']} no longer shows {shown!r}; update results/figures.toml"
    number = shown.removeprefix("≥").strip()
    sign = number[0] if number[0] in "+" + MINUS else ""
    # "41,507" and "13 %" are compared as 41507 and 13 (a percentage's row scales its fraction by 100)
    number = number.lstrip("+" + MINUS).removesuffix("%").strip().replace(",", "")
    decimals = len(number.partition(".")[2])
    # execute: the value in the result file
    where = f"{fig['file']} {fig['key']}"
    data = json.loads((ROOT / fig["file"]).read_text("utf-8"))
    value = float(lookup(data, fig["key"], where))
    if "minus" in fig:
        value -= float(lookup(data, fig["minus"], where))
    value *= fig.get("scale", 1)
    # assert: same digits, same sign, and a command that made the file
    assert math.isfinite(value), where
    assert f"{abs(value):.{decimals}f}" == number, f"{where} holds {value!r}; {fig['doc']} shows {shown!r}"
    if sign:
        assert (value < 0) == (sign == MINUS), f"{where} holds {value!r}; {fig['doc']} shows {shown!r}"
    command = fig["command"]
    if command.endswith(".md"):
        assert (ROOT / command).is_file(), command
    else:
        assert command.startswith(("make ", "python -m ", "clicooper ")), command


# The pages whose every decimal in prose must have a row in results/figures.toml: the front page and every guide.
TRACED_DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "guides").glob("*.md"))


def test_every_guide_is_traced() -> None:
    assert len(TRACED_DOCS) >= 10 and "docs/guides/choosing-a-defence.md" in TRACED_DOCS, TRACED_DOCS


def test_the_trace_check_flags_an_untraced_figure() -> None:
    # a measurement next to each kind of setting is still caught; the settings themselves are not
    page = ("Python ≥ 3.11. `--sigma 0.3` in code. At most 0.03 SSIM above the floor. With σ 0.125 the run "
            "reaches 0.8324 (default 0.2, see [x](a/0.77.md)); inversion 0.372 at σ = 0.25, and 0.03 over "
            "the floor.\n```\nacc 0.99\n```\n")
    assert untraced(page, set()) == ["0.03", "0.372", "0.8324"]
    assert untraced(page, {"0.03", "0.372", "0.8324"}) == []


@pytest.mark.parametrize("doc", TRACED_DOCS)
def test_every_figure_of_the_page_is_traced(doc: str) -> None:
    traced = {f["shown"].removeprefix("≥").strip().lstrip("+" + MINUS) for f in figures() if f["doc"] == doc}
    missing = untraced((ROOT / doc).read_text("utf-8"), traced)
    assert not missing, f"{doc}: figures without a row in results/figures.toml: {missing}"


def test_the_headline_holds() -> None:
    # README: "seven points × 3 seeds … no point meets the goal"
    rows = json.loads((ROOT / "results/frontier-resnet/converged/frontier.json").read_text("utf-8"))["rows"]
    defended = [r for r in rows if r["point"] != "undefended reference"]
    assert len(defended) == 7 and all(r["seeds"] == [0, 1, 2] for r in defended)
    met = [r["point"] for r in defended if all(r["goal"].values())]
    assert not met, f"a point meets the goal now: {met}; README's headline says none does"
