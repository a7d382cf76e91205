"""The guides under docs/guides/ run as written: every code block marked ``<!-- run -->`` is executed, in
order, in one fresh directory per guide, so that a later block uses what an earlier one made.

Markers (HTML comments, invisible on the site), on the lines right before a fenced block:

- ``<!-- run -->``: run the block. ``python`` blocks run as a script with this checkout's ``clicooper``;
  ``bash`` blocks run under ``bash -euo pipefail`` with ``clicooper`` and ``python`` on the PATH meaning
  this checkout's CLI and interpreter.
- ``<!-- file: PATH -->``: write the block's text to PATH (a model file, a plug-in's sources).
- ``<!-- expect: TEXT -->`` (after ``run``): the block's output must contain TEXT.

A ``pip install`` line in a bash block installs into a folder of the test's directory instead of the
environment (``--no-deps --no-index --no-build-isolation --target``), which later blocks have on their path.
Blocks without a marker are illustrative (multi-machine commands, ``make`` targets) and are not run.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ROOT / "docs" / "guides"
SRC = ROOT / "src"

#: the guides' file names (the README and the site's nav link them by these names)
GUIDE_NAMES = ["quickstart", "own-model-and-data", "choosing-a-defence", "reading-the-report", "deploying",
               "provenance", "auditing", "extending", "gpu"]
#: guides whose marked blocks this test runs, with the fewest blocks each must keep (a lost marker fails)
EXECUTED = {"quickstart": 6, "own-model-and-data": 4, "provenance": 3, "extending": 3}

_MARK = re.compile(r"^<!--\s*(run|file|expect)\s*(?::\s*(.*?))?\s*-->\s*$")
_FENCE = re.compile(r"^```(\w*)\s*$")
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    """One marked code block of a guide."""

    line: int
    lang: str
    text: str
    run: bool = False
    file: str | None = None
    expect: list[str] = field(default_factory=list)


def marked_blocks(md: str) -> list[Block]:
    """The blocks of ``md`` that carry a ``run`` or ``file`` marker, in order."""
    out: list[Block] = []
    marks: list[tuple[str, str | None]] = []
    lines = md.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _MARK.match(line.strip())
        if m:
            marks.append((m.group(1), m.group(2)))
            i += 1
            continue
        f = _FENCE.match(line)
        if f and f.group(1):
            start, lang = i, f.group(1)
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if j == len(lines):
                raise AssertionError(f"line {start + 1}: code block never closed")
            if marks:
                b = Block(line=start + 1, lang=lang, text="\n".join(lines[start + 1 : j]) + "\n")
                for kind, arg in marks:
                    if kind == "run":
                        b.run = True
                    elif kind == "file":
                        b.file = arg
                    else:
                        b.expect.append(arg or "")
                if b.run and lang not in ("python", "bash"):
                    raise AssertionError(f"line {start + 1}: only python and bash blocks can run, not {lang!r}")
                if not (b.run or b.file):
                    raise AssertionError(f"line {start + 1}: an expect marker needs a run marker")
                out.append(b)
            marks = []
            i = j + 1
            continue
        if line.strip():
            marks = []  # a marker belongs to the block right after it
        i += 1
    return out


def _shims(work: Path) -> tuple[Path, Path]:
    """``clicooper``, ``python`` and ``pip`` on a PATH of their own: this checkout's CLI and interpreter, and
    a pip that installs into ``work/.site`` (never into the environment running the tests). ``clicooper`` is
    a script like the installed entry point (not ``python -m``), so the working directory is not on its
    import path, as for a user."""
    bin_dir, site = work / ".bin", work / ".site"
    bin_dir.mkdir()
    site.mkdir()
    py = sys.executable
    shims = {
        "clicooper": (f"#!{py}\nimport sys\nsys.path[1:1] = [{str(site)!r}, {str(SRC)!r}]\n"
                      "from clicooper.cli import main\nsys.exit(main())\n"),
        "python": f'#!/bin/sh\nexec "{py}" "$@"\n',
        "python3": f'#!/bin/sh\nexec "{py}" "$@"\n',
        "pip": (f'#!/bin/sh\n[ "$1" = install ] || {{ echo "guide test: only pip install is supported" >&2; exit 2; }}\n'
                f'shift\nexec "{py}" -m pip install -q --no-deps --no-index --no-build-isolation '
                f'--target "{site}" "$@"\n'),
    }
    for name, body in shims.items():
        p = bin_dir / name
        p.write_text(body)
        p.chmod(0o755)
    return bin_dir, site


def _children_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def run_guide(md_path: Path, work: Path) -> list[tuple[int, float, float]]:
    """Run the marked blocks of one guide in ``work``; AssertionError naming the block on the first failure.
    Returns (line, wall seconds, CPU seconds) per run block."""
    blocks = marked_blocks(md_path.read_text())
    bin_dir, site = _shims(work)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(site), str(SRC)]),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "COLUMNS": "100", "PYTHONHASHSEED": "0"}
    times = []
    for n, b in enumerate(blocks):
        where = f"{md_path.name}:{b.line}"
        if b.file:
            target = work / b.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(b.text)
        if not b.run:
            continue
        if b.lang == "python":
            script = work / f".block_{n}.py"
            script.write_text(b.text)
            cmd = [sys.executable, str(script)]
        else:
            cmd = ["bash", "-euo", "pipefail", "-c", b.text]
        t0, c0 = time.monotonic(), _children_cpu()
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        times.append((b.line, time.monotonic() - t0, _children_cpu() - c0))
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"{where}: the block failed (exit {r.returncode}):\n{b.text}\n---\n{out[-4000:]}"
        for text in b.expect:
            assert text in out, f"{where}: the block's output lacks {text!r}:\n{out[-4000:]}"
    return times


def test_every_guide_exists_and_the_executed_ones_keep_their_blocks() -> None:
    for name in GUIDE_NAMES:
        assert (GUIDES / f"{name}.md").is_file(), name
    for name, least in EXECUTED.items():
        blocks = [b for b in marked_blocks((GUIDES / f"{name}.md").read_text()) if b.run]
        assert len(blocks) >= least, f"{name}.md has {len(blocks)} run blocks, expected at least {least}"
    for name in set(GUIDE_NAMES) - set(EXECUTED):
        assert not any(b.run for b in marked_blocks((GUIDES / f"{name}.md").read_text())), (
            f"{name}.md has run blocks, but this test does not run it: add it to EXECUTED")


def test_a_broken_block_fails_and_names_its_line(tmp_path: Path) -> None:
    md = tmp_path / "g.md"
    md.write_text("# g\n\n<!-- file: a.txt -->\n```text\nhello\n```\n\n<!-- run -->\n"
                  "<!-- expect: hello -->\n```bash\ncat a.txt\n```\n\n<!-- run -->\n```python\n"
                  "import sys\nsys.exit(open('a.txt').read() != 'hello\\n')\n```\n\n<!-- run -->\n```bash\n"
                  "echo about to fail; exit 2\n```\n")
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(AssertionError, match=r"g\.md:21: the block failed \(exit 2\)(.|\n)*about to fail"):
        run_guide(md, work)
    assert (work / "a.txt").read_text() == "hello\n"
    md.write_text("<!-- run -->\n<!-- expect: absent -->\n```bash\necho present\n```\n")
    (tmp_path / "w2").mkdir()
    with pytest.raises(AssertionError, match="lacks 'absent'"):
        run_guide(md, tmp_path / "w2")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXECUTED))
def test_the_guide_runs_as_written(name: str, tmp_path: Path) -> None:
    times = run_guide(GUIDES / f"{name}.md", tmp_path)
    print(f"{name}: " + ", ".join(f"line {line} {wall:.1f} s ({cpu:.1f} s CPU)" for line, wall, cpu in times))
