"""``clicooper launch --local``: every party as its own process on 127.0.0.1, supervised.

The launcher writes ``RUN/config.json`` and ``RUN/plan.json``, a pinned certificate set in ``RUN/certs``
(unless plaintext loopback was asked for), one run directory per party in ``RUN/nodes/<party>``, then
starts one ``python -m clicooper.net.node`` per party on free loopback ports and follows their JSON-line
events. When a node dies (crash, SIGKILL, error), it stops the others and starts them all again on fresh
ports: the nodes roll back to the last round every party checkpointed (see :mod:`clicooper.net.node`),
so the run finishes with the same weights as an uninterrupted one. At the end the trainers deliver their
segments to the DO over their links (:mod:`clicooper.net.delivery`), and the launcher takes the model files
from the DO's run directory — what the DO received and checked, never the trainers' own copies — into
``RUN/model/`` (the layout of an in-process run: ``clicooper evaluate RUN`` works).
Keys are made as separate organisations make them: each party's TLS key and ledger key in its own
``RUN/nodes/<party>/own/`` (``clicooper certs --party``), and ``RUN/certs`` holds only the public set
assembled from their cards (``clicooper certs assemble``); with plaintext loopback, each party gets its
own ledger key in ``RUN/nodes/<party>/keys/``. At the end the
byte-identical ledger copies become ``RUN/ledger.jsonl`` (``clicooper verify RUN``).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clicooper import rundir
from clicooper.config import RunConfig, make_config
from clicooper.core.audit_log import AUDIT_DIR
from clicooper.core.builder import neighbours, party_names
from clicooper.core.checkpoint import run_finished
from clicooper.core.observe import import_observations
from clicooper.core.run_loop import ACTIVE_REPORT
from clicooper.core.setup import resolve_run
from clicooper.data import load_dataset
from clicooper.errors import ConfigError, RunDirError, WireError
from clicooper.models.partition import Plan
from clicooper.net.builder import check_node_config, load_run_config
from clicooper.net.certs import CARD_SUFFIX, assemble_set, read_ledger_keys, write_own_party
from clicooper.provenance.identity import Identity, load_identity
from clicooper.provenance.setup import key_path
from clicooper.provenance.stages import positions_of
from clicooper.rundir import model_file
from clicooper.runs import load_run

#: (party, round, step): SIGKILL that party right after it reports this step (tests, chaos drills).
KillPoint = tuple[str, int, int]
Event = dict[str, Any]


@dataclass
class LaunchResult:
    """What :func:`launch_local` did."""

    run_dir: Path
    restarts: int
    seconds: float
    kills: list[KillPoint] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound then released; a node that loses the race exits
    with "port in use" and the launcher retries on fresh ports)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _config_of(config: RunConfig | dict[str, Any] | str | Path) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return make_config(**config)
    return load_run_config(config)


def prepare_run(config: RunConfig, out: Path, *, insecure: bool) -> tuple[RunConfig, list[str]]:
    """Write config.json, plan.json, certs/ and nodes/ of a new launched run; returns (config, notices)."""
    notices: list[str] = []
    rundir.check_new_run_dir(out, resumable=False)  # a launched run resumes with resume_local, never train()
    check_node_config(config)
    ds = load_dataset(config.dataset, options=config.data)
    config, bp = resolve_run(config, num_train=len(ds.train_ids(config.train_range)), input_shape=ds.input_shape,
                             num_classes=ds.num_classes)
    plan = bp.plan
    if config.provenance:
        # the per-position watermark capacity in plan.json, as an in-process run writes it; every node reads
        # this plan, so every node derives the same run id
        plan.extra["watermark"] = {str(p.position): p.cap.to_json()
                                   for p in positions_of(config, plan, bp.modules()) if p.cap is not None}
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / rundir.CONFIG, config.model_dump(mode="json"))
    rundir.write_json(out / rundir.PLAN, plan.to_dict())
    for p in party_names(config):
        (out / "nodes" / p).mkdir(parents=True, exist_ok=True)
        if not insecure:  # as across organisations: each party's keys in its own directory, only cards shared
            write_own_party(p, own_dir(out, p))
        elif config.provenance:  # each party's own ledger key, in its own run directory only
            key_path(out / "nodes" / p, p).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            Identity.generate().save(key_path(out / "nodes" / p, p))
    if not insecure:
        assemble_set([own_dir(out, p) / f"{p}{CARD_SUFFIX}" for p in party_names(config)], out / "certs",
                     names=party_names(config))
    return config, notices


def own_dir(out: Path, party: str) -> Path:
    """``RUN/nodes/<party>/own``: what ``clicooper certs --party`` made for this party (its private keys)."""
    return out / "nodes" / party / "own"


class _Proc:
    def __init__(self, party: str, popen: subprocess.Popen[str], events: queue.Queue[Event]):
        self.party, self.popen = party, popen
        self.thread = threading.Thread(target=self._read, args=(events,), daemon=True)
        self.thread.start()

    def _read(self, events: queue.Queue[Event]) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(ev, dict):
                events.put(ev)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s (only this launcher's own child)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(3.0)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5.0)


class Placement(Protocol):
    """Where :func:`launch_local` runs each node and how the nodes reach each other (at every start)."""

    def addresses(self, config: RunConfig) -> dict[str, tuple[str, dict[str, str]]]:
        """Per party: its ``--listen`` address and its ``--peers`` table."""
        ...

    def wrap(self, party: str, argv: list[str]) -> list[str]:
        """The command that runs ``argv`` (a node) for ``party``."""
        ...


class LoopbackPlacement:
    """The default: every node on 127.0.0.1, on free ports drawn at each start."""

    def addresses(self, config: RunConfig) -> dict[str, tuple[str, dict[str, str]]]:
        """Fresh loopback ports; every peer at its 127.0.0.1 port."""
        names = party_names(config)
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        return {p: (f"127.0.0.1:{ports[p]}", {q: f"127.0.0.1:{ports[q]}" for q in neighbours(config, p)})
                for p in names}

    def wrap(self, party: str, argv: list[str]) -> list[str]:
        """``argv`` as it is."""
        return argv


@dataclass(frozen=True)
class NodeSetup:
    """How the launcher starts its nodes: TLS or plaintext, timeouts, placement."""

    insecure: bool = False
    idle_timeout_s: float = 120.0
    connect_timeout_s: float = 20.0
    placement: Placement = field(default_factory=LoopbackPlacement)
    max_epsilon: float | None = None  # the DO's --max-epsilon
    dismiss_detection: bool = False  # the DO's --dismiss-detection


def _start_nodes(out: Path, config: RunConfig, setup: NodeSetup, events: queue.Queue[Event]) -> dict[str, _Proc]:
    procs: dict[str, _Proc] = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for p, (listen, peer_table) in setup.placement.addresses(config).items():
        peers = ",".join(f"{q}={addr}" for q, addr in peer_table.items())
        cmd = [sys.executable, "-m", "clicooper.net.node", "--config", str(out / rundir.CONFIG), "--party", p,
               "--run-dir", str(out / "nodes" / p), "--listen", listen, "--peers", peers,
               "--connect-timeout", str(setup.connect_timeout_s), "--idle-timeout", str(setup.idle_timeout_s)]
        own = own_dir(out, p)
        cmd += ["--insecure-loopback"] if setup.insecure else [
            "--certs", str(out / "certs"), "--key", str(own / f"{p}.key"), "--identity", str(own / f"{p}.ledger.key")]
        if p == "DO" and setup.max_epsilon is not None:
            cmd += ["--max-epsilon", repr(setup.max_epsilon)]
        if p == "DO" and setup.dismiss_detection:
            cmd += ["--dismiss-detection"]
        log = open(out / "nodes" / p / "node.log", "a", encoding="utf-8")  # noqa: SIM115 - child owns it
        popen = subprocess.Popen(setup.placement.wrap(p, cmd), stdout=subprocess.PIPE, stderr=log, text=True,
                                 env=env)
        log.close()
        procs[p] = _Proc(p, popen, events)
    return procs


def _log_tail(out: Path, party: str) -> str:
    f = out / "nodes" / party / "node.log"
    lines = f.read_text("utf-8", errors="replace").strip().splitlines() if f.is_file() else []
    errs = [ln for ln in lines if ln.startswith("error:")]
    return (errs or lines or ["(no output)"])[-1]


def _do_finished(out: Path) -> bool:
    try:
        return run_finished(out / "nodes" / "DO")
    except RunDirError:  # unreadable: not finished
        return False


def collect(out: Path, config: RunConfig) -> dict[str, Any]:
    """Gather the run's records from the nodes (:func:`gather`); after a complete run, copy the model files
    the DO holds — its own head/tail and the segments the trainers delivered to it in band — into
    ``RUN/model`` and add the test accuracy. A run the DO stopped cleanly (ε budget, detection) has no
    delivered model yet: its records say so (``metrics["stopped"]``) and ``launch --resume`` continues it."""
    do_dir = out / "nodes" / "DO"
    metrics = rundir.read_json(do_dir / rundir.METRICS)
    gather(out, config)
    if "stopped" in metrics:
        rundir.write_json(out / rundir.METRICS, metrics)
        rundir.write_json(out / rundir.STATE, {"completed_rounds": metrics["stopped"]["completed_epochs"]})
        return metrics
    plan = Plan.from_dict(rundir.read_json(out / rundir.PLAN))
    files = [model_file(pp.party) for pp in sorted(plan.parties, key=lambda x: x.position)]
    missing = [f for f in files if not (do_dir / rundir.MODEL_DIR / f).is_file()]
    if missing:
        raise WireError(f"the DO holds no {', '.join(missing)} in {do_dir / rundir.MODEL_DIR}: the segments were "
                        f"not delivered; see {out}/nodes/*/node.log")
    (out / rundir.MODEL_DIR).mkdir(exist_ok=True)
    for f in files:
        shutil.copy2(do_dir / rundir.MODEL_DIR / f, out / rundir.MODEL_DIR / f)
    run = load_run(out)
    ds = run.dataset()
    acc = run.accuracy(ds.x_test, ds.y_test)
    if metrics["epochs"]:
        metrics["epochs"][-1]["test_acc"] = acc
    metrics["final_test_acc"] = acc
    metrics["do_flop_share"] = run.plan.do_flop_share
    rundir.write_json(out / rundir.METRICS, metrics)
    rundir.write_json(out / rundir.STATE, {"completed_rounds": config.epochs})
    return metrics


def gather(out: Path, config: RunConfig) -> None:
    """The run directory's records from the nodes' own directories, as an in-process run lays them out:
    the ledger (every copy identical), the DO's secrets, ``privacy.json``, ``attacks/active.json`` (the DO's,
    with a malicious trainer's own report), the trainers' observations joined with the DO's sample ids
    (:func:`clicooper.core.observe.import_observations`) and the trainers' audit logs."""
    do_dir = out / "nodes" / "DO"
    trainers = party_names(config)[1:]
    if config.provenance and (do_dir / rundir.LEDGER).is_file():
        collect_ledger(out, config)
    if (do_dir / rundir.SECRETS).is_dir():
        shutil.copytree(do_dir / rundir.SECRETS, out / rundir.SECRETS, dirs_exist_ok=True)
    if (do_dir / rundir.PRIVACY).is_file():
        shutil.copy2(do_dir / rundir.PRIVACY, out / rundir.PRIVACY)
    active_file = do_dir / rundir.ATTACKS / ACTIVE_REPORT
    if active_file.is_file():
        active = rundir.read_json(active_file)
        for t in trainers:  # the research option's own report, kept on the malicious trainer's machine
            f = out / "nodes" / t / rundir.ATTACKS / ACTIVE_REPORT
            if f.is_file():
                active["trainer"] = rundir.read_json(f).get("trainer")
        rundir.write_json(out / rundir.ATTACKS / ACTIVE_REPORT, active)
    if config.record_observations:
        recorded = [out / "nodes" / t for t in trainers if (out / "nodes" / t / rundir.OBSERVATIONS / t).is_dir()]
        if recorded:
            import_observations(out, recorded)
    for t in trainers:  # what each trainer keeps for audits (clicooper audit RUN --party T<i>)
        log = out / "nodes" / t / AUDIT_DIR / t
        if log.is_dir():
            shutil.copytree(log, out / AUDIT_DIR / t, dirs_exist_ok=True)


