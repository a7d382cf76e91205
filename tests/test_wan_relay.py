"""The wide-area relay (testbed/relay.py) on loopback, no namespaces: delay, stalls, resets, bounded buffers."""

from __future__ import annotations

import asyncio
import time

import pytest

from testbed.relay import Impairment, Relay, Route


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _pair(imp: Impairment, handler=_echo):  # noqa: ANN202 - test helper
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[:2]
    relay = Relay([Route("A->B", ("127.0.0.1", 0), target)], imp)
    await relay.start()
    reader, writer = await asyncio.open_connection(*relay.routes["A->B"].listen)
    return server, relay, reader, writer


async def _rtt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    t = time.monotonic()
    writer.write(b"x")
    await writer.drain()
    await reader.readexactly(1)
    return time.monotonic() - t


def test_delay_each_way_and_a_stall_then_everything_arrives() -> None:
    async def run() -> None:
        server, relay, reader, writer = await _pair(Impairment(delay_ms=30))
        assert await _rtt(reader, writer) >= 0.058  # 2 × 30 ms
        relay.command({"cmd": "stall", "seconds": 0.4})
        writer.write(b"y" * 200_000)
        await writer.drain()
        t = time.monotonic()
        got = await reader.readexactly(200_000)
        assert got == b"y" * 200_000 and time.monotonic() - t >= 0.3
        st = relay.command({"cmd": "stats"})["routes"]["A->B"]
        assert st["bytes_up"] == st["bytes_down"] == 200_001 and st["stalls"] == 1
        await relay.close()
        server.close()

    asyncio.run(run())


def test_reset_aborts_both_sides() -> None:
    async def run() -> None:
        server, relay, reader, writer = await _pair(Impairment())
        assert await _rtt(reader, writer) < 1.0
        assert relay.command({"cmd": "reset"})["aborted"] == 1
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        assert relay.command({"cmd": "stats"})["routes"]["A->B"]["resets"] == 1
        await relay.close()
        server.close()

    asyncio.run(run())


def test_delay_line_is_bounded_when_the_target_stops_reading() -> None:
    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # reads nothing

    async def run() -> None:
        cap = 256 * 1024
        server, relay, reader, writer = await _pair(Impairment(max_buffer_bytes=cap), sink)
        writer.write(b"z" * (32 << 20))  # far more than the relay, the sockets and the sink can hold
        await asyncio.sleep(1.0)
        (conn,) = relay.routes["A->B"].conns
        up = conn.pipes[0]
        assert 0 < up.held <= cap + 65536  # one chunk beyond the bound at most; the rest waits in TCP
        relay.command({"cmd": "reset"})
        writer.transport.abort()
        await relay.close()
        server.close()

    asyncio.run(run())


def test_nothing_listening_is_a_reset_for_the_dialler() -> None:
    async def run() -> None:
        relay = Relay([Route("A->B", ("127.0.0.1", 0), ("127.0.0.1", 1))], Impairment())
        await relay.start()
        reader, _ = await asyncio.open_connection(*relay.routes["A->B"].listen)
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        await relay.close()

    asyncio.run(run())
