"""Bit-identity check of fixed-seed in-process runs: ``python tests/support/bitident.py OUT.json``.

Trains a few small configurations with ``clicooper.train`` (the run loop end to end, checkpoints included)
and writes the SHA-256 of every final weight tensor per configuration. The OS CSPRNG is replaced by a fixed
byte stream *in this process only*, so the DO's secrets (keyed noise, label key, guard key) are the same at
every invocation; run it before and after a refactor and compare the two files (``--compare A.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

_COUNTER = [0]


def _fixed_urandom(n: int) -> bytes:
    _COUNTER[0] += 1
    return hashlib.shake_256(f"bitident/{_COUNTER[0]}".encode()).digest(n)


os.urandom = _fixed_urandom  # before clicooper is imported: every secret of these runs is reproducible

from clicooper.runs import load_run  # noqa: E402
from clicooper.training import train  # noqa: E402

BASE = {"dataset": "digits", "trainers": 2, "epochs": 2, "train_range": (0, 320), "seed": 3, "provenance": False,
        "device": "cpu"}
CONFIGS = {
    "digits-mlp": BASE | {"model": "digits-mlp"},
    "digits-cnn": BASE | {"model": "digits-cnn"},
    "digits-mlp-clicooper": BASE | {"model": "digits-mlp", "defense": "clicooper"},
    "digits-mlp-detection-fsha": BASE | {"model": "digits-mlp", "epochs": 1, "adversary": {"behaviour": "fsha"},
                                         "detection": {"enabled": True, "splitguard": {"warmup_steps": 5}}},
}


def digests() -> dict[str, dict[str, str]]:
    """SHA-256 of each final tensor, per configuration."""
    out: dict[str, dict[str, str]] = {}
    for name, cfg in CONFIGS.items():
        _COUNTER[0] = 0
        with tempfile.TemporaryDirectory() as d:
            train(cfg, out=Path(d) / "run")
            run = load_run(Path(d) / "run")
            out[name] = {f"{k}/{n}": hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
                         for k, mod in sorted(run.modules.items()) for n, v in mod.state_dict().items()}
            m = json.loads((Path(d) / "run" / "metrics.json").read_text())
            out[name]["metrics.stopped"] = json.dumps(m.get("stopped"), sort_keys=True, default=str)
    return out


if __name__ == "__main__":
    got = digests()
    Path(sys.argv[1]).write_text(json.dumps(got, indent=1, sort_keys=True))
    if len(sys.argv) > 3 and sys.argv[2] == "--compare":
        ref = json.loads(Path(sys.argv[3]).read_text())
        bad = [k for k in ref if ref[k] != got.get(k)]
        print("bit-identical" if not bad else f"DIFFER: {bad}")
        sys.exit(1 if bad else 0)
