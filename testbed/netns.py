"""The wide-area test bed: each party in its own network namespace, joined by shaped veth pairs and relays.

:class:`WanBed` (a context manager that always cleans up) creates, for one run:

* one network namespace per party (``ccw-<pid>-<token>-<party>``: unique per bed, the pid names its owner
  so that a bed whose process died can be recognised and removed, :func:`remove_stale`);
* one veth pair per pair of parties that talk to each other (``links``), created directly inside the
  two namespaces (never in the host's), addressed ``10.77.<i>.1`` / ``10.77.<i>.2``; no namespace has a
  route anywhere else, so the traffic stays on these links;
* ``tbf`` on both ends of every veth: the profile's bandwidth in each direction;
* one relay process (:mod:`testbed.relay`) in every party's namespace, with one route per peer:
  the party dials ``127.0.0.1:<relay port of that peer>``, the relay adds latency, jitter, stalls and
  resets and forwards across the veth to the peer's listening port. Stalls and resets are injected
  through the relays' control sockets (:meth:`WanBed.stall`, :meth:`WanBed.reset`).

Everything is bounded: a fixed number of namespaces, links and relays per bed, and every relay exits by
itself after ``lifetime_s`` even if this process is killed. :func:`netns_unavailable` says why a bed cannot
be made here (not root, no ``ip``/``tc``, namespaces not permitted); tests skip with that reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from clicooper.config import RunConfig
from clicooper.core.builder import neighbours, party_names
from clicooper.errors import ConfigError
from testbed import relay as relay_mod
from testbed.relay import Impairment

PREFIX = "ccw"
_STALE = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+-")


@dataclass(frozen=True)
class Profile:
    """A link profile: bandwidth each way (``tbf``), round-trip time, jitter, random stalls and resets."""

    name: str
    rate_mbit: float
    rtt_ms: float
    jitter_ms: float = 0.0
    stall_every_s: float = 0.0
    stall_ms: float = 0.0
    reset_every_s: float = 0.0

    @property
    def bytes_per_s(self) -> float:
        """Link capacity in bytes per second, each direction."""
        return self.rate_mbit * 1e6 / 8

    def limit(self, bytes_per_sample: float) -> float:
        """The physical limit in samples/s of a link that carries ``bytes_per_sample`` each way."""
        return self.bytes_per_s / bytes_per_sample

    def impairment(self, seed: int = 0) -> Impairment:
        """What the relays add: half the RTT each way, the jitter, the stalls; a delay line of 2 × BDP."""
        bdp = self.bytes_per_s * (self.rtt_ms + 2 * self.jitter_ms) / 1000.0
        return Impairment(delay_ms=self.rtt_ms / 2, jitter_ms=self.jitter_ms, stall_every_s=self.stall_every_s,
                          stall_ms=self.stall_ms, reset_every_s=self.reset_every_s, seed=seed,
                          max_buffer_bytes=max(1 << 20, int(2 * bdp)))


PROFILES: dict[str, Profile] = {
    "lan": Profile("lan", 1000.0, 1.0),
    "wan": Profile("wan", 100.0, 40.0),
    "poor": Profile("poor", 20.0, 80.0, jitter_ms=10.0, stall_every_s=10.0, stall_ms=500.0),
}


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise ConfigError(f"`{' '.join(argv)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


@cache
def netns_unavailable() -> str | None:
    """Why no test bed can be made on this machine (a sentence), or ``None`` when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    res = _run(["ip", "netns", "add", probe], check=False)
    if res.returncode != 0:
        return (f"`ip netns add` is not permitted here ({res.stderr.strip()}): the wide-area bed needs root "
                "(CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    try:
        ok = _run(["ip", "-n", probe, "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb"], check=False)
        if ok.returncode != 0:
            return f"veth pairs cannot be made here: {ok.stderr.strip()}"
        tbf = _run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "pa", "root", "tbf", "rate", "10mbit",
                    "burst", "16kb", "latency", "10ms"], check=False)
        if tbf.returncode != 0:
            return f"tc tbf is not available here: {tbf.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete namespaces of beds whose owning process is gone and which hold no process; their names."""
    out = []
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _STALE.match(name)
        if m and not _alive(int(m.group(1))) and not _run(["ip", "netns", "pids", name], check=False).stdout.strip():
            _run(["ip", "netns", "del", name], check=False)
            out.append(name)
    return out


