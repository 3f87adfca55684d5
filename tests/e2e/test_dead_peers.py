"""Dead peers: a client process killed (SIGKILL) or frozen (SIGSTOP) mid-stream, and a client
that holds its connection open without ever reading, are detected and cleaned up within the
documented time: gone from ``/status`` and their server-side socket closed.

The peer is a real client in a process of its own (tests/support/peer_process.py) that answers
heartbeats, so the server's liveness watchdog is armed as for a browser. Timeouts are
shortened (heartbeat timeout 2 s, send timeout 2 s) to keep the tests short; the documented
bounds scale with them:

- killed: the kernel resets the connection, the reader sees it: well under a second;
- frozen, little traffic: ``heartbeat_timeout`` (+ the 1 s bounded close);
- frozen or never reading, with the socket buffers full: the writer is parked in Hypercorn's
  shielded send, which the watchdog cannot interrupt; ``send_timeout`` (TCP_USER_TIMEOUT)
  makes the kernel abort the connection, after which it is cleaned up.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import psutil
import trio

from tests.support.commands import PEER_PROCESS
from tests.support.server import RunningServer, stalled_client, start_server, test_settings
from tests.support.waits import eventually
from wirthforge_trio.config import Settings

PEER = PEER_PROCESS
HEARTBEAT_TIMEOUT = 2.0
SEND_TIMEOUT = 2.0
CLOSE_BOUND = 1.0
"""The bounded close (error_event and close frame) after a heartbeat timeout."""
SLACK = 2.0
"""Scheduling slack on a shared 2-core machine."""


def dead_peer_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "heartbeat_interval": 0.5,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT,
        "demo_speed": 1.0,
        "send_timeout": SEND_TIMEOUT,
    }
    values.update(overrides)
    return test_settings(**values)


@attrs.define
class Peer:
    process: trio.Process | None
    connection_id: str
    local_port: int
    lines: list[dict[str, Any]] = attrs.field(factory=list)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    async def read_lines(self, seconds: float) -> list[dict[str, Any]]:
        """What the peer printed within ``seconds`` (or until it exited)."""
        assert self.process is not None and self.process.stdout is not None
        data = b""
        with trio.move_on_after(seconds):
            while chunk := await self.process.stdout.receive_some(4096):
                data += chunk
                if b'"closed"' in data:
                    break
        self.lines.extend(json.loads(line) for line in data.splitlines() if line.strip())
        return self.lines


@asynccontextmanager
async def peer_process(server: RunningServer) -> AsyncIterator[Peer]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(PEER), server.ws_url], stdout=-1
    )
    try:
        assert process.stdout is not None
        data = b""
        with trio.fail_after(20):
            while b"\n" not in data:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "the peer process exited before it was live"
                data += chunk
        hello = json.loads(data.split(b"\n", 1)[0])
        yield Peer(process, hello["connectionId"], hello["localPort"])
    finally:
        try:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        except ProcessLookupError:
            pass
        with trio.move_on_after(5):
            await process.wait()


def server_sockets_to(port: int) -> list[Any]:
    """Sockets this process (the server) holds open to the peer's port."""
    return [
        c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port
    ]


async def connection_ids(server: RunningServer) -> set[str]:
    async with server.http() as http:
        status = (await http.get("/status")).json()
    return {c["connectionId"] for c in status["clients"]}


async def seconds_until_gone(server: RunningServer, peer: Peer, limit: float) -> float:
    """Seconds until the peer's connection left /status and its socket was closed."""
    start = trio.current_time()
    with trio.move_on_after(limit):
        while True:  # polled: /status and the socket table have no event to wait on
            listed = peer.connection_id in await connection_ids(server)
            if not listed and not server_sockets_to(peer.local_port):
                return trio.current_time() - start
            await trio.sleep(0.05)
    raise AssertionError(
        f"connection {peer.connection_id} still held after {limit:g} s "
        f"(in /status: {peer.connection_id in await connection_ids(server)}, "
        f"sockets: {server_sockets_to(peer.local_port)})"
    )


