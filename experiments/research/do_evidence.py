"""What the data owner can prove about its own parts of a run (docs/ledger-format.md §14), measured.

    python -m experiments.research.do_evidence [--model fmnist-cnn] [--trainers 2] [--epochs 3]

No data and no training: the model is built from the zoo at its initial weights (Fashion-MNIST's shape,
(1, 28, 28) → 10 classes), cut by the real planner, and sized by the real capacity rule of the run config.
Prints one JSON object:

- per position: weights, whether a mark is planned and why not, the mark budget |w|/8 and, for the DO's
  parts, the most wrong bits τ a claim over the whole budget could tolerate (−1: no claim is possible at
  the 2⁻⁶⁴ bound);
- the DO's signed statements in an E-round run and what they bind, and its share of the counted FLOPs;
- exact-copy evidence: the DO's head and tail commitments against copies changed by one ulp in one weight,
  pruned by 10 %, or rounded to int8 and back — each must change the commitment (the commitments prove
  bit-exact copies, nothing about modified ones).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from clicooper.config import make_config
from clicooper.models.blueprint import blueprint_for
from clicooper.provenance.capacity import ownership_threshold
from clicooper.provenance.commitments import segment_commitment
from clicooper.provenance.stages import capacity_for, num_params


def _variants(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of a state dict: one weight moved by one ulp, 10 % magnitude pruning, int8 round trip."""
    name = next(k for k in sorted(sd) if k.endswith("weight"))
    ulp = {k: v.clone() for k, v in sd.items()}
    flat = ulp[name].view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf")))
    pruned, int8 = {}, {}
    for k, v in sd.items():
        cut = v.abs().flatten().kthvalue(max(1, v.numel() // 10)).values
        pruned[k] = torch.where(v.abs() <= cut, torch.zeros_like(v), v)
        scale = v.abs().max() / 127 if v.abs().max() > 0 else torch.tensor(1.0)
        int8[k] = (v / scale).round().clamp(-127, 127) * scale
    return {"one ulp in one weight": ulp, "magnitude pruning 10 %": pruned, "int8 round trip": int8}


def measure(model: str, trainers: int, epochs: int) -> dict[str, Any]:
    config = make_config(model=model, trainers=trainers, epochs=epochs, dataset="fashion-mnist")
    bp = blueprint_for(config, (1, 28, 28), 10)
    modules = bp.modules()
    rows = []
    for pp in bp.plan.parties:
        n = num_params(modules[pp.party])
        cap = capacity_for(config, n)
        rows.append({"position": pp.position, "party": pp.party, "weights": n, "marked": cap.enabled,
                     "n_bits": cap.n_bits, "budget_bits": n // 8,
                     "tau_over_budget": ownership_threshold(n // 8)[0] if pp.party.startswith("DO") else None,
                     "reason": cap.reason, "flop_share": pp.flop_share})
    exact = {}
    for part in ("DO:head", "DO:tail"):
        sd = {k: v.detach().clone() for k, v in modules[part].state_dict().items()}
        ref = segment_commitment(sd)
        exact[part] = {"identical copy": segment_commitment({k: v.clone() for k, v in sd.items()}) == ref,
                       **{what: segment_commitment(v) == ref for what, v in _variants(sd).items()}}
    return {
        "model": model, "trainers": trainers, "epochs": epochs, "positions": rows,
        "do_flop_share": bp.plan.do_flop_share,
        "do_signed_statements": {"genesis": 1, "stage entries": 2 * epochs, "closing": 1, "total": 2 * epochs + 2},
        "do_binds": ["dataset_commitment (HMAC with its secret salt: opened only by revealing salt and data)",
                     "config_hash, architecture_hash, planned rounds, every party's key and positions",
                     "start/end commitments of its head and tail in every round",
                     "transcript digests of its links (what it sent to and received from T1 and TK)",
                     "samples and forward+backward FLOPs of its stages (the credit table)"],
        "commitment_matches_copy": exact,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.research.do_evidence",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--trainers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args(argv)
    print(json.dumps(measure(a.model, a.trainers, a.epochs), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
