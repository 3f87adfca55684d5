"""Fixtures and hooks only; the helpers they use live in tests/support/.

Tests are grouped by what they need, one folder each, and each folder's tests carry its
marker (``pytest -m unit``, ``-m e2e``, ``-m system``): unit tests open no socket, end-to-end
tests run a real Hypercorn server on loopback, system tests drive a browser, the benchmark's
mechanics or check the documents.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.lanes import lane_due
from tests.support.server import RunningServer, start_server, test_settings
from wirthforge_trio.transport.hub import Hub

TESTS = Path(__file__).resolve().parent
GROUPS = ("unit", "e2e", "system", "real_model")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the group of the folder it lives in."""
    for item in items:
        if not item.path.is_relative_to(TESTS):
            continue
        group = item.path.relative_to(TESTS).parts[0]
        if group in GROUPS:
            item.add_marker(getattr(pytest.mark, group))


_network_sockets: list[str] | None = None
"""While a unit test runs: every bind or connect of an IPv4/IPv6 socket, as it happens."""


def _watch_network_sockets(event: str, args: tuple[Any, ...]) -> None:
    if _network_sockets is not None and event in ("socket.bind", "socket.connect"):
        sock, address = args[0], args[1]
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _network_sockets.append(f"{event} {address!r}")


sys.addaudithook(_watch_network_sockets)


@pytest.fixture(autouse=True)
def unit_tests_open_no_network_socket(request: pytest.FixtureRequest) -> Iterator[None]:
    """A unit test that binds or connects a network socket fails: it belongs in tests/e2e/."""
    global _network_sockets
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    _network_sockets = opened = []
    try:
        yield
    finally:
        _network_sockets = None
    assert not opened, f"a unit test opened network sockets ({opened}): move it to tests/e2e/"


@pytest.fixture(autouse=True)
def lanes_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """In every test with an in-process server, on every frame: each connection's frame lane
    is open exactly when the full look at its state says it may be (how often it was open
    is counted)."""
    publish = Hub._publish_frame
    open_lanes = [0]

    def checking(self: Hub, frame: Any) -> None:
        for connection in self:
            assert (connection.frame_lane is not None) == lane_due(connection)
            open_lanes[0] += connection.frame_lane is not None
        publish(self, frame)

    monkeypatch.setattr(Hub, "_publish_frame", checking)
    yield open_lanes


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    running = await start_server(nursery, test_settings())
    yield running
    running.stop.set()