def collect_ledger(out: Path, config: RunConfig) -> None:
    """Check that every party's ledger copy is byte-identical, then write ``RUN/ledger.jsonl`` and
    ``RUN/keys/<party>.pub`` (hex public keys read from each party's own key file, for ``verify``)."""
    copies = {p: (out / "nodes" / p / rundir.LEDGER) for p in party_names(config)}
    missing = [p for p, f in copies.items() if not f.is_file()]
    if missing:
        raise WireError(f"no ledger copy from {', '.join(missing)} in {out}/nodes: see their node.log")
    data = {p: f.read_bytes() for p, f in copies.items()}
    differ = [p for p, b in data.items() if b != data["DO"]]
    if differ:
        raise WireError(f"the ledger copies of {', '.join(differ)} differ from the DO's: the run's ledger is not "
                        f"agreed; compare {out}/nodes/*/{rundir.LEDGER}")
    (out / rundir.LEDGER).write_bytes(data["DO"])
    (out / rundir.KEYS).mkdir(exist_ok=True)
    pinned = read_ledger_keys(out / "certs") if (out / "certs").is_dir() else None  # the public set, if any
    for p in party_names(config):
        pub = pinned[p] if pinned and p in pinned else load_identity(key_path(out / "nodes" / p, p)).public_key
        (out / rundir.KEYS / f"{p}.pub").write_text(pub.hex() + "\n", "ascii")


