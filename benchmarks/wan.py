"""Wide-area benchmark: ``python -m benchmarks.wan`` (``make bench-wan``).

Every party runs as its own node process (pinned TLS) in its own network namespace of the test bed
(:class:`testbed.netns.WanBed`): veth links shaped with ``tbf``, latency / jitter / stalls added by
the relays. For each profile and micro-batch count M it prints samples/s (the DO's last round: connection
set-up and the first round's warm-up excluded), the **physical limit** — the link bandwidth divided by the
bytes per sample that cross the busiest link in one direction (from the plan's cut shapes and the wire
codec: fmnist-cnn sends 25,088 bytes per sample each way between DO and T1 in float32) — and their ratio.
It also reports the bytes the relays actually forwarded on that link per sample (TLS, HTTP/2 and protobuf
framing included; TCP/IP headers, ≈ 4.5 % more on the veth, are not).

The loopback row runs the same nodes on 127.0.0.1 without any bed, against an in-process run of the
same configuration (``train``), both at M = 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from clicooper import rundir
from clicooper.config import RunConfig, make_config
from clicooper.models.partition import Plan
from clicooper.net.launch import Event, launch_local
from clicooper.protocol.wire_codec import wire_bytes
from clicooper.training import train
from testbed.netns import PROFILES, Profile, WanBed, netns_unavailable

#: Steps per round for each profile: a round of a few seconds (the slow profile moves 5× fewer bytes).
STEPS = {"lan": 16, "wan": 12, "poor": 6}


def link_bytes_per_sample(plan: Plan, config: RunConfig) -> dict[str, float]:
    """Bytes per sample on each direction of each link, ``{"DO->T1": 25088.0, …}``, in the run's wire codec:
    every cut tensor forward and its gradient back (+ the labels to the last trainer in the open tail)."""
    k = config.trainers
    owners = ["DO", *(f"T{i + 1}" for i in range(k)), "DO"]
    cuts = [plan.head.output_shape, *(s.output_shape for s in plan.segments)]
    if config.topology == "open-tail":
        cuts = cuts[:k]  # the last trainer holds the tail: no cut after it
    out: dict[str, float] = {}
    for j, shape in enumerate(cuts):
        b = float(wire_bytes((1, *shape), config.wire_dtype))
        for a, c in ((owners[j], owners[j + 1]), (owners[j + 1], owners[j])):
            out[f"{a}->{c}"] = out.get(f"{a}->{c}", 0.0) + b
    if config.topology == "open-tail":
        out[f"DO->T{k}"] = out.get(f"DO->T{k}", 0.0) + 8.0  # int64 labels
    return out


def _last_round(run: Path) -> dict[str, Any]:
    return rundir.read_json(run / rundir.METRICS)["epochs"][-1]


def _run_nodes(cfg: RunConfig, out: Path, bed: WanBed | None, **kw: Any) -> tuple[dict[str, Any], list[Event]]:
    events: list[Event] = []
    launch_local(cfg, out, placement=bed, max_restarts=0, timeout_s=1200, connect_timeout_s=60,
                 idle_timeout_s=180, on_event=events.append, **kw)
    return _last_round(out), events


def measure(cfg: RunConfig, profile: Profile, work: Path) -> dict[str, Any]:
    """One launch of ``cfg`` in a fresh bed of ``profile``: samples/s, limit, ratio, measured link bytes."""
    with WanBed.for_config(cfg, profile) as bed:
        before = bed.link_bytes()
        last, events = _run_nodes(cfg, work, bed)
        after = bed.link_bytes()
    run_cfg = make_config(**rundir.read_json(work / rundir.CONFIG))
    plan = Plan.from_dict(rundir.read_json(work / rundir.PLAN))
    per_sample = link_bytes_per_sample(plan, run_cfg)
    busiest = max(per_sample, key=lambda key: per_sample[key])
    samples = run_cfg.epochs * len(range(*run_cfg.train_range)) if run_cfg.train_range else None
    limit = profile.limit(per_sample[busiest])
    rate = float(last["samples_per_s"])
    done = {e["party"]: e.get("max_rss_mb") for e in events if e.get("event") == "done"}
    return {
        "profile": profile.name, "micro_batches": run_cfg.micro_batches, "batch_size": run_cfg.batch_size,
        "wire_dtype": run_cfg.wire_dtype, "overlap_steps": run_cfg.overlap_steps, "samples_per_s": rate, "busiest_link": busiest,
        "bytes_per_sample": per_sample[busiest], "limit_samples_per_s": limit, "ratio": rate / limit,
        "measured_bytes_per_sample": (after.get(busiest, 0) - before.get(busiest, 0)) / samples if samples else None,
        "max_rss_mb": done,
    }


def loopback(cfg: RunConfig, work: Path, repeats: int = 3) -> dict[str, Any]:
    """M = 1 over loopback gRPC (no bed), pinned TLS and plaintext, ÷ in-process on the same config: the three
    run in turn ``repeats`` times (so that a change of load hits all three), each figure their median."""
    c = cfg.model_copy(update={"micro_batches": 1})
    runs: dict[str, list[float]] = {"inproc": [], "tls": [], "plaintext": []}
    for i in range(repeats):
        runs["inproc"].append(_last_round(train(c.model_dump(), out=work / f"inproc{i}").path)["samples_per_s"])
        runs["tls"].append(_run_nodes(c, work / f"loopback_tls{i}", None)[0]["samples_per_s"])
        runs["plaintext"].append(_run_nodes(c, work / f"loopback_plain{i}", None, insecure_loopback=True)[0]
                                 ["samples_per_s"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"repeats": repeats, "inproc_samples_per_s": med["inproc"], "loopback_samples_per_s": med["tls"],
            "ratio": med["tls"] / med["inproc"], "plaintext_samples_per_s": med["plaintext"],
            "plaintext_ratio": med["plaintext"] / med["inproc"], "runs": runs}


def base_config(a: argparse.Namespace, profile: str | None) -> RunConfig:
    """The benchmark's run: fmnist-cnn (by default), K = 2, two rounds of ``STEPS[profile]`` steps."""
    steps = a.steps or STEPS.get(profile or "lan", 12)
    return make_config(dataset=a.dataset, model=a.model, trainers=a.trainers, epochs=2, batch_size=a.batch_size,
                       train_range=(0, steps * a.batch_size), device="cpu", provenance=False, wire_dtype=a.wire,
                       overlap_steps=a.overlap)


