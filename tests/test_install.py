"""The install is reproducible: every dependency is pinned in constraints.txt, and every install uses it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not an exact pin (NAME==VERSION)"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_every_dependency_is_pinned_within_its_range() -> None:
    # prepare
    pins = _pins()
    # execute
    missing = [str(r) for r in _requirements() if canonicalize_name(r.name) not in pins]
    outside = [f"{r} (pinned {pins[canonicalize_name(r.name)]})" for r in _requirements()
               if canonicalize_name(r.name) in pins
               and not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    # assert
    assert not missing, f"not in constraints.txt (run make lock): {missing}"
    assert not outside, f"constraints.txt pins outside pyproject.toml's range (run make lock): {outside}"


def test_every_install_in_the_makefile_uses_the_constraints() -> None:
    # prepare: the recipe lines of the set-up target (make lock resolves anew on purpose)
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    # execute
    installs = [ln for ln in setup.splitlines() if re.search(r"pip install", ln)]
    # assert
    assert len(installs) >= 2
    assert all("-c constraints.txt" in ln for ln in installs), installs
    assert "constraints.txt" in setup.splitlines()[0], "the set-up must rerun when constraints.txt changes"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
