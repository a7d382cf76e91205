"""Issue 15 measurements: live detection of each malicious behaviour, false alarms, DO overhead, audits.

    python -m experiments.research.malicious detect --model fmnist-cnn --rows 10000 --epochs 1 \\
        --behaviours honest,fsha,scale,sign-flip,backdoor,lazy --seeds 0,1 --defenses none,clicooper \\
        --out results/malicious/detect.json
    python -m experiments.research.malicious audit --model fmnist-cnn --rows 10000 --epochs 1 \\
        --behaviours honest,fsha,scale,sign-flip,backdoor,lazy --fractions 0.01,0.1,1 \\
        --out results/malicious/audit.json

``detect`` trains each (model, defense, behaviour, seed) with the DO's detection in *monitor* mode
(``stop_on_alarm = false``: every check's first alarm is recorded and the run goes on, so one run gives the
steps until detection of each check, what FSHA reconstructed by then and over the whole run). A behaviour
counts as detected when any check fired; honest runs that fire are false alarms. The DO's extra compute is
the time of its checks (guard hooks, the validation queries' head and tail passes) over the rest of its own
compute, timed inside the run (wall clock on a shared 2-core machine: noisy, see docs/malicious.md).

``audit`` trains with ``audit.enabled`` and replays every trainer at each fraction ``f``: caught or not,
audit time as a share of the training time, storage per round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from clicooper import rundir
from clicooper.core.audit import audit_run, keys_from_identity
from clicooper.provenance.identity import load_identity
from clicooper.training import Session
from clicooper.training import train as run_train

DATASETS = {"fmnist-cnn": "fashion-mnist", "fmnist-resnet": "fashion-mnist", "digits-mlp": "digits",
            "digits-cnn": "digits"}


def _config(model: str, rows: int, epochs: int, seed: int, defense: str, behaviour: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {"dataset": DATASETS[model], "model": model, "trainers": 2, "epochs": epochs,
                           "seed": seed, "defense": defense, "train_range": (0, rows)}
    if behaviour != "honest":
        cfg["adversary"] = {"behaviour": behaviour}
    return cfg


class _DOTimer:
    """Times every DO method of a session (its compute), to weigh the checks' share against."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.by_name: dict[str, float] = {}

    def wrap(self, obj: Any, name: str) -> None:
        f = getattr(obj, name)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                self.seconds += dt
                self.by_name[name] = self.by_name.get(name, 0.0) + dt
        setattr(obj, name, timed)


def _timed_session(timer: _DOTimer) -> Any:
    """Session.__init__ patched to time its DO (start_step, handle, start_query, answer_probs)."""
    orig = Session.__init__

    def init(self: Any, *a: Any, **k: Any) -> None:
        orig(self, *a, **k)
        for name in ("start_step", "handle", "start_query", "answer_probs"):
            timer.wrap(self.do, name)
    return orig, init


def _first_alarm(alarms: dict[str, Any], steps: int) -> tuple[str | None, int | None]:
    best = None
    for det, a in alarms.items():
        g = a["round"] * steps + a["step"]
        if best is None or g < best[1]:
            best = (det, g)
    return best if best is not None else (None, None)


def _fsha_at(curve: list[dict[str, Any]], steps: int, at: int | None) -> dict[str, Any]:
    """FSHA's reconstruction before detection (``at``, global step) and its best over the run."""
    def g(row: dict[str, Any]) -> int:
        return row["round"] * steps + row["step"]
    out: dict[str, Any] = {}
    rows = [r for r in curve if "ssim" in r]
    if not rows:
        return out
    before = [r for r in rows if at is None or g(r) <= at]
    out["ssim_before_detection"] = before[-1]["ssim"] if before else None
    out["best_ssim_run"] = max(r["ssim"] for r in rows)
    out["last_ssim_run"] = rows[-1]["ssim"]
    out["class_floor"] = statistics.mean(r["class_floor"] for r in rows if "class_floor" in r)
    out["curve"] = [[g(r), round(r["ssim"], 4), round(r.get("class_floor", 0.0), 4)] for r in rows]
    return out


