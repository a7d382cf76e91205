"""The patient attacker (issue 14): the reconstruction attacks at several times the frontier sweep's budgets, on
a copy of a recorded run, each figure at ¼, ½ and the full budget, so that a defended point judged at the sweep's
budget can be checked against an attacker who keeps training.

    python -m experiments.research.patient RUN COPY [--seed 0] [--steps 1600] [--adversarial-steps 4800]

White-box (leaked head, decoder + rMLE) and known-plaintext with 1,000 pairs at ``--steps`` decoder minibatches
(rMLE ``--steps`` / 4), FORA and SDAR at ``--adversarial-steps``; 200 victims; party T1. ``COPY`` receives a copy
of ``RUN`` (the attacks write their results into the run directory they attack) and ``COPY/patient.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from clicooper.attacks.runner import run_attack


def patient(run: Path, copy: Path, *, seed: int = 0, steps: int = 1600, adversarial_steps: int = 4800,
            victims: int = 200) -> dict[str, Any]:
    """Run the patient attacks on a copy of ``run``; per attack/level: score, convergence, class floor."""
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(run, copy)
    jobs = [
        ("inversion", {"knowledge": ["zero", "known", "white-box"], "victims": victims, "known_k": 100,
                       "config": {"modes": ("white-box", "known-plaintext"), "known_counts": (1000,),
                                  "victims": victims, "steps": steps, "refine_steps": steps // 4, "width": 32,
                                  "seed": seed}}),
        ("fora", {"victims": victims, "config": {"victims": victims, "steps": adversarial_steps, "seed": seed}}),
        ("sdar", {"victims": victims, "config": {"victims": victims, "steps": adversarial_steps, "seed": seed}}),
    ]
    out: dict[str, Any] = {"run": str(run), "seed": seed, "steps": steps, "adversarial_steps": adversarial_steps,
                           "victims": victims, "figures": {}}
    for name, kw in jobs:
        t = time.time()
        r = run_attack(copy, name, party="T1", seed=seed, **kw)
        for lv, v in r["headline"]["T1"].items():
            c = v.get("convergence") or {}
            out["figures"][f"{name}/{lv}"] = {"score": v["score"], "converged": v.get("converged"),
                                              "values": c.get("values"), "budget": c.get("budget"),
                                              "class_floor": v["metrics"].get("class_floor"),
                                              "seconds": round(time.time() - t, 1)}
            print(f"[patient] {name}/{lv}: {v['score']:.3f} converged={v.get('converged')} "
                  f"at {c.get('budget')}: {[round(x, 3) for x in c.get('values', [])]}", flush=True)
    (copy / "patient.json").write_text(json.dumps(out, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.research.patient",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("copy", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1600, help="white-box / known-plaintext decoder minibatches")
    ap.add_argument("--adversarial-steps", type=int, default=4800, help="FORA / SDAR steps")
    ap.add_argument("--victims", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if not (a.run / "observations").is_dir():
        raise SystemExit(f"{a.run} has no recorded observations; train it with record_observations (the frontier "
                         "sweep does)")
    torch.set_num_threads(a.threads)
    patient(a.run, a.copy, seed=a.seed, steps=a.steps, adversarial_steps=a.adversarial_steps, victims=a.victims)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
