"""Run the app on Hypercorn's trio worker from Python: ``wirthforge serve`` and embedding.

Another Trio program runs the server inside its own nursery::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, Settings(port=0))
        ...                              # server.url, server.publish(event), server.submit()
        nursery.cancel_scope.cancel()   # clients get close 1001, then the server stops

or ``async with running(Settings(port=0)) as server:``. See docs/embedding.md.

The listening socket is bound here rather than by Hypercorn, so that a taken default port can
fall back to 8146 (WF-TECH-001) and a taken explicit port gives a clear message.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from .config import DEFAULT_PORT, FALLBACK_PORT, Settings, SettingsError
from .contract.close_codes import CLOSE_GOING_AWAY
from .contract.events import Event
from .engine.decipher import Session
from .engine.runtime import Engine
from .sources.base import ModelSource
from .web import SHUTDOWN_CLOSE_TIMEOUT, WirthforgeApp, create_app

SHUTDOWN_DEADLINE = 5.0
"""Seconds Hypercorn gets to finish after the clients were told to go (then it is cancelled)."""


def bind_listener(
    host: str, port: int, *, explicit_port: bool, send_timeout: float | None = None
) -> socket.socket:
    """A bound TCP socket; the default port falls back to 8146 when it is taken.

    ``send_timeout`` sets TCP_USER_TIMEOUT, which the accepted sockets inherit: the kernel
    aborts a connection whose peer accepts no data for that long (a frozen or vanished
    client with a full receive window). Hypercorn's sends are shielded from cancellation, so
    without it a writer blocked on such a peer would wait forever.
    """
    candidates = [port] if explicit_port or port != DEFAULT_PORT else [DEFAULT_PORT, FALLBACK_PORT]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: OSError | None = None
    for candidate in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if send_timeout is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(send_timeout * 1000))
        try:
            sock.bind((host.strip("[]"), candidate))
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        return sock
    assert last_error is not None
    if last_error.errno == errno.EADDRINUSE:
        taken = (
            f"port {port} on {host} is already in use"
            if len(candidates) == 1
            else f"ports {' and '.join(map(str, candidates))} on {host} are both in use"
        )
        raise SettingsError(
            f"{taken} (another wirthforge?); choose a free one with --port or WIRTHFORGE_PORT"
        )
    raise SettingsError(f"cannot listen on {host}:{port}: {last_error.strerror}")


def hypercorn_config(sock: socket.socket, settings: Settings) -> Config:
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = SHUTDOWN_CLOSE_TIMEOUT
    # Above the app's own limit, so an oversized message reaches the app, which answers it
    # with an error_event before closing with 1009.
    config.websocket_max_message_size = max(1024 * 1024, 2 * settings.max_message_bytes)
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


@asynccontextmanager
async def running(
    settings: Settings | None = None, *, sources: Sequence[ModelSource] = ()
) -> AsyncIterator[Server]:
    """``async with running(Settings(port=0)) as server:``; leaving it shuts the server down."""
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, settings, sources=sources))
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def serve_until_signal(
    settings: Settings,
    *,
    app: WirthforgeApp,
    explicit_port: bool,
    on_started: Callable[[Server], None],
) -> None:
    """Serve until Ctrl+C or SIGTERM (the command line's loop; embedders bring their own).

    The signal receiver is open before the port is bound, so a signal that arrives the moment
    the server listens stops it like any later one, never as a KeyboardInterrupt raised into
    whatever task was running (docs/decisions.md, "Stopping on a signal").
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def until_signal() -> None:
            async for _ in signals:
                return

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(
                    serve,
                    settings,
                    app=app,
                    explicit_port=explicit_port,
                    shutdown_trigger=until_signal,
                )
            )
            on_started(server)


@attrs.frozen
class Server:
    """A running server, as :func:`serve` hands it to the program that started it."""

    host: str
    port: int
    app: WirthforgeApp

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self.host, self.port

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:8145``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket URL (``ws://127.0.0.1:8145/ws``)."""
        return self.url.replace("http://", "ws://", 1) + "/ws"

    @property
    def engine(self) -> Engine:
        return self.app.wirthforge.engine

    def publish(self, event: Event) -> None:
        """Send an event of the program's own to every subscribed client (lossless unless it
        is a frame event), kept for clients that resume."""
        self.engine.publish(event)

    def submit(self, prompt: str, models: Sequence[str] | None = None) -> list[Session]:
        """Start a generation as ``POST /prompt`` does; returns the sessions."""
        return self.engine.submit(prompt, models)


async def check_broker(app: WirthforgeApp) -> None:
    """A broker that cannot be reached stops the start here, as one :class:`SettingsError`
    (past this point a failure would surface through Hypercorn's lifespan as a traceback)."""
    broker = app.wirthforge.broker
    if broker is None:
        return
    from .broker.node import BrokerStartError

    try:
        await broker.node.probe()
    except BrokerStartError as exc:
        raise SettingsError(str(exc)) from None


async def serve(
    settings: Settings | None = None,
    *,
    sources: Sequence[ModelSource] = (),
    app: WirthforgeApp | None = None,
    explicit_port: bool = True,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until the caller cancels (or ``shutdown_trigger`` returns).

    ``await nursery.start(serve, settings)`` returns the :class:`Server` once it listens.
    ``sources`` are the program's own model sources, served beside the configured ones.
    On the way out, open WebSockets are closed with 1001 before the server exits.
    """
    settings = settings if settings is not None else Settings()
    app = app if app is not None else create_app(settings, extra_sources=sources)
    await check_broker(app)
    sock = bind_listener(
        settings.host,
        settings.port,
        explicit_port=explicit_port,
        send_timeout=settings.send_timeout,
    )
    host, port = sock.getsockname()[:2]
    config = hypercorn_config(sock, settings)
    hub = app.wirthforge.hub
    trigger = shutdown_trigger or trio.sleep_forever
    stop = trio.Event()
    server_scope = trio.CancelScope(shield=True)

    async def run_hypercorn(task_status: trio.TaskStatus[object]) -> None:
        # Shielded: when our caller cancels, the clients must get their close frames before
        # Hypercorn tears the sockets down; the shutdown below then stops it in order.
        with server_scope:
            await hypercorn_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_hypercorn)
        task_status.started(Server(host=host, port=port, app=app))
        try:
            await trigger()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(SHUTDOWN_CLOSE_TIMEOUT):
                    await hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
                hub.abort_remaining()  # clients that could not take their close frame
                stop.set()
                server_scope.deadline = trio.current_time() + SHUTDOWN_DEADLINE
