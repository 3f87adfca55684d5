"""Run the app on Hypercorn's trio worker from Python: ``wirthforge serve`` and embedding.

Another Trio program runs the server inside its own nursery::

    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve, Settings(port=0))
        ...
        nursery.cancel_scope.cancel()   # clients get close 1001, then the server stops

The listening socket is bound here rather than by Hypercorn, so that a taken default port can
fall back to 8146 (WF-TECH-001) and a taken explicit port gives a clear message.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from .app import SHUTDOWN_CLOSE_TIMEOUT, WirthforgeApp, create_app
from .config import DEFAULT_PORT, FALLBACK_PORT, Settings, SettingsError
from .protocol.connection import CLOSE_GOING_AWAY

SHUTDOWN_DEADLINE = 5.0
"""Seconds Hypercorn gets to finish after the clients were told to go (then it is cancelled)."""


def bind_listener(host: str, port: int, *, explicit_port: bool) -> socket.socket:
    """A bound TCP socket; the default port falls back to 8146 when it is taken."""
    candidates = [port] if explicit_port or port != DEFAULT_PORT else [DEFAULT_PORT, FALLBACK_PORT]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: OSError | None = None
    for candidate in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), candidate))
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        return sock
    assert last_error is not None
    if last_error.errno == errno.EADDRINUSE:
        tried = " and ".join(str(p) for p in candidates)
        raise SettingsError(
            f"port {tried} on {host} is already in use (another wirthforge?); "
            "choose a free one with --port or WIRTHFORGE_PORT"
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


async def _wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def serve(
    settings: Settings,
    *,
    app: WirthforgeApp | None = None,
    explicit_port: bool = True,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns or the caller cancels; starts with the base URL.

    Either way, open WebSockets are closed with 1001 before the server exits.
    """
    app = app if app is not None else create_app(settings)
    sock = bind_listener(settings.host, settings.port, explicit_port=explicit_port)
    host, port = sock.getsockname()[:2]
    config = hypercorn_config(sock, settings)
    hub = app.wirthforge.hub
    trigger = shutdown_trigger or _wait_for_signal
    stop = trio.Event()
    server_scope = trio.CancelScope(shield=True)

    async def run_hypercorn(task_status: trio.TaskStatus[object]) -> None:
        # Shielded: when our caller cancels, the clients must get their close frames before
        # Hypercorn tears the sockets down; the shutdown below then stops it in order.
        with server_scope:
            await hypercorn_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)

    shown_host = f"[{host}]" if ":" in host else host
    async with trio.open_nursery() as nursery:
        await nursery.start(run_hypercorn)
        task_status.started(f"http://{shown_host}:{port}")
        try:
            await trigger()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(SHUTDOWN_CLOSE_TIMEOUT):
                    await hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
                stop.set()
                server_scope.deadline = trio.current_time() + SHUTDOWN_DEADLINE
