"""Bit-identical weights before and after a refactor: train a fixed set of seeded configurations with the
sources of two checkouts and compare every weight file byte for byte.

    python tests/support/equivalence.py train SRC OUT      # train every configuration with SRC on the path
    python tests/support/equivalence.py compare OUT_A OUT_B  # compare model/*.safetensors byte for byte

Provenance is off in every configuration (no ledger keys, no watermark), so a run depends only on its config
and seed; the defences' secrets are written into each run directory fresh, so a defence that keys its noise
needs the same secret in both runs: ``train`` copies ``secrets/`` from ``--secrets-from`` when given.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

BASE = {"dataset": "digits", "epochs": 1, "seed": 3, "trainers": 2, "provenance": False, "device": "cpu",
        "train_range": [0, 600]}

#: name → config fields (old spellings on purpose: a run directory written before the refactor must load)
CONFIGS: dict[str, dict] = {
    "undefended-mlp": {"model": "digits-mlp"},
    "clicooper-cnn": {"model": "digits-cnn", "defense": "clicooper", "dp": {"sigma": 0.05}},
    "open-tail": {"model": "digits-mlp", "topology": "open-tail", "defense": "dp",
                  "dp": {"sigma": 0.05}, "labels": {"label_dp_epsilon": 2.0}},
    "preset": {"model": "digits-mlp", "preset": "private-light"},
    "nopeek": {"model": "digits-cnn", "nopeek": 0.5},
    "head-dpsgd": {"model": "digits-mlp", "defense": "dp",
                   "dp": {"sigma": 0.05, "head_dpsgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}},
    "grad-protect": {"model": "digits-mlp", "defense": "clicooper",
                     "dp": {"sigma": 0.05, "protect_gradients": True, "grad_clip_norm": 0.1}},
    "adversarial": {"model": "digits-mlp", "adversarial_decoder": 0.5},
    "secret-head": {"model": "digits-mlp", "head_mode": "secret-random", "defense": "labels"},
}

# a fixed secret per run (the same on both sides), written before training starts
_SECRET_SCRIPT = r"""
import json, sys, pathlib
import clicooper.privacy.secrets as s
orig = s.create_secrets
def fixed(run_dir, exist_ok=False):
    out = orig(run_dir, exist_ok=exist_ok)
    for f in sorted((pathlib.Path(run_dir) / "secrets").iterdir()):
        mode, n = f.stat().st_mode & 0o777, len(f.read_bytes())
        f.chmod(0o600)
        f.write_bytes(__import__("hashlib").sha256(f.name.encode()).digest()[:n])
        f.chmod(mode)
    return out
s.create_secrets = fixed
import clicooper.privacy.runtime as r
r.create_secrets = fixed
import clicooper
clicooper.train(json.loads(sys.argv[1]), out=sys.argv[2])
"""


def train_all(src: Path, out: Path, only: list[str] | None = None) -> None:
    """Train every configuration with the package under ``src`` into ``out/<name>``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    for name, fields in CONFIGS.items():
        if only and name not in only:
            continue
        run = out / name
        if run.exists():
            shutil.rmtree(run)
        cfg = BASE | fields
        r = subprocess.run([sys.executable, "-c", _SECRET_SCRIPT, json.dumps(cfg), str(run)], env=env,
                           capture_output=True, text=True)
        print(f"{name}: rc {r.returncode}", r.stderr.strip().splitlines()[-1:] if r.returncode else "", flush=True)


def _content(f: Path) -> tuple[dict, dict]:
    """A safetensors file's metadata and, per tensor, (dtype, shape, raw bytes). The header's key order is
    not stable between two writes of the same tensors (a hash map), so the files' own bytes are not compared."""
    from safetensors import safe_open

    with safe_open(str(f), "pt") as h:
        tensors = {k: (str(t.dtype), tuple(t.shape), t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
                   for k in h.keys() for t in [h.get_tensor(k)]}
        return dict(h.metadata() or {}), tensors


def compare(a: Path, b: Path) -> bool:
    """Compare the weights of ``model/*.safetensors`` of each configuration in ``a`` and ``b`` byte for byte
    (every tensor's dtype, shape and raw bytes, and the metadata)."""
    ok = True
    for name in CONFIGS:
        fa, fb = sorted((a / name / "model").glob("*.safetensors")), sorted((b / name / "model").glob("*.safetensors"))
        if not fa or [f.name for f in fa] != [f.name for f in fb]:
            print(f"{name}: MISSING ({[f.name for f in fa]} vs {[f.name for f in fb]})")
            ok = False
            continue
        ca, cb = [_content(x) for x in fa], [_content(y) for y in fb]
        same = ca == cb
        digest = hashlib.sha256(b"".join(v[2] for _, t in ca for _, v in sorted(t.items()))).hexdigest()[:16]
        print(f"{name}: {'identical' if same else 'DIFFERENT'} ({len(fa)} files, sha256 {digest})")
        ok &= same
    return ok


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "train":
        train_all(Path(sys.argv[2]).resolve(), Path(sys.argv[3]), sys.argv[4:] or None)
    elif cmd == "compare":
        sys.exit(0 if compare(Path(sys.argv[2]), Path(sys.argv[3])) else 1)
    else:
        sys.exit(__doc__)
