"""Fault drills on the wide-area bed: ``python -m benchmarks.wan_faults`` (``make bench-wan``).

Each case (after an ``uninterrupted`` baseline in the same bed) runs the same configuration (fmnist-cnn, K = 2, pinned TLS, every party in its own namespace of
the ``wan`` profile) with one kind of fault injected at fixed steps of the DO, and compares the final
weights with an uninterrupted in-process run of that configuration (``train``: launch and in-process
agree within 1e-5, tests/test_node_contract.py):

* ``link-drop-30s``: nothing moves between DO and T1, either way, for 30 s (the relays stall the link);
* ``resets-and-stalls``: connection resets (RST on both sides) of DO↔T1 and T1↔T2 and 2–3 s stalls, five
  times over two rounds;
* ``trainer-killed``: T1 is SIGKILLed mid-round; the launcher restarts the nodes, which roll back to the
  last round every party checkpointed;
* ``peer-never-answers``: T2 is frozen (SIGSTOP: its sockets stay open, nothing answers); the nodes give
  up after their timeouts with an error naming what they waited for, the launcher restarts them.

While a link is stalled every node's resident memory is sampled from /proc (``VmRSS``), and each node
reports its peak (``VmHWM``) at the end: back-pressure bounds what waits (``max_pending_bytes`` per link,
a bounded inbox, bounded relay buffers), so a stall must not raise the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clicooper.config import RunConfig, make_config
from clicooper.net.launch import Event, launch_local
from clicooper.runs import load_run
from clicooper.training import train
from testbed.netns import PROFILES, WanBed, netns_unavailable

Action = Callable[[WanBed, dict[str, int]], None]


class Chaos:
    """Faults fired once each when the DO reports a (round, step); node pids from their ``listening`` events;
    a sampler of every node's resident memory."""

    def __init__(self, bed: WanBed, plan: dict[tuple[int, int], Action]) -> None:
        self.bed, self.plan = bed, dict(plan)
        self.pids: dict[str, int] = {}
        self.fired: list[tuple[int, int, float]] = []
        self.events: list[Event] = []
        self.rss_peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def on_event(self, ev: Event) -> None:
        """The launcher's event callback."""
        self.events.append(ev)
        if ev.get("event") == "listening" and "pid" in ev:
            self.pids[ev["party"]] = int(ev["pid"])
        key = (ev.get("round"), ev.get("step"))
        if ev.get("event") == "step" and ev.get("party") == "DO" and key in self.plan:
            self.plan.pop(key)(self.bed, dict(self.pids))  # type: ignore[call-overload]
            self.fired.append((*key, time.monotonic()))  # type: ignore[arg-type]

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            for party, pid in list(self.pids.items()):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        mb = int(line.split()[1]) / 1024
                        self.rss_peak[party] = max(self.rss_peak.get(party, 0.0), mb)

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(2.0)


def _stall(a: str, b: str, s: float) -> Action:
    return lambda bed, _pids: bed.stall(a, b, s)


def _reset(a: str, b: str) -> Action:
    def act(bed: WanBed, _pids: dict[str, int]) -> None:
        bed.reset(a, b)
    return act


def _freeze(party: str) -> Action:
    return lambda _bed, pids: os.kill(pids[party], signal.SIGSTOP)


CASES: dict[str, dict[str, Any]] = {
    "uninterrupted": {"plan": {}, "connect": 60.0, "idle": 120.0},  # the baseline of time and memory
    "link-drop-30s": {"plan": {(0, 2): _stall("DO", "T1", 30.0)}, "connect": 60.0, "idle": 120.0},
    "resets-and-stalls": {"plan": {(0, 1): _reset("DO", "T1"), (0, 3): _stall("T1", "T2", 3.0),
                                   (0, 5): _reset("T1", "T2"), (1, 1): _stall("DO", "T1", 2.0),
                                   (1, 3): _reset("DO", "T1")}, "connect": 60.0, "idle": 120.0},
    "trainer-killed": {"plan": {}, "kill": [("T1", 0, 4)], "connect": 60.0, "idle": 120.0},
    "peer-never-answers": {"plan": {(1, 2): _freeze("T2")}, "connect": 15.0, "idle": 30.0},
}


def max_weight_diff(a: Path, b: Path) -> float:
    """Largest |Δw| between the final weights of two run directories."""
    ra, rb = load_run(a), load_run(b)
    return max(float((v - rb.modules[k].state_dict()[n]).abs().max())
               for k, mod in ra.modules.items() for n, v in mod.state_dict().items())


def run_case(name: str, cfg: RunConfig, reference: Path, work: Path) -> dict[str, Any]:
    """One drill in a fresh ``wan`` bed; what happened, the weights against ``reference``, memory."""
    case = CASES[name]
    t0 = time.monotonic()
    with WanBed.for_config(cfg, PROFILES["wan"]) as bed:
        chaos = Chaos(bed, case["plan"])
        try:
            res = launch_local(cfg, work / name, placement=bed, on_event=chaos.on_event, max_restarts=2,
                               kill_at=case.get("kill", ()), connect_timeout_s=case["connect"],
                               idle_timeout_s=case["idle"], timeout_s=1200)
        finally:
            chaos.close()
    restarts = [e for e in chaos.events if e.get("event") == "restart"]
    done = {e["party"]: e.get("max_rss_mb") for e in chaos.events if e.get("event") == "done"}
    return {"case": name, "restarts": res.restarts, "why": [e.get("why") for e in restarts],
            "faults_fired": [(r, s) for r, s, _ in chaos.fired], "kills": res.kills,
            "max_weight_diff": max_weight_diff(reference, work / name), "seconds": time.monotonic() - t0,
            "peak_rss_mb_sampled": chaos.rss_peak, "peak_rss_mb_reported": done}


def main(argv: list[str] | None = None) -> None:
    """Run the cases (default: all) and print one JSON line each."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.wan_faults")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--steps", type=int, default=8, help="steps per round (2 rounds)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    reason = netns_unavailable()
    if reason is not None:
        print(f"wan fault drills skipped: {reason}")
        return
    torch.set_num_threads(1)
    work = a.out or Path(tempfile.mkdtemp(prefix="clicooper-wan-faults-"))
    cfg = make_config(dataset="fashion-mnist", model="fmnist-cnn", trainers=2, epochs=2, batch_size=128,
                      micro_batches=4, train_range=(0, a.steps * 128), device="cpu", provenance=False)
    reference = train(cfg.model_dump(), out=work / "reference").path
    for name in a.cases.split(","):
        print(json.dumps(run_case(name, cfg, reference, work)), flush=True)


if __name__ == "__main__":  # pragma: no cover
    main()