def detect_one(model: str, rows: int, epochs: int, seed: int, defense: str, behaviour: str, work: Path,
               detection: dict[str, Any] | None = None, variant: str = "default") -> dict:
    """One monitored run (module docstring); ``detection``: settings over the defaults (``variant`` names them)."""
    cfg = _config(model, rows, epochs, seed, defense, behaviour) | {
        "detection": {"enabled": True, "stop_on_alarm": False} | (detection or {}), "provenance": False}
    out = work / f"{model}-{defense}-{behaviour}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    timer = _DOTimer()
    orig, patched = _timed_session(timer)
    Session.__init__ = patched  # type: ignore[method-assign]
    t0 = time.perf_counter()
    try:
        run_train(cfg, out=out)
    finally:
        Session.__init__ = orig  # type: ignore[method-assign]
    secs = time.perf_counter() - t0
    m = rundir.read_json(out / rundir.METRICS)
    active = rundir.read_json(out / rundir.ATTACKS / "active.json")
    det = active["detection"]
    bs = 128 if rows >= 6400 else 16  # RunConfig.resolved's default batch size
    steps = -(-rows // bs)
    which, at = _first_alarm(det["alarms"], steps)
    # the DO's side of its checks: guard hooks + the validation queries' head and tail passes (the trainers'
    # work answering the queries is theirs, not the DO's)
    checks = det["seconds"] + timer.by_name.get("start_query", 0.0) + timer.by_name.get("answer_probs", 0.0)
    res = {"model": model, "defense": defense, "behaviour": behaviour, "seed": seed, "variant": variant,
           "detection_settings": detection or {}, "rows": rows,
           "epochs": epochs, "steps_per_epoch": steps, "detected": which is not None, "first_detector": which,
           "steps_to_detection": at, "alarms": det["alarms"], "test_acc": m.get("final_test_acc"),
           "seconds": secs, "do_seconds": timer.seconds, "check_seconds": checks,
           "do_overhead": checks / max(1e-9, timer.seconds - checks), "fake_steps": det["fake_steps"]}
    tr = active.get("trainer") or {}
    if behaviour == "fsha":
        res["fsha"] = _fsha_at(tr.get("curve", []), steps, at)
    if behaviour == "backdoor" and tr.get("success"):
        res["backdoor"] = tr["success"][-1]
    shutil.rmtree(out, ignore_errors=True)
    return res


def audit_one(model: str, rows: int, epochs: int, behaviour: str, fractions: list[float], work: Path) -> dict:
    """One run with audit logs; each trainer audited at every fraction."""
    cfg = _config(model, rows, epochs, 0, "none", behaviour) | {"audit": {"enabled": True}}
    out = work / f"audit-{model}-{behaviour}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run_train(cfg, out=out)
    train_s = time.perf_counter() - t0
    res: dict[str, Any] = {"model": model, "behaviour": behaviour, "rows": rows, "epochs": epochs,
                           "train_seconds": train_s, "parties": {}}
    for party in ("T1", "T2"):
        idx = rundir.read_json(out / "audit" / party / f"round_{epochs - 1}" / "index.json")
        keys = keys_from_identity(load_identity(out / "keys" / f"{party}.key"), out)
        row: dict[str, Any] = {"bytes_per_round": idx["bytes"], "messages_per_round": idx["messages"], "audits": {}}
        for f in fractions:
            rep = audit_run(out, party, fraction=f, keys=keys)
            row["audits"][str(f)] = {"ok": rep.ok, "seconds": rep.seconds, "share_of_training": rep.seconds / train_s,
                                     "intervals": sum(len(s.intervals) for s in rep.stages),
                                     "failures": [x for s in rep.stages for x in s.failures][:2]}
        res["parties"][party] = row
    shutil.rmtree(out, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.research.malicious",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["detect", "audit", "table", "fsha-offline"])
    ap.add_argument("--steps", type=int, default=2000, help="fsha-offline: steps")
    ap.add_argument("files", nargs="*", type=Path, help="table: result files")
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--behaviours", default="honest,fsha,scale,sign-flip,backdoor,lazy")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--defenses", default="none")
    ap.add_argument("--fractions", default="0.01,0.1,1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", default="default", help="name of the --detection settings (results key)")
    ap.add_argument("--detection", default="{}", help="JSON over the default detection settings")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.what == "table":
        print(tables(a.files))
        return
    torch.set_num_threads(a.threads)
    if a.what == "fsha-offline":
        curve = fsha_offline(a.steps)
        if a.out is not None:
            a.out.write_text(json.dumps({"steps": a.steps, "curve": curve}))
        print(json.dumps(curve))
        return
    work = Path(tempfile.mkdtemp(prefix="malicious-"))
    results = json.loads(a.out.read_text()) if a.out.is_file() else []
    keys = ("model", "behaviour", "seed", "defense", "variant")
    done = {json.dumps({k: r.get(k, "default") for k in keys if k in r or k == "variant"}) for r in results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for beh in a.behaviours.split(","):
        for d in a.defenses.split(","):
            for s in [int(x) for x in a.seeds.split(",")] if a.what == "detect" else [0]:
                key = {"model": a.model, "behaviour": beh, "seed": s, "defense": d, "variant": a.variant} \
                    if a.what == "detect" else {"model": a.model, "behaviour": beh, "variant": "default"}
                if json.dumps(key) in done:
                    continue
                if a.what == "detect":
                    r = detect_one(a.model, a.rows, a.epochs, s, d, beh, work, json.loads(a.detection), a.variant)
                else:
                    r = audit_one(a.model, a.rows, a.epochs, beh, [float(x) for x in a.fractions.split(",")], work)
                results.append(r)
                a.out.write_text(json.dumps(results, indent=1))
                print(json.dumps({k: v for k, v in r.items() if k not in ("fsha", "alarms", "parties")}), flush=True)
    shutil.rmtree(work, ignore_errors=True)


def fsha_offline(steps: int, rows: int = 10_000, every: int = 100, seed: int = 0) -> list[list[float]]:
    """FSHA against a lone copy of fmnist-cnn's DO head (its Adam, lr 1e-3), with the attack's own nets and
    optimizers, nothing stopping it: how far it gets in ``steps`` steps. Returns [[step, SSIM], …] on 200
    of the DO's rows (the chain is left out: the head only sees FSHA's gradient in a hijacked run anyway)."""
    import torch.nn.functional as F
    from torch import nn

    from clicooper.attacks.active.fsha_nets import gradient_penalty, make_nets
    from clicooper.attacks.metrics import ssim
    from clicooper.data import load_dataset

    ds = load_dataset("fashion-mnist")
    x, aux = ds.x_train[:rows], ds.x_test[: len(ds.x_test) // 2]
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    pilot, dec, disc = make_nets((1, 28, 28), (32, 14, 14))
    oa = torch.optim.Adam([*pilot.parameters(), *dec.parameters()], lr=1e-4)
    od = torch.optim.Adam(disc.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed + 1)
    curve = []
    for s in range(steps + 1):
        if s % every == 0:
            with torch.no_grad():
                curve.append([s, float(ssim(dec(head(x[:200])).clamp(0, 1), x[:200]).mean())])
        xp, xb = x[torch.randint(0, rows, (128,), generator=g)], aux[torch.randint(0, len(aux), (128,), generator=g)]
        z = head(xp)
        zq = z.detach().requires_grad_(True)
        opt.zero_grad()
        z.backward(torch.autograd.grad(disc(zq).mean(), zq)[0])
        opt.step()
        zp = pilot(xb)
        oa.zero_grad()
        F.mse_loss(dec(zp), xb).backward()
        oa.step()
        od.zero_grad()
        (disc(zp.detach()).mean() - disc(z.detach()).mean()
         + 500 * gradient_penalty(disc, z.detach(), zp.detach(), g)).backward()
        od.step()
    return curve


# ------------------------------------------------------------------------------------------------ tables
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def detection_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: per (model, defense, behaviour, variant) detection rate, steps, first check, overhead."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["model"], r["defense"], r["behaviour"], r.get("variant", "default")), []).append(r)
    out = ["| model | defense | behaviour | settings | runs | detected | steps to detection (each run) | first check | "
           "FSHA SSIM before detection / best over the run / class floor | test acc | DO overhead |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, defense, beh, var), rs in sorted(groups.items()):
        det = [r for r in rs if r["detected"]]
        steps = ", ".join(str(r["steps_to_detection"]) for r in det) or "–"
        checks = ", ".join(sorted({r["first_detector"] for r in det})) or "–"
        fs = [r.get("fsha") for r in rs if r.get("fsha")]
        fsha = "–" if not fs else "{:.3f} / {:.3f} / {:.3f}".format(
            statistics.mean(f["ssim_before_detection"] or 0 for f in fs), max(f["best_ssim_run"] for f in fs),
            statistics.mean(f["class_floor"] for f in fs))
        acc = statistics.mean(r["test_acc"] for r in rs)
        ovh = statistics.mean(r["do_overhead"] for r in rs)
        rate = f"{len(det)}/{len(rs)}" + (" (false alarms)" if beh == "honest" else "")
        out.append(f"| {model} | {defense} | {beh} | {var} | {len(rs)} | {rate} | {steps} | {checks} | {fsha} | "
                   f"{acc:.3f} | {_pct(ovh)} |")
    return out


def audit_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: per (model, behaviour, party) caught at each f, audit time share, storage per round."""
    out = ["| model | behaviour | party | caught at f = 0.01 / 0.1 / 1 | audit time ÷ training, f = 0.01 / 0.1 / 1 | "
           "intervals replayed | log per round |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for party, v in r["parties"].items():
            au = v["audits"]
            fs = sorted(au, key=float)
            caught = " / ".join("pass" if au[f]["ok"] else "**fail**" for f in fs)
            share = " / ".join(f"{100 * au[f]['share_of_training']:.1f} %" for f in fs)
            iv = " / ".join(str(au[f]["intervals"]) for f in fs)
            out.append(f"| {r['model']} | {r['behaviour']} | {party} | {caught} | {share} | {iv} | "
                       f"{v['bytes_per_round'] / 1e6:.0f} MB |")
    return out


def tables(paths: list[Path]) -> str:
    """The markdown tables of result files (detect and audit results are told apart by their fields)."""
    det: list[dict[str, Any]] = []
    aud: list[dict[str, Any]] = []
    for p in paths:
        for r in json.loads(Path(p).read_text()):
            (aud if "parties" in r else det).append(r)
    return "\n".join(detection_table(det) + [""] + audit_table(aud))


if __name__ == "__main__":
    main()
