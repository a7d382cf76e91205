"""A small user-space TCP relay for the wide-area test bed: latency, jitter, stalls, resets, byte counts.

The kernel here has no ``netem``, so everything but the bandwidth (``tbf`` on the veth links,
:mod:`testbed.netns`) is added by this relay. It runs as its own process inside the *sending*
party's network namespace: the party dials ``127.0.0.1:<port>`` of a route and the relay forwards the
bytes, both directions, to the peer's address across the shaped veth link. Packet loss is not dropped
here but emulated by its effects at the TCP level: stalls (nothing moves for a while), delays and resets.

* **delay / jitter**: every chunk read is held ``delay ± jitter`` (uniform) before it is written on,
  in order (a TCP stream never reorders): ``due = max(previous due, now + delay + jitter)``. Both
  directions are delayed, so an application round trip (gRPC acks, HTTP/2 window updates) sees
  ``2 × delay``. TCP's own slow start over that delay is *not* emulated: the relay splits the connection.
* **stall**: nothing is forwarded on a route for a while, in either direction; new connections wait too.
  ``stall(route, s)`` on the control socket, or random stalls (``stall_every_s`` mean interval).
  A 30-second stall is how a link that drops for 30 s is emulated.
* **reset**: every connection of a route is aborted with a TCP RST on both sides (``SO_LINGER 0``).
* **backpressure**: each direction holds at most ``max_buffer_bytes`` in its delay line; beyond that the
  relay stops reading and TCP flow control slows the sender. Nothing is queued without bound.
* **accounting**: bytes forwarded per route and direction, connections, stalls, resets (``stats``).

Standard library only (it starts in a few tens of milliseconds, without torch):
``python relay.py CONFIG.json``. The config is ``{"routes": [{"name", "listen": [host, port], "target":
[host, port]}], "impairment": {...}, "control": "/path/relay.sock", "lifetime_s": 3600}``; the relay prints
one JSON line ``{"event": "ready"}`` once every route listens, serves control commands (one JSON object
a line, answered with one JSON line) on the Unix socket, and exits on SIGTERM or after ``lifetime_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Impairment:
    """What the relay adds to every route (times in milliseconds unless named ``_s``)."""

    delay_ms: float = 0.0  # one way, each direction
    jitter_ms: float = 0.0  # uniform in [-jitter, +jitter], order preserved
    stall_every_s: float = 0.0  # mean interval between random stalls (exponential); 0: none
    stall_ms: float = 0.0  # length of each random stall
    reset_every_s: float = 0.0  # mean interval between random resets of a route's connections; 0: none
    seed: int = 0
    max_buffer_bytes: int = 8 << 20  # per connection and direction, in the delay line

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Impairment:
        """From the config's ``impairment`` object (unknown keys are an error)."""
        return cls(**data)


@dataclass
class RouteStats:
    """Counters of one route."""

    bytes_up: int = 0  # dialler → target
    bytes_down: int = 0  # target → dialler
    connections: int = 0
    resets: int = 0
    stalls: int = 0
    stalled_s: float = 0.0


@dataclass
class Route:
    """One listening address forwarded to one target."""

    name: str
    listen: tuple[str, int]
    target: tuple[str, int]
    stats: RouteStats = field(default_factory=RouteStats)
    stalled_until: float = 0.0
    conns: set[_Conn] = field(default_factory=set)

    def stall(self, seconds: float) -> None:
        """Forward nothing on this route for ``seconds`` (extends a stall in progress)."""
        now = time.monotonic()
        end = max(self.stalled_until, now + seconds)
        self.stats.stalled_s += end - max(self.stalled_until, now)
        self.stats.stalls += 1
        self.stalled_until = end

    async def wait_up(self) -> None:
        """Return once the route is not stalled."""
        while (left := self.stalled_until - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))

    def reset(self) -> int:
        """Abort every connection of the route with an RST on both sides; returns how many."""
        n = 0
        for c in list(self.conns):
            c.abort()
            n += 1
        self.stats.resets += 1 if n else 0
        return n


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with a TCP RST instead of a FIN (linger on, zero timeout)."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Pipe:
    """One direction of one connection: read, hold each chunk until due, write; bounded in bytes."""

    def __init__(self, relay: Relay, route: Route, up: bool) -> None:
        self.relay, self.route, self.up = relay, route, up
        self.line: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.last_due = 0.0
        self.more = asyncio.Event()  # something was added to the line
        self.room = asyncio.Event()  # the line has room again
        self.room.set()

    async def read(self, src: asyncio.StreamReader) -> None:
        """Read chunks into the delay line; an empty chunk (EOF) ends it."""
        imp = self.relay.imp
        while True:
            await self.room.wait()
            data = await src.read(_CHUNK)
            jitter = self.relay.rng.uniform(-imp.jitter_ms, imp.jitter_ms) if imp.jitter_ms else 0.0
            due = max(self.last_due, time.monotonic() + max(0.0, imp.delay_ms + jitter) / 1000.0)
            self.last_due = due
            self.line.append((due, data))
            self.held += len(data)
            if self.held >= imp.max_buffer_bytes:
                self.room.clear()
            self.more.set()
            if not data:
                return

    async def write(self, dst: asyncio.StreamWriter) -> None:
        """Write each chunk once due and the route is not stalled; half-close on EOF."""
        while True:
            while not self.line:
                self.more.clear()
                await self.more.wait()
            due, data = self.line[0]
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await self.route.wait_up()
            self.line.popleft()
            if not data:
                if dst.can_write_eof():
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()
            self.held -= len(data)
            if self.up:
                self.route.stats.bytes_up += len(data)
            else:
                self.route.stats.bytes_down += len(data)
            if self.held < self.relay.imp.max_buffer_bytes:
                self.room.set()