async def start_generation(server: RunningServer, models: list[str]) -> None:
    async with server.http() as http:
        response = await http.post("/prompt", json={"prompt": "keep talking", "models": models})
    assert response.status_code == 202, response.text
    # The signal comes mid-stream: once every session has streamed a few tokens.
    sessions = server.app.wirthforge.engine.decipher.sessions
    ids = [s["sessionId"] for s in response.json()["sessions"]]
    await eventually(lambda: all(len(sessions[i].tokens) >= 3 for i in ids))


async def test_a_killed_peer_is_cleaned_up_at_once(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, dead_peer_settings(models=("demo", "demo:b")))
    async with peer_process(server) as peer:
        assert peer.connection_id in await connection_ids(server)
        assert server_sockets_to(peer.local_port)
        await start_generation(server, ["demo", "demo:b"])
        peer.signal(signal.SIGKILL)
        elapsed = await seconds_until_gone(server, peer, limit=SLACK)
    print(f"killed peer cleaned up in {elapsed:.2f} s")
    server.stop.set()


async def test_a_frozen_peer_is_dropped_after_the_heartbeat_timeout(
    nursery: trio.Nursery,
) -> None:
    """One model streaming: little traffic, the socket buffers do not fill before the
    timeout; the woken peer finds its connection closed."""
    server = await start_server(nursery, dead_peer_settings())
    async with peer_process(server) as peer:
        await start_generation(server, ["demo"])
        peer.signal(signal.SIGSTOP)
        elapsed = await seconds_until_gone(
            server, peer, limit=HEARTBEAT_TIMEOUT + CLOSE_BOUND + SLACK
        )
        assert elapsed >= HEARTBEAT_TIMEOUT - 0.6, "not before the timeout (last answer ≤ 0.5 s)"
        peer.signal(signal.SIGCONT)
        lines = await peer.read_lines(5)
    print(f"frozen peer dropped in {elapsed:.2f} s (heartbeat timeout {HEARTBEAT_TIMEOUT:g} s)")
    # The server sent HEARTBEAT_TIMEOUT and a 4408 close frame, then closed the socket; the
    # woken peer answers a waiting heartbeat first, the reset that earns makes its kernel drop
    # what it had not read yet, so the code it reports is 4408 or 1006. Either way it knows.
    assert any("closed" in line for line in lines), lines
    server.stop.set()


async def test_a_frozen_peer_with_full_buffers_is_dropped(nursery: trio.Nursery) -> None:
    """A council streams ~90 KB/s per client: the frozen peer's socket buffers fill within
    the heartbeat timeout and the writer is parked in a send the watchdog cannot cancel."""
    server = await start_server(nursery, dead_peer_settings(models=("demo", "demo:b")))
    async with peer_process(server) as peer:
        await start_generation(server, ["demo", "demo:b"])
        peer.signal(signal.SIGSTOP)
        elapsed = await seconds_until_gone(
            server, peer, limit=HEARTBEAT_TIMEOUT + SEND_TIMEOUT + CLOSE_BOUND + SLACK
        )
    print(f"frozen peer (full buffers) dropped in {elapsed:.2f} s")
    server.stop.set()


async def test_a_half_open_connection_that_never_reads_is_dropped(nursery: trio.Nursery) -> None:
    """The handshake, then nothing: no reads, no heartbeat answers (so the heartbeat watchdog,
    which only arms after a first answer, never fires), no FIN. It must not hold its task,
    mailbox and socket forever: once its buffers are full, the send timeout ends it."""
    server = await start_server(nursery, dead_peer_settings(models=("demo", "demo:b")))
    port = int(server.url.rsplit(":", 1)[1])
    stream = await stalled_client(port)
    local_port = stream.socket.getsockname()[1]
    hub = server.app.wirthforge.hub
    await eventually(lambda: len(hub) > 0)
    (connection,) = list(hub)
    peer = Peer(process=None, connection_id=connection.id, local_port=local_port)
    await start_generation(server, ["demo", "demo:b"])
    try:
        elapsed = await seconds_until_gone(server, peer, limit=10 + SEND_TIMEOUT + SLACK)
    finally:
        await stream.aclose()
    print(f"half-open never-reading connection dropped in {elapsed:.2f} s")
    server.stop.set()
