"""The real server (Hypercorn, trio worker) on a free loopback port inside a test's nursery,
and clients for it: schema-checking WebSocket clients, and a raw one that never reads."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from wirthforge_trio.config import Settings
from wirthforge_trio.server import serve
from wirthforge_trio.web import WirthforgeApp, create_app

from .checks import check_message


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
        return connect_checked(self.ws_url, **kwargs)

    def connect_url(self, url: str, **kwargs: Any) -> Any:
        """Like :meth:`connect`, to another URL (``/ws?resume=1``, a proxy)."""
        return connect_checked(url, **kwargs)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=5.0)


class connect_checked:
    """A :class:`CheckedClient` on ``url`` for the length of an ``async with`` block."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._cm = open_websocket_url(url, **kwargs)

    async def __aenter__(self) -> CheckedClient:
        return CheckedClient(await self._cm.__aenter__())

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._cm.__aexit__(*exc)  # type: ignore[no-any-return]


ORDINARY_PATH_FORCED = os.environ.get("WIRTHFORGE_DIRECT_WRITES", "").strip() == "0"
"""The run proves the ordinary path (nox's session with ``WIRTHFORGE_DIRECT_WRITES=0``)."""

needs_fast_path = pytest.mark.skipif(
    ORDINARY_PATH_FORCED, reason="checks the fast path; WIRTHFORGE_DIRECT_WRITES=0 forces ASGI"
)


def test_settings(**overrides: Any) -> Settings:
    """Settings for a test server: any free port, a fast demo model, quiet logs (and the
    ordinary send path in the run that proves it)."""
    base: dict[str, Any] = {"port": 0, "demo_speed": 3.0, "log_level": "WARNING"}
    if ORDINARY_PATH_FORCED:
        base["direct_writes"] = False
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


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[RunningServer]:
    """The real server for the length of the block; leaving the block stops it and returns
    once serve() has returned, its shutdown's work (and log records) done."""
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        try:
            yield running
        finally:
            running.stop.set()


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
