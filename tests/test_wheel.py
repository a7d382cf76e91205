"""The wheel holds the library only: built from a copy of the repository, its file list is ``clicooper/`` and
its metadata, nothing of ``experiments/``, ``benchmarks/``, ``testbed/`` or ``tests/``, and every module and
data file the package needs (``py.typed``, the protocol's ``.proto`` and generated code, the ledger schemas)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
# Beside the package, never in the wheel.
OUTSIDE = {"experiments", "benchmarks", "testbed", "tests"}
# What the package reads at run time besides its modules (pyproject.toml [tool.setuptools.package-data]).
REQUIRED = [
    "clicooper/__init__.py",
    "clicooper/py.typed",
    "clicooper/cli/__init__.py",
    "clicooper/net/proto/clicooper.proto",
    "clicooper/net/proto/clicooper_pb2.py",
    "clicooper/net/proto/clicooper_pb2.pyi",
    "clicooper/net/proto/clicooper_pb2_grpc.py",
]
# Build outputs, caches and run data: not sources, and the copy stays small.
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "site", "runs", "results", "__pycache__",
                              "*.egg-info", ".pytest_cache", ".ruff_cache", ".hypothesis", ".import_linter_cache")


def build_wheel(tmp: Path) -> list[str]:
    """The file list of the wheel pip builds from a clean copy of the repository (the project's own build
    backend, no network: ``--no-build-isolation`` uses the setuptools already installed)."""
    tree, out = tmp / "repo", tmp / "wheel"
    shutil.copytree(ROOT, tree, ignore=SKIP)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                        "--no-index", "-q", "-w", str(out), str(tree)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"pip wheel failed:\n{r.stdout}\n{r.stderr}"
    wheels = sorted(out.glob("clicooper-*.whl"))
    assert len(wheels) == 1, f"expected one clicooper wheel, got {[w.name for w in out.iterdir()]}"
    with zipfile.ZipFile(wheels[0]) as z:
        return z.namelist()


def test_wheel_holds_the_library_only(tmp_path: Path) -> None:
    names = build_wheel(tmp_path)
    top = {PurePosixPath(n).parts[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and dist_info.pop().startswith("clicooper-"), sorted(top)
    assert top - {t for t in top if t.endswith(".dist-info")} == {"clicooper"}, \
        f"the wheel has top-level entries besides clicooper/: {sorted(top)}"

    outside = [n for n in names if OUTSIDE & set(PurePosixPath(n).parts)]
    assert not outside, f"research, benchmark, test-bed or test files in the wheel: {outside[:10]}"

    missing = [n for n in REQUIRED if n not in names]
    assert not missing, f"the wheel lacks {missing}"
    schemas = [n for n in names if n.startswith("clicooper/provenance/schemas/") and n.endswith(".json")]
    assert schemas, "the wheel lacks the ledger schemas (clicooper/provenance/schemas/*.json)"

    # Every module of the source tree is packaged (a subpackage that discovery missed would be absent).
    src = ROOT / "src"
    modules = {p.relative_to(src).as_posix() for p in (src / "clicooper").rglob("*.py") if "__pycache__" not in p.parts}
    unpackaged = sorted(modules - set(names))
    assert not unpackaged, f"modules of src/clicooper/ not in the wheel: {unpackaged[:10]}"
