"""Build the ledger-format test vectors deterministically: ``python tests/vectors/make_vectors.py [OUT]``.

Everything comes from ``refimpl.py`` (docs/ledger-format.md implemented a second time, without clicooper)
and fixed labels: keys are SHA-256(lp("clicooper/test-vector/key", name)), nonces and weights come from
SHAKE-256 streams of fixed labels, so every byte is reproducible and ``tests/test_ledger_vectors.py``
regenerates the whole folder and compares it byte for byte. What is written (OUT defaults to this folder):

- ``cases/<name>/``: a run directory (ledger.jsonl, config.json, plan.json, model/, keys/*.pub, reveals/);
  three honest runs (``vector_runs.py``) and the tampered variants of ``tampers.py``;
- ``expected.json``: per run, the verdict the spec predicts (ok, every failure as [check, index,
  consequential] in report order, the exit status of ``clicooper verify``);
- ``known-answers.json``: inputs and outputs of every hash, ``lp``, HKDF and key-derivation step of the spec
  (``known_answers.py``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from known_answers import known_answers  # noqa: E402
from tampers import tampered_runs  # noqa: E402
from vector_runs import HONEST, as_json, build_run, write_run  # noqa: E402


def main(out: Path = HERE) -> None:
    """(Re)write ``out``: cases/, expected.json, known-answers.json."""
    runs_dir = out / "cases"
    if runs_dir.exists():
        shutil.rmtree(runs_dir)
    expected: dict[str, Any] = {}
    for name, spec in HONEST.items():
        write_run(build_run(spec), runs_dir / name)
        expected[name] = {"ok": True, "failures": [], "exit_code": 0}
    for name, run, failures in tampered_runs():
        write_run(run, runs_dir / name)
        expected[name] = {"ok": not failures, "failures": failures, "exit_code": 1 if failures else 0}
    out.mkdir(parents=True, exist_ok=True)
    (out / "expected.json").write_bytes(as_json(expected))
    (out / "known-answers.json").write_bytes(as_json(known_answers()))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
