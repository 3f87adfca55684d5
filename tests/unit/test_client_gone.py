"""A client that disconnects while the connection reads or writes: the connection ends
quietly (no error, no hang), whichever of its tasks learns it first."""

from __future__ import annotations

import pytest
import trio

from tests.support.logs import errors_logged
from wirthforge_trio.protocol.connection import ConnectionProtocol
from wirthforge_trio.transport.connection import ClientGone, Connection
from wirthforge_trio.transport.heartbeats import HeartbeatSweep


class GoneSocket:
    """A WebSocket whose client left: receive or send (as chosen) says so."""

    def __init__(self, on: str) -> None:
        self.on = on
        self.sent: list[str] = []

    async def receive(self) -> str:
        if self.on == "receive":
            raise ClientGone
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(self, data: str) -> None:
        if self.on == "send":
            raise ClientGone
        self.sent.append(data)

    async def close(self, code: int, reason: str = "") -> None:
        raise ClientGone


@pytest.mark.parametrize("on", ["receive", "send"])
async def test_a_disconnected_client_ends_the_connection_quietly(on: str) -> None:
    socket = GoneSocket(on)
    heartbeats = HeartbeatSweep(1.0)
    connection = Connection(
        socket,
        ConnectionProtocol("c-gone", max_message_bytes=1024, heartbeat_timeout=10),
        remote="test",
        heartbeats=heartbeats,
        frame_rate=lambda: 60.0,
    )
    with errors_logged() as logged, trio.fail_after(2):
        await connection.run('{"type":"startup_complete"}')
    assert logged == []
    assert len(heartbeats) == 0  # it left the sweep
    assert connection.close_code is None  # nothing was closed: nobody was there
    if on == "send":
        assert socket.sent == []
