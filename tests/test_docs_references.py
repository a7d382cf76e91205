"""References from the code to the documentation resolve: every ``docs/….md`` path that a source file, a test,
README.md or the Makefile names exists, every ``#anchor`` after it is a heading of that page, and nothing
cites the design by section number of a file outside the repository. (Links inside docs/ are checked by
``mkdocs build --strict``, which ``make test`` runs.)"""

from __future__ import annotations

import importlib.util
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


# ---- every `clicooper` option the documentation shows exists on that command ---------------------------------
DOC_PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# A shell pipe into another program ends the clicooper part of a line; `|` between values does not.
# An indented line that goes on with options (`    [--epochs …]`) continues a usage line without a backslash.
USAGE_MORE = re.compile(r"^\s+\[?--")
CMD_END = re.compile(r"\s#\s|\s#$|\|\s*(?:jq|tail|head|grep|tee|less|python3?)\b|&&|;|\$\(")


def cli_options() -> dict[str, set[str]]:
    """Every command of the ``clicooper`` app (sub-commands as ``"observations import"``) → its long options."""
    import typer

    from clicooper.cli import app

    out: dict[str, set[str]] = {}

    def walk(cmd: object, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():  # type: ignore[attr-defined]
                walk(sub, [*path, name])
        else:
            params = cmd.params  # type: ignore[attr-defined]
            out[" ".join(path)] = {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
            out[" ".join(path)].add("--help")

    walk(typer.main.get_command(app), [])
    return out


def invocations(text: str, commands: list[str]) -> list[tuple[int, str, str]]:
    """(line, command, what follows it) for every ``clicooper COMMAND`` in fenced code (a line with its
    continuation lines, up to a comment or a pipe into another program) and in inline code spans."""
    name = re.compile(r"\bclicooper\s+(" + "|".join(sorted(map(re.escape, commands), key=len, reverse=True)) + r")\b")
    lines, found, fenced, i = text.splitlines(), [], False, 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            fenced, i = not fenced, i + 1
            continue
        if fenced:
            chunk, j = line, i
            while j + 1 < len(lines) and (chunk.rstrip().endswith("\\") or USAGE_MORE.match(lines[j + 1])):
                j += 1
                chunk = chunk.rstrip().removesuffix("\\") + " " + lines[j]
            found += [(i + 1, m.group(1), CMD_END.split(chunk[m.end():])[0]) for m in name.finditer(chunk)]
            i = j + 1
            continue
        for span in re.findall(r"`([^`]*)`", line):
            found += [(i + 1, m.group(1), span[m.end():]) for m in name.finditer(span)]
        i += 1
    return found


def option_values() -> dict[str, set[str]]:
    """The values of the options whose values the docs list (``--attack a|b``): what the code accepts."""
    from clicooper.attacks.budgets import ALL_ATTACKS, BUDGETS
    from clicooper.attacks.provenance_suite import PROVENANCE_ATTACKS
    from clicooper.config.presets import PRESETS
    from clicooper.config.run import Defense

    return {"--attack": {*ALL_ATTACKS, *PROVENANCE_ATTACKS, "all"}, "--budget": set(BUDGETS),
            "--preset": set(PRESETS), "--defense": set(Defense.__args__)}


def test_the_option_check_catches_a_misspelt_option() -> None:
    opts = cli_options()
    (_, cmd, rest), = invocations("`clicooper verify RUN --trusted-key k.json`", list(opts))
    assert cmd == "verify" and [f for f in FLAG.findall(rest) if f not in opts[cmd]] == ["--trusted-key"]
    block = "```bash\nclicooper train --dataset digits|csv:PATH \\\n    --seed 0 | tail -1 --x\n    [--epochs 5]\n```"
    (_, cmd, rest), = invocations(block, list(opts))
    assert FLAG.findall(rest) == ["--dataset", "--seed"]
    usage = "```\nclicooper attack RUN [--attack a|b]\n                     [--budget demo] # --x\n```"
    (_, cmd, rest), = invocations(usage, list(opts))
    assert FLAG.findall(rest) == ["--attack", "--budget"]


def test_every_documented_option_exists() -> None:
    opts, values = cli_options(), option_values()
    bad, seen = [], 0
    for page in DOC_PAGES:
        for line, cmd, rest in invocations(page.read_text("utf-8"), list(opts)):
            where = f"{page.relative_to(ROOT)}:{line}: clicooper {cmd}"
            for flag in FLAG.findall(rest):
                seen += 1
                if flag not in opts[cmd]:
                    bad.append(f"{where} has no option {flag}")
            for flag, listed in re.findall(r"(--[a-z-]+)[ =]([a-z][a-z0-9-]*(?:\|[a-z][a-z0-9-]*)*)(?![\w:/.])", rest):
                unknown = set(listed.split("|")) - values.get(flag, set(listed.split("|")))
                if unknown:
                    bad.append(f"{where} {flag}: {sorted(unknown)} not accepted")
    assert seen > 200, f"only {seen} documented options found: the scan is broken"
    assert not bad, "\n".join(bad)


# ---- what the code's own docstrings say about the code --------------------------------------------------------
SRC = ROOT / "src"
MOD_REF = re.compile(r":mod:`~?(\.?[\w.]+)`")


def _module_exists(dotted: str) -> bool:
    path = SRC.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_references() -> list[tuple[str, str]]:
    """(module, referenced module) for every :mod: reference in a clicooper module docstring."""
    import ast

    refs = []
    for path in sorted((SRC / "clicooper").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text("utf-8"))) or ""
        parts = path.relative_to(SRC).with_suffix("").parts
        package = ".".join(parts[:-1])  # a package's __init__ and a module both resolve "." in their package
        for m in MOD_REF.finditer(doc):
            ref = m.group(1)
            full = package + ref if ref.startswith(".") else ref
            if full.startswith("clicooper"):
                refs.append((".".join(parts), full))
    return refs


def test_module_references_are_found() -> None:
    refs = module_references()
    assert ("clicooper.privacy.__init__", "clicooper.privacy.defaults") in refs
    assert not _module_exists("clicooper.privacy.presets") and _module_exists("clicooper.config.presets")


@pytest.mark.parametrize("where,ref", module_references())
def test_module_docstring_names_a_real_module(where: str, ref: str) -> None:
    assert _module_exists(ref), f"{where}'s docstring names {ref}, which does not exist"


def test_wire_records_name_the_transcript_hash_in_use() -> None:
    import ast

    from clicooper.provenance.transcript import TRANSCRIPT_HASH

    doc = ast.get_docstring(ast.parse((SRC / "clicooper/protocol/messages.py").read_text("utf-8"))) or ""
    named = set(re.findall(r"\b(BLAKE3|SHA-256|SHA-512|BLAKE2b?)\b running hash", doc))
    assert named == {TRANSCRIPT_HASH.upper()}, f"protocol/messages.py names {named}; transcripts use {TRANSCRIPT_HASH}"


OWN_TOP_LEVEL = {"clicooper", "experiments", "benchmarks", "testbed", "support"}


def test_every_documented_python_module_exists() -> None:
    # `python -m X` in README.md, CHANGELOG.md and docs/: X is the package's, a top-level folder's
    # (experiments/, benchmarks/) or the tests' support package. A line that runs an older tree
    # (PYTHONPATH=<worktree>/src) names that tree's modules.
    roots = [ROOT / "src", ROOT, ROOT / "tests"]
    missing = []
    for page in [*DOC_PAGES, ROOT / "CHANGELOG.md"]:
        for i, line in enumerate(page.read_text("utf-8").splitlines(), 1):
            if "<worktree>" in line:
                continue
            for module in re.findall(r"\bpython3? -m ([A-Za-z_][\w.]*\w)", line):
                parts = module.split(".")
                if parts[0] not in OWN_TOP_LEVEL:  # a tool's (pip, pytest, venv): installed where the docs run
                    if importlib.util.find_spec(parts[0]) is None:
                        missing.append(f"{page.relative_to(ROOT)}:{i}: python -m {module}")
                    continue
                if not any(r.joinpath(*parts).with_suffix(".py").is_file() or (r.joinpath(*parts) / "__init__.py").is_file()
                           or (r.joinpath(*parts) / "__main__.py").is_file() for r in roots):
                    missing.append(f"{page.relative_to(ROOT)}:{i}: python -m {module}")
    assert not missing, "\n".join(missing)