class _Watch:
    """One launch's node processes, watched: events forwarded, kill points fired, the first failure named."""

    def __init__(self, out: Path, config: RunConfig, kills: list[KillPoint], on_event: Callable[[Event], None] | None,
                 *, t_start: float, timeout_s: float) -> None:
        self.out, self.config, self.kills, self.on_event = out, config, kills, on_event
        self.t_start, self.timeout_s = t_start, timeout_s
        self.done_kills: list[KillPoint] = []
        self.events: queue.Queue[Event] = queue.Queue()
        self.procs: dict[str, _Proc] = {}

    def _event(self, ev: Event) -> None:
        if self.on_event is not None:
            self.on_event(ev)
        if self.kills and ev.get("event") == "step" and (ev.get("party"), ev.get("round"), ev.get("step")) == self.kills[0]:
            victim = self.procs[self.kills[0][0]].popen
            if victim.poll() is None:
                victim.send_signal(signal.SIGKILL)
            self.done_kills.append(self.kills.pop(0))

    def run_once(self, setup: NodeSetup) -> str | None:
        """Start every node, follow them until all exit 0 (``None``) or one fails (its name)."""
        self.procs = _start_nodes(self.out, self.config, setup, self.events)
        try:
            while True:
                if time.monotonic() - self.t_start > self.timeout_s:
                    raise WireError(f"launch did not finish within {self.timeout_s:.0f} s; node logs are in "
                                    f"{self.out}/nodes")
                try:
                    self._event(self.events.get(timeout=0.1))
                except queue.Empty:
                    pass
                codes = {p: pr.popen.poll() for p, pr in self.procs.items()}
                bad = [p for p, c in codes.items() if c not in (None, 0)]
                if bad:
                    return bad[0]
                if all(c == 0 for c in codes.values()):
                    return None
        finally:
            for pr in self.procs.values():
                pr.stop()
            for pr in self.procs.values():
                pr.thread.join(2.0)
            while not self.events.empty():  # events of stopped nodes
                ev = self.events.get_nowait()
                if self.on_event is not None:
                    self.on_event(ev)

    def killed(self, party: str) -> bool:
        """Whether ``party`` died of this launch's own kill drill."""
        return bool(self.done_kills) and self.done_kills[-1][0] == party \
            and self.procs[party].popen.returncode == -signal.SIGKILL