def _tbf(rate_mbit: float) -> list[str]:
    """``tbf`` arguments for ``rate_mbit``: a 2 ms burst (at least 16 KiB), a 10 ms queue."""
    burst = max(16 * 1024, int(rate_mbit * 1e6 / 8 * 0.002))
    return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "latency", "10ms"]


class WanBed:
    """Namespaces, shaped veth links and relays for ``parties`` (see the module docstring).

    ``links`` are the pairs of parties that talk to each other (e.g. every node's neighbours). Each
    party's node listens on ``listen(party)`` inside its namespace and reaches ``peer`` at
    ``peer_address(party, peer)``; run its process with ``wrap(party, argv)``.
    """

    def __init__(self, parties: Sequence[str], links: Sequence[tuple[str, str]], profile: Profile, *,
                 port: int = 7000, relay_port: int = 9000, seed: int = 0, lifetime_s: float = 3600.0,
                 workdir: Path | None = None) -> None:
        self.parties = list(parties)
        self.links = sorted({tuple(sorted(link, key=self.parties.index)) for link in links})  # type: ignore[misc]
        unknown = {p for link in self.links for p in link} - set(self.parties)
        if unknown:
            raise ConfigError(f"links name {sorted(unknown)}, not among the parties {self.parties}")
        self.profile, self.port, self.relay_port = profile, port, relay_port
        self.seed, self.lifetime_s = seed, lifetime_s
        self.token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._workdir = workdir
        self.dir = Path()
        self.relays: dict[str, subprocess.Popen[str]] = {}
        self._made: list[str] = []

    @classmethod
    def for_config(cls, config: RunConfig, profile: Profile, **kwargs: Any) -> WanBed:
        """A bed for a run: one namespace per party, a link between every two parties that talk."""
        names = party_names(config)
        return cls(names, [(p, q) for p in names for q in neighbours(config, p)], profile, **kwargs)

    # -- names and addresses ------------------------------------------------------------------------
    def ns(self, party: str) -> str:
        """The namespace of ``party``."""
        return f"{PREFIX}-{self.token}-{party}"

    def peers(self, party: str) -> list[str]:
        """The parties linked to ``party``."""
        return [b if a == party else a for a, b in self.links if party in (a, b)]

    def ip(self, party: str, peer: str) -> str:
        """``party``'s address on its link to ``peer``."""
        i = self.links.index(tuple(sorted((party, peer), key=self.parties.index)))  # type: ignore[arg-type]
        return f"10.77.{i}.{1 if self.links[i][0] == party else 2}"

    def listen(self, party: str) -> str:
        """Where ``party``'s node listens inside its namespace."""
        return f"0.0.0.0:{self.port}"

    def peer_address(self, party: str, peer: str) -> str:
        """Where ``party`` dials ``peer``: its own relay's route to that peer."""
        return f"127.0.0.1:{self.relay_port + self.parties.index(peer)}"

    def addresses(self, config: Any = None) -> dict[str, tuple[str, dict[str, str]]]:
        """Per party: its listening address and peer table (a ``launch_local`` placement)."""
        return {p: (self.listen(p), {q: self.peer_address(p, q) for q in self.peers(p)}) for p in self.parties}

    def wrap(self, party: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``party``'s namespace."""
        return ["ip", "netns", "exec", self.ns(party), *argv]

    def control(self, party: str) -> str:
        """The control socket of ``party``'s relay."""
        return str(self.dir / f"{party}.sock")

    # -- set-up and tear-down -----------------------------------------------------------------------
    def __enter__(self) -> WanBed:
        reason = netns_unavailable()
        if reason is not None:
            raise ConfigError(f"cannot build the wide-area test bed: {reason}")
        remove_stale()
        self.dir = Path(self._workdir or tempfile.mkdtemp(prefix="ccw-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        for p in self.parties:
            _run(["ip", "netns", "add", self.ns(p)])
            self._made.append(self.ns(p))
            _run(["ip", "-n", self.ns(p), "link", "set", "lo", "up"])
        for a, b in self.links:
            ia, ib = f"v-{b}"[:15], f"v-{a}"[:15]
            _run(["ip", "-n", self.ns(a), "link", "add", "name", ia, "type", "veth", "peer", "name", ib, "netns", self.ns(b)])
            for p, dev, q in ((a, ia, b), (b, ib, a)):
                _run(["ip", "-n", self.ns(p), "addr", "add", f"{self.ip(p, q)}/30", "dev", dev])
                _run(["ip", "-n", self.ns(p), "link", "set", dev, "up"])
                _run(["ip", "netns", "exec", self.ns(p), "tc", "qdisc", "add", "dev", dev, "root",
                      *_tbf(self.profile.rate_mbit)])
        for p in self.parties:
            self._start_relay(p)

    def _start_relay(self, party: str) -> None:
        routes = [{"name": f"{party}->{q}", "listen": ["127.0.0.1", self.relay_port + self.parties.index(q)],
                   "target": [self.ip(q, party), self.port]} for q in self.peers(party)]
        imp = self.profile.impairment(seed=self.seed + self.parties.index(party))
        cfg = {"routes": routes, "impairment": asdict(imp), "control": self.control(party),
               "lifetime_s": self.lifetime_s}
        cfg_file = self.dir / f"relay-{party}.json"
        cfg_file.write_text(json.dumps(cfg), "utf-8")
        log = open(self.dir / f"relay-{party}.log", "w", encoding="utf-8")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(self.wrap(party, [sys.executable, relay_mod.__file__, str(cfg_file)]),
                                stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        self.relays[party] = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if '"ready"' not in line:
            raise ConfigError(f"the relay of {party} did not start: see {self.dir}/relay-{party}.log")

    def close(self) -> None:
        """Stop the relays and delete the namespaces (their veths go with them). Idempotent."""
        for proc in self.relays.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.relays.values():
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        self.relays.clear()
        for name in self._made:
            for pid in _run(["ip", "netns", "pids", name], check=False).stdout.split():
                # a process left in this bed's own namespace (a node of a run that failed): started by this bed's
                # user, killed by its id so that the namespace can go
                os.kill(int(pid), 9)
            _run(["ip", "netns", "del", name], check=False)
        self._made.clear()

    # -- faults and counters ------------------------------------------------------------------------
    def _both(self, a: str, b: str, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        return [relay_mod.command(self.control(x), cmd | {"route": f"{x}->{y}"}) for x, y in ((a, b), (b, a))]

    def stall(self, a: str, b: str, seconds: float) -> None:
        """Nothing moves between ``a`` and ``b``, either way, for ``seconds`` (a link that drops)."""
        self._both(a, b, {"cmd": "stall", "seconds": seconds})

    def reset(self, a: str, b: str) -> int:
        """Reset every connection between ``a`` and ``b`` (both directions' links); how many."""
        return sum(int(r.get("aborted", 0)) for r in self._both(a, b, {"cmd": "reset"}))

    def stats(self) -> dict[str, dict[str, Any]]:
        """Every route's counters, ``{"DO->T1": {"bytes_up", "bytes_down", …}, …}``."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.parties:
            out |= relay_mod.command(self.control(p), {"cmd": "stats"})["routes"]
        return out

    def link_bytes(self) -> dict[str, int]:
        """Bytes that crossed each direction of each link, ``{"DO->T1": n, "T1->DO": m, …}``: what the
        dialler sent on its route plus what the peer answered on the reverse route."""
        st = self.stats()
        out: dict[str, int] = {}
        for route, s in st.items():
            a, b = route.split("->")
            out[f"{a}->{b}"] = out.get(f"{a}->{b}", 0) + s["bytes_up"]
            out[f"{b}->{a}"] = out.get(f"{b}->{a}", 0) + s["bytes_down"]
        return out
