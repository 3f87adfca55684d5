"""Shared fixtures: a real Hypercorn server on a free loopback port, and schema-checking clients.

Every message an end-to-end test receives goes through :class:`CheckedClient`, which
validates it against the project's generated schema and, for the nine standard events,
against the published WF-TECH-003 schema in ``../shared/contract/`` when that folder exists.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import jsonschema
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from wirthforge_trio.app import WirthforgeApp, create_app
from wirthforge_trio.config import Settings
from wirthforge_trio.contract import schema as project_schema
from wirthforge_trio.contract.events import STANDARD_EVENTS
from wirthforge_trio.server import serve
from wirthforge_trio.transport.connection import Connection
from wirthforge_trio.transport.fastpath import DirectSocket
from wirthforge_trio.transport.hub import Hub

PUBLISHED_SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "shared" / "contract" / "WF-TECH-003-event-schemas.json"
)
STANDARD_TYPES = frozenset(cls.TYPE for cls in STANDARD_EVENTS)

_project_validator = jsonschema.Draft7Validator(project_schema.server_schema())
_published_validator = (
    jsonschema.Draft7Validator(json.loads(PUBLISHED_SCHEMA_PATH.read_text()))
    if PUBLISHED_SCHEMA_PATH.exists()
    else None
)


def check_message(text: str | bytes) -> dict[str, Any]:
    """Parse one server message and fail the test unless both schemas accept it."""
    assert isinstance(text, str), "server messages are text frames"
    message = json.loads(text)
    errors = [e.message for e in _project_validator.iter_errors(message)]
    assert not errors, f"message fails the project schema: {errors}: {text[:300]}"
    if _published_validator is not None and message.get("type") in STANDARD_TYPES:
        errors = [e.message for e in _published_validator.iter_errors(message)]
        assert not errors, f"standard message fails the published schema: {errors}: {text[:300]}"
    return message  # type: ignore[no-any-return]


@attrs.define
class CheckedClient:
    """A trio-websocket client whose every received message is schema-checked and recorded."""

    ws: WebSocketConnection
    raw: list[str] = attrs.field(factory=list)
    last_frame: int = -1

    async def receive(self) -> dict[str, Any]:
        text = await self.ws.get_message()
        assert isinstance(text, str)
        self.raw.append(text)
        message = check_message(text)
        if "frameNumber" in message:
            assert message["frameNumber"] >= self.last_frame, "frameNumber went backwards"
            self.last_frame = message["frameNumber"]
        return message

    async def receive_until(
        self, predicate: Callable[[dict[str, Any]], bool], seconds: float = 5.0
    ) -> dict[str, Any]:
        with trio.fail_after(seconds):
            while True:
                message = await self.receive()
                if predicate(message):
                    return message

    async def receive_type(self, type_: str, seconds: float = 5.0) -> dict[str, Any]:
        return await self.receive_until(lambda m: m["type"] == type_, seconds)

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send_message(message if isinstance(message, str) else json.dumps(message))


@attrs.define
class RunningServer:
    url: str
    app: WirthforgeApp
    settings: Settings
    stop: trio.Event

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    def connect(self, **kwargs: Any) -> Any:
        """``async with server.connect() as client``: a CheckedClient on /ws."""
        return _connect(self.ws_url, **kwargs)

    def connect_url(self, url: str, **kwargs: Any) -> Any:
        """Like :meth:`connect`, to another URL (``/ws?resume=1``, a proxy)."""
        return _connect(url, **kwargs)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=5.0)


class _connect:
    def __init__(self, url: str, **kwargs: Any) -> None:
        self._cm = open_websocket_url(url, **kwargs)

    async def __aenter__(self) -> CheckedClient:
        return CheckedClient(await self._cm.__aenter__())

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._cm.__aexit__(*exc)  # type: ignore[no-any-return]


class StepCounter(trio.abc.Instrument):
    """How many times each task ran, by name (a task that polls runs every time it wakes)."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


ORDINARY_PATH_FORCED = os.environ.get("WIRTHFORGE_DIRECT_WRITES", "").strip() == "0"
"""The run proves the ordinary path (nox's session with ``WIRTHFORGE_DIRECT_WRITES=0``)."""

needs_fast_path = pytest.mark.skipif(
    ORDINARY_PATH_FORCED, reason="checks the fast path; WIRTHFORGE_DIRECT_WRITES=0 forces ASGI"
)


def test_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"port": 0, "demo_speed": 3.0, "log_level": "WARNING"}
    if ORDINARY_PATH_FORCED:
        base["direct_writes"] = False  # nox's session for the ordinary path
    base.update(overrides)
    return Settings(**base)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


async def start_server(nursery: trio.Nursery, settings: Settings) -> RunningServer:
    """Start the real server (Hypercorn, trio worker) on a free port inside ``nursery``."""
    app = create_app(settings)
    stop = trio.Event()
    server = await nursery.start(
        lambda task_status: serve(
            settings, app=app, shutdown_trigger=stop.wait, task_status=task_status
        )
    )
    return RunningServer(url=server.url, app=app, settings=settings, stop=stop)


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


@contextmanager
def records_logged(level: int = logging.DEBUG) -> Iterator[list[logging.LogRecord]]:
    """Collect every record at ``level`` or above of the server's loggers (and the root's)
    meanwhile."""
    found: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(record)

    handler = Collect(level=level)
    loggers = [logging.getLogger(n) for n in ("", "wirthforge_trio", "hypercorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield found
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@contextmanager
def errors_logged() -> Iterator[list[str]]:
    """The ERROR records logged meanwhile, formatted, for the caller to read afterwards."""
    found: list[str] = []
    formatter = logging.Formatter()
    with records_logged(logging.ERROR) as records:
        yield found
    found.extend(f"{r.name}: {formatter.format(r)}" for r in records)


RAW_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def stalled_client(port: int, *, receive_buffer: int = 4096) -> trio.SocketStream:
    """A raw WebSocket handshake on /ws, then nothing: the caller never reads (a frozen tab or
    process), and the small receive buffer fills at once."""
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(RAW_HANDSHAKE)
    return stream