def launch_local(
    config: RunConfig | dict[str, Any] | str | Path,
    out: str | Path,
    *,
    insecure_loopback: bool = False,
    on_event: Callable[[Event], None] | None = None,
    kill_at: Iterable[KillPoint] = (),
    max_restarts: int = 3,
    timeout_s: float = 3600.0,
    idle_timeout_s: float = 120.0,
    connect_timeout_s: float = 20.0,
    placement: Placement | None = None,
    max_epsilon: float | None = None,
) -> LaunchResult:
    """Run ``config`` with one process per party on loopback; see the module docstring.

    ``idle_timeout_s`` / ``connect_timeout_s`` are every node's ``--idle-timeout`` / ``--connect-timeout``;
    ``placement`` puts the nodes elsewhere than on 127.0.0.1 (the wide-area test bed's ``WanBed``,
    ``testbed/netns.py`` beside the package, runs each in its own network namespace); ``max_epsilon`` is the
    DO's ε budget (the run stops cleanly before a round that would exceed it, as ``train`` does).

    ``kill_at`` SIGKILLs a party right after it reports a step (each point once, in order) to exercise
    crash and resume; each kill costs one restart. Raises :class:`WireError` naming the failing party and
    its last error line when a node fails more than ``max_restarts`` times, or after ``timeout_s``.
    A clean stop of the DO (budget, detection) ends the launch with ``metrics["stopped"]``: continue it with
    :func:`resume_local`.
    """
    t_start = time.monotonic()
    out = Path(out)
    config, notices = prepare_run(_config_of(config), out, insecure=insecure_loopback)
    setup = NodeSetup(insecure_loopback, idle_timeout_s, connect_timeout_s, placement or LoopbackPlacement(),
                      max_epsilon=max_epsilon)
    return _supervise(out, config, setup, notices, kill_at=kill_at, on_event=on_event, max_restarts=max_restarts,
                      t_start=t_start, timeout_s=timeout_s)


