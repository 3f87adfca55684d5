"""The frame lane's rule, restated from the parts' own state, for the check that runs on every
frame of every test with an in-process server (tests/conftest.py, ``lanes_checked``)."""

from __future__ import annotations

from wirthforge_trio.transport.connection import Connection
from wirthforge_trio.transport.fastpath import DirectSocket


def lane_due(connection: Connection) -> bool:
    """Whether the hub may write a whole frame to this connection with nothing else looked
    at, from the state of its parts (the socket's from the full look, not its switch)."""
    port = connection.port
    return (
        isinstance(port, DirectSocket)
        and port.shares_framing
        and port._followed
        and port.state_allows_writes()
        and connection.mailbox.writer_parked  # the writer sleeps with nothing to send
        and connection._closing is None
        and connection.protocol.wants_everything
    )
