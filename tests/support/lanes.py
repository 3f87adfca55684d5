"""The frame lane's rule, restated from the parts' own state, for the check that runs on every
frame of every test with an in-process server (tests/conftest.py, ``lanes_checked``)."""

from __future__ import annotations

from wirthforge_trio.transport.connection import Connection


def lane_due(connection: Connection) -> bool:
    """Whether the hub may write a whole frame to this connection with nothing else looked
    at, from the state of its parts (the socket's from the full look, not its switch)."""
    direct = connection.direct
    return (
        direct is not None
        and direct.raw_socket is not None
        and direct.shares_framing
        and direct._followed
        and direct.state_allows_writes()
        and connection.mailbox.writer_parked  # the writer sleeps with nothing to send
        and connection._closing is None
        and connection.protocol.wants_everything
    )