def resume_local(
    out: str | Path,
    *,
    on_event: Callable[[Event], None] | None = None,
    max_restarts: int = 3,
    timeout_s: float = 3600.0,
    idle_timeout_s: float = 120.0,
    connect_timeout_s: float = 20.0,
    placement: Placement | None = None,
    max_epsilon: float | None = None,
    dismiss_detection: bool = False,
) -> LaunchResult:
    """Start every node of the launched run ``out`` again (after a clean stop, or a launch that gave up): they
    resume from the rounds every party completed. ``dismiss_detection``: the DO reviewed the accusation of a
    detection stop and continues with live detection off for this invocation."""
    t_start = time.monotonic()
    out = Path(out)
    if not (out / rundir.CONFIG).is_file() or not (out / "nodes" / "DO").is_dir():
        raise RunDirError(f"{out} is not a launched run (no config.json and nodes/DO); nothing to resume")
    if _do_finished(out):
        raise RunDirError(f"the run in {out} is finished; nothing to resume")
    config = make_config(**rundir.read_json(out / rundir.CONFIG))
    setup = NodeSetup(not (out / "certs").is_dir(), idle_timeout_s, connect_timeout_s,
                      placement or LoopbackPlacement(), max_epsilon=max_epsilon, dismiss_detection=dismiss_detection)
    return _supervise(out, config, setup, [], kill_at=(), on_event=on_event, max_restarts=max_restarts,
                      t_start=t_start, timeout_s=timeout_s)


def _supervise(out: Path, config: RunConfig, setup: NodeSetup, notices: list[str], *, kill_at: Iterable[KillPoint],
               on_event: Callable[[Event], None] | None, max_restarts: int, t_start: float,
               timeout_s: float) -> LaunchResult:
    """Run the nodes until they all exit 0, restarting them after a failure; then collect."""
    kills = list(kill_at)
    for party, _, _ in kills:
        if party not in party_names(config):
            raise ConfigError(f"kill point names {party}, not a party of this run")
    watch = _Watch(out, config, kills, on_event, t_start=t_start, timeout_s=timeout_s)
    restarts = 0
    while True:
        failed = watch.run_once(setup)
        if failed is not None and _do_finished(out):
            # the DO holds every checked segment and has sent shutdown: a trainer failing on its way out
            # (e.g. while flushing) changes nothing, and a restart would only be refused ("run is closed")
            notices.append(f"{failed} exited with an error after the DO had finished: {_log_tail(out, failed)}")
            failed = None
        if failed is None:
            break
        restarts += 1
        if on_event is not None:
            on_event({"event": "restart", "party": failed, "restarts": restarts,
                      "why": "killed (drill)" if watch.killed(failed) else _log_tail(out, failed)})
        if restarts > max_restarts:
            raise WireError(f"node {failed} failed: {_log_tail(out, failed)} (after {restarts - 1} restart(s); "
                            f"logs in {out}/nodes/*/node.log)")
    done_kills = watch.done_kills
    metrics = collect(out, config)
    stopped = metrics.get("stopped")
    if stopped is not None:
        notices.append(f"the DO stopped the run before round {stopped['before_epoch']} ({stopped['reason']}); "
                       f"continue with: clicooper launch --resume {out}"
                       + (" (add --dismiss-detection to continue past it)" if stopped["reason"] == "detection" else ""))
    return LaunchResult(out, restarts, time.monotonic() - t_start, done_kills, metrics, notices)
