"""Fixtures of the end-to-end group: a real Redis server and the server processes a broker
test launches (tests/support/broker.py has the helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Redis, ServerProcess
from tests.support.network import free_port


@pytest.fixture
def redis() -> Iterator[Redis]:
    server = Redis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """The server processes a test launches (appended to this list), stopped at the end."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for server in started:
            exited = server.process.poll()
            server.stop()
            # pytest shows this only when the test failed: what each server said last.
            tail = "\n".join(server.output().splitlines()[-30:])
            print(f"--- server on port {server.port} (exited by itself: {exited}):\n{tail}")
