"""CPU seconds per attack at the smoke budget on one run (1 torch thread, to compare settings under load)."""
import sys, time, json, torch
torch.set_num_threads(1)
from clicooper.attacks.budgets import settings_for, ALL_ATTACKS
from clicooper.attacks.runner import run_attack
run = sys.argv[1]
names = sys.argv[2].split(",") if len(sys.argv) > 2 else ALL_ATTACKS
out = {}
for name in names:
    kw = settings_for("smoke", name)
    t0, c0 = time.time(), time.process_time()
    res = run_attack(run, name, write=False, **kw)
    out[name] = {"cpu": round(time.process_time() - c0, 1), "wall": round(time.time() - t0, 1),
                 "levels": {f"{r['party']}/{k}": round(v["score"], 3) for r in res["results"] for k, v in r["levels"].items()}}
    print(name, out[name], flush=True)
print(json.dumps(out))
