"""FORA and SDAR at the small size the demo uses and at the reference code's size, over several attack seeds on
one recorded run: each figure at ¼, ½ and all of its steps beside the global and class floors, the attack's
training record, and the measured steps per second (which projects the reference's 40,000 / 20,000 iterations).

    python -m experiments.research.attacks_reference RUN OUT [--seeds 0,1,2] [--small-steps 1200]
        [--reference-steps 40] [--victims 200] [--attacks fora,sdar] [--sizes small,reference]

Writes ``OUT/attacks-reference.json`` after every attack run (a partial file is usable) and
``OUT/attacks-reference.md`` at the end. Results are not written into ``RUN``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from clicooper.attacks.runner import run_attack

#: The reference code's iterations (FORA run.sh; SDAR run_sdar.py on CIFAR-10).
REFERENCE_STEPS = {"fora": 40000, "sdar": 20000}
#: The reference size's settings (the ``full`` budget's, without its step count).
REFERENCE_CONFIG: dict[str, dict[str, Any]] = {"fora": {"arch": "reference", "lr": 1e-4},
                                               "sdar": {"arch": "reference", "batch": 128}}


def one(run: Path, attack: str, size: str, steps: int, seed: int, victims: int) -> dict[str, Any]:
    """One attack run; its figure, floors, convergence, training record and speed."""
    cfg = {"steps": steps, "seed": seed, "victims": victims, **(REFERENCE_CONFIG[attack] if size == "reference" else {})}
    t = time.perf_counter()
    res = run_attack(run, attack, victims=victims, seed=seed, config=cfg, write=False)
    seconds = time.perf_counter() - t
    party = next(iter(res["headline"]))
    lv = res["headline"][party][attack]
    m = lv["metrics"]
    out = {"attack": attack, "size": size, "seed": seed, "steps": steps, "config": cfg, "party": party,
           "ssim": lv["score"], "global_floor": lv["floor"], "class_floor": m.get("class_floor"),
           "convergence": lv["convergence"], "converged": lv["converged"], "training": m.get("training"),
           "seconds": seconds}
    info = res.get("results", [{}])[-1].get("info", {})
    train = info.get("train_seconds") or {"wall": seconds, "cpu": seconds}
    out.update(train_seconds=train, steps_per_second=steps / train["wall"], steps_per_cpu_second=steps / train["cpu"],
               differences_from_reference=info.get("differences_from_reference"))
    if attack == "sdar":
        lab = res["headline"][party].get("sdar-labels")
        out["labels_accuracy"] = None if lab is None else lab["score"]
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """A table per run and a line per (attack, size): mean and spread over seeds, projected reference time."""
    L = ["| attack | size | seed | steps | SSIM ¼ / ½ / full | conv. | global floor | class floor | aux fit (MSE / mean img) "
         "| s | steps/s (wall, CPU) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v, tr = r["convergence"]["values"], r["training"] or {}
        L.append(f"| {r['attack']} | {r['size']} | {r['seed']} | {r['steps']} | {' / '.join(f'{x:.3f}' for x in v)} | "
                 f"{'✓' if r['converged'] else '✗'} | {r['global_floor']:.3f} | {r['class_floor']:.3f} | "
                 f"{tr.get('aux_mse', [float('nan')])[-1]:.4f} / {tr.get('mean_image_mse', float('nan')):.4f} | "
                 f"{r['seconds']:.0f} | {r['steps_per_second']:.3f}, {r['steps_per_cpu_second']:.3f} |")
    L.append("")
    for key in dict.fromkeys((r["attack"], r["size"]) for r in rows):
        got = [r for r in rows if (r["attack"], r["size"]) == key]
        s = [r["ssim"] for r in got]
        rate = statistics.mean(r["steps_per_second"] for r in got)
        cpu = statistics.mean(r["steps_per_cpu_second"] for r in got)
        line = (f"- {key[0]} {key[1]}: SSIM {' / '.join(f'{x:.3f}' for x in s)} over seeds "
                f"{', '.join(str(r['seed']) for r in got)} (spread {max(s) - min(s):.3f}); {rate:.3f} steps per wall "
                f"second, {cpu:.3f} per CPU second")
        if key[1] == "reference":
            n = REFERENCE_STEPS[key[0]]
            line += (f"; the reference's {n:,} iterations would take {n / rate / 3600:.1f} h at this wall rate, "
                     f"{n / cpu / 3600:.1f} h of one CPU core")
        L.append(line)
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--attacks", default="fora,sdar")
    ap.add_argument("--sizes", default="small,reference")
    ap.add_argument("--small-steps", type=int, default=1200)
    ap.add_argument("--reference-steps", type=int, default=40)
    ap.add_argument("--victims", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for size in a.sizes.split(","):
        for attack in a.attacks.split(","):
            for seed in (int(s) for s in a.seeds.split(",")):
                steps = a.small_steps if size == "small" else a.reference_steps
                rows.append(one(a.run, attack, size, steps, seed, a.victims))
                print(json.dumps({k: rows[-1][k] for k in ("attack", "size", "seed", "ssim", "seconds")}), flush=True)
                (a.out / "attacks-reference.json").write_text(json.dumps(
                    {"run": str(a.run), "threads": a.threads, "rows": rows}, indent=1))
    (a.out / "attacks-reference.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