class _Conn:
    """One relayed connection: the dialler's socket, the target's, a pipe each way."""

    def __init__(self, relay: Relay, route: Route, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.relay, self.route = relay, route
        self.c_reader, self.c_writer = reader, writer
        self.t_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.pipes: tuple[_Pipe, ...] = ()

    async def run(self) -> None:
        """Connect to the target (after any stall), then pump both ways until both ends close."""
        self.route.conns.add(self)
        self.route.stats.connections += 1
        try:
            await self.route.wait_up()
            try:
                t_reader, self.t_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.route.target), timeout=10.0)
            except (TimeoutError, OSError):
                _rst(self.c_writer)  # nothing listens there (yet): the dialler sees a reset and retries
                return
            up, down = _Pipe(self.relay, self.route, True), _Pipe(self.relay, self.route, False)
            self.pipes = (up, down)
            self.tasks = [asyncio.ensure_future(x) for x in (
                up.read(self.c_reader), up.write(self.t_writer), down.read(t_reader), down.write(self.c_writer))]
            done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(not t.cancelled() and t.exception() is not None for t in done):
                self.abort()  # one side reset or failed: reset the other too, as a broken path would
        finally:
            self.route.conns.discard(self)
            for w in (self.c_writer, self.t_writer):
                if w is not None:
                    w.close()

    def abort(self) -> None:
        """RST both sides and stop the pumps."""
        for t in self.tasks:
            t.cancel()
        _rst(self.c_writer)
        _rst(self.t_writer)


class Relay:
    """Every route of one relay process, the random stall/reset schedules and the control socket."""

    def __init__(self, routes: list[Route], imp: Impairment) -> None:
        self.routes = {r.name: r for r in routes}
        self.imp = imp
        self.rng = random.Random(imp.seed)
        self.servers: list[asyncio.AbstractServer] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, control: str | None = None) -> None:
        """Listen on every route (and the control socket); start the random schedules."""
        for r in self.routes.values():
            srv = await asyncio.start_server(lambda rd, wr, r=r: _Conn(self, r, rd, wr).run(), *r.listen)
            r.listen = srv.sockets[0].getsockname()[:2]
            self.servers.append(srv)
            if self.imp.stall_every_s > 0:
                self.tasks.append(asyncio.ensure_future(self._random(r, self.imp.stall_every_s, stall=True)))
            if self.imp.reset_every_s > 0:
                self.tasks.append(asyncio.ensure_future(self._random(r, self.imp.reset_every_s, stall=False)))
        if control:
            self.servers.append(await asyncio.start_unix_server(self._control, control))

    async def _random(self, route: Route, every_s: float, *, stall: bool) -> None:
        rng = random.Random(f"{self.imp.seed}/{route.name}/{'stall' if stall else 'reset'}")
        while True:
            await asyncio.sleep(rng.expovariate(1.0 / every_s))
            if stall:
                route.stall(self.imp.stall_ms / 1000.0)
            else:
                route.reset()

    def _pick(self, name: str | None) -> list[Route]:
        if name in (None, "*"):
            return list(self.routes.values())
        if name not in self.routes:
            raise KeyError(f"no route {name!r}; routes: {sorted(self.routes)}")
        return [self.routes[name]]

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``stall`` {route, seconds}, ``reset`` {route}, ``stats``; ``route`` absent or ``*``: all."""
        what = cmd.get("cmd")
        if what == "stall":
            for r in self._pick(cmd.get("route")):
                r.stall(float(cmd["seconds"]))
            return {"ok": True}
        if what == "reset":
            return {"ok": True, "aborted": sum(r.reset() for r in self._pick(cmd.get("route")))}
        if what == "stats":
            return {"ok": True, "routes": {n: asdict(r.stats) | {"open": len(r.conns), "listen": list(r.listen)}
                                           for n, r in self.routes.items()}}
        raise KeyError(f"unknown command {what!r}: use stall, reset or stats")

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = self.command(json.loads(line))
                except (KeyError, ValueError, TypeError) as e:
                    answer = {"ok": False, "error": str(e)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        """Stop listening, abort every connection and the schedules."""
        for t in self.tasks:
            t.cancel()
        for s in self.servers:
            s.close()
        for r in self.routes.values():
            for c in list(r.conns):
                c.abort()


def command(path: str, cmd: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """Send one control command to the relay listening on Unix socket ``path``; its JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(cmd).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            part = s.recv(65536)
            if not part:
                break
            buf += part
    answer = json.loads(buf or b"{}")
    if not answer.get("ok"):
        raise RuntimeError(f"relay at {path} refused {cmd}: {answer.get('error', 'no answer')}")
    return answer


def routes_from_json(items: list[dict[str, Any]]) -> list[Route]:
    """Routes of a config: ``{"name", "listen": [host, port], "target": [host, port]}``."""
    return [Route(i["name"], (i["listen"][0], int(i["listen"][1])), (i["target"][0], int(i["target"][1])))
            for i in items]


async def _main(cfg: dict[str, Any]) -> None:
    relay = Relay(routes_from_json(cfg["routes"]), Impairment.from_json(cfg.get("impairment", {})))
    await relay.start(cfg.get("control"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "ready", "routes": {n: list(r.listen) for n, r in relay.routes.items()}}),
          flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=float(cfg.get("lifetime_s", 3600.0)))
    await relay.close()


if __name__ == "__main__":  # pragma: no cover - run as a process by testbed.netns
    with open(sys.argv[1], encoding="utf-8") as f:
        asyncio.run(_main(json.load(f)))
