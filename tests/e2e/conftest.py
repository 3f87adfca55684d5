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
            # pytest shows this only when the test failed: what each server warned of and said last.
            lines = server.output().splitlines()
            warnings = [line for line in lines[:-30] if " WARNING " in line]
            tail = "\n".join([*warnings, *lines[-30:]])
            print(f"--- server on port {server.port} (exited by itself: {exited}):\n{tail}")
