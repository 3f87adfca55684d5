"""The server's log of connections counts the one that just opened, and gives the close code
the client chose (issue 23, C3). A real server, real clients, the log as written."""

from __future__ import annotations

import logging
import re

import trio

from tests.support.logs import records_logged
from tests.support.server import start_server, test_settings
from tests.support.waits import eventually

OPENED = re.compile(r"connection (c-\w+) opened from .* \((\d+) open\)")
CLOSED = re.compile(r"connection (c-\w+) closed(?: by the client)? \(code (\d+|None), (\d+) open\)")


async def test_the_log_counts_the_new_connection_and_the_clients_close_code(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(nursery, test_settings(log_level="INFO"))
    with records_logged(logging.INFO) as records:
        async with server.connect() as first:
            await first.receive_type("startup_complete")
            async with server.connect() as second:
                await second.receive_type("startup_complete")
                await second.ws.aclose(code=4000, reason="done here")
            await eventually(lambda: any(CLOSED.search(r.getMessage()) for r in records), 10)
    server.stop.set()
    lines = [r.getMessage() for r in records]
    opened = [m.groups() for m in map(OPENED.search, lines) if m]
    closed = [m.groups() for m in map(CLOSED.search, lines) if m]
    assert [count for _, count in opened] == ["1", "2"], lines
    second_id = opened[1][0]
    assert (second_id, "4000", "1") in closed, lines