def table(rows: list[dict[str, Any]]) -> str:
    """The measured rows as a Markdown table."""
    head = ("| profile | M | batch | wire | overlap | samples/s | limit (samples/s) | ratio | bytes/sample on the "
            "busiest link (plan / relays) |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        meas = r["measured_bytes_per_sample"]
        lines.append(f"| {r['profile']} | {r['micro_batches']} | {r['batch_size']} | {r['wire_dtype']} | "
                     f"{'yes' if r.get('overlap_steps') else 'no'} | "
                     f"{r['samples_per_s']:,.0f} | {r['limit_samples_per_s']:,.0f} | {r['ratio']:.2f} | "
                     f"{r['busiest_link']}: {r['bytes_per_sample']:,.0f} / {meas:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure every profile × M (and the loopback row); print JSON lines, then the table."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.wan")
    ap.add_argument("--profiles", default="lan,wan,poor")
    ap.add_argument("--micro", default="1,4,8")
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--trainers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default: per profile)")
    ap.add_argument("--wire", default="fp32", help="wire_dtype: fp32 | bf16 | fp16 | int8")
    ap.add_argument("--overlap", action="store_true", help="overlap_steps (opt-in: the DO's head one step stale)")
    ap.add_argument("--no-loopback", action="store_true")
    ap.add_argument("--loopback-only", action="store_true", help="only the loopback row")
    ap.add_argument("--repeats", type=int, default=3, help="loopback row: runs of each transport, medians")
    ap.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    a = ap.parse_args(argv)
    reason = netns_unavailable()
    if reason is not None:
        print(f"bench-wan skipped: {reason}")
        return
    torch.set_num_threads(1)
    work = a.out or Path(tempfile.mkdtemp(prefix="clicooper-wan-"))
    rows = []
    for name in ([] if a.loopback_only else a.profiles.split(",")):
        for m in (int(x) for x in a.micro.split(",")):
            cfg = base_config(a, name).model_copy(update={"micro_batches": m})
            row = measure(cfg, PROFILES[name], work / f"{name}_m{m}")
            print(json.dumps(row), flush=True)
            rows.append(row)
    if rows:
        print(table(rows))
    if not a.no_loopback:
        print(json.dumps({"loopback_m1": loopback(base_config(a, "lan"), work / "loopback", a.repeats)}), flush=True)


if __name__ == "__main__":  # pragma: no cover
    main()
