"""The Quart-Trio app: :func:`create_app` wires the engine, the sources and the transport
together for one set of :class:`~wirthforge_trio.config.Settings` and registers the routes.
Building an app starts nothing: the engine runs while the app is served."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import sniffio
import trio
from quart import request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..broker.url import BrokerURLError, parse_broker_url
from ..config import Settings, SettingsError, detect_tier
from ..contract.close_codes import CLOSE_GOING_AWAY
from ..contract.events import Capability
from ..engine.decipher import Retention
from ..engine.energy import PROFILES
from ..engine.resume_log import StoreError
from ..engine.runtime import Engine
from ..engine.sqlite_log import SqliteLog
from ..protocol.limits import RateLimit
from ..security import AccessPolicy, BrowserPolicy, ConnectionLimiter
from ..sources import make_source
from ..sources.base import ModelSource
from ..transport import fastpath
from ..transport.heartbeats import HeartbeatSweep
from ..transport.hub import Hub
from ..version import __version__
from .access import access
from .api import api
from .errors import http_error, json_error
from .page import page
from .state import ServerState

if TYPE_CHECKING:  # the broker needs its extra (coredis) only when one is configured
    from ..broker.wiring import Broker
from .websocket import socket_route

log = logging.getLogger("wirthforge_trio")

WRONG_WORKER_MESSAGE: Final = (
    "wirthforge-trio runs on Trio and needs Hypercorn's trio worker: start it with "
    "`hypercorn -k trio wirthforge_trio.app:app` (or `wirthforge serve`)."
)
SHUTDOWN_CLOSE_TIMEOUT: Final = 1.0
REFUSAL_HOLD: Final = 5.0
"""Longest a refusing worker waits for the other workers to find its claim taken."""
MAX_PROMPT_BODY: Final = 1024 * 1024
"""Cap of a request body, raised for a larger WIRTHFORGE_MAX_PROMPT_BYTES (JSON may escape)."""


class WirthforgeApp(QuartTrio):
    """QuartTrio that explains itself when started on an asyncio server instead of crashing,
    with a lean WebSocket send path (:mod:`wirthforge_trio.transport.fastpath`)."""

    websocket_class = fastpath.LeanWebsocket
    asgi_websocket_class = fastpath.LeanASGIWebsocketConnection

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = "unknown"
        if library != "trio":
            await _refuse_wrong_worker(library, scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    @property
    def wirthforge(self) -> ServerState:
        state: ServerState = self.extensions["wirthforge"]
        return state


async def _refuse_wrong_worker(library: str, scope: Any, receive: Any, send: Any) -> None:
    """Answer every ASGI call of a non-Trio server with the fix, in its log and to clients."""
    kind = scope["type"]
    if kind == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            print(
                f"ERROR: {WRONG_WORKER_MESSAGE} (this server runs {library})",
                file=sys.stderr,
                flush=True,
            )
            # Stop the worker with a status and no traceback; Hypercorn's supervisor sees the
            # failed worker and exits too. (SystemExit would be logged as a task traceback.)
            logging.shutdown()
            os._exit(2)
        return
    if kind == "http":
        body = f"{WRONG_WORKER_MESSAGE}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif kind == "websocket":
        await send({"type": "websocket.close", "code": 1011, "reason": "needs -k trio"})
    log.error(WRONG_WORKER_MESSAGE)


def build_sources(settings: Settings) -> list[ModelSource]:
    """The model sources ``settings`` name, in order."""
    return [
        make_source(
            spec,
            ollama_url=settings.ollama_url,
            openai_url=settings.openai_url,
            openai_api_key=settings.openai_api_key,
            demo_seed=settings.demo_seed,
            demo_speed=settings.demo_speed,
        )
        for spec in settings.models
    ]


def tune_gc() -> None:
    """Freeze start-up objects and collect young objects less often, so that a full
    collection does not stall every sender at once (docs/decisions.md, "Garbage collector")."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def configure_logging(level: str) -> None:
    """Log the package's lines to stderr at ``level``: for the commands that run the server
    (an embedding program configures logging itself)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(level.upper())


def _broker(settings: Settings, hub: Hub, retention: Retention) -> Broker | None:
    """The Redis broker the settings name (None: one process, as without one)."""
    if settings.broker is None:
        return None
    try:
        from ..broker.wiring import Broker as RedisBroker
    except ImportError:
        raise SettingsError(
            "a broker needs the Redis client: pip install 'wirthforge-trio[broker]'"
        ) from None
    try:
        url = parse_broker_url(settings.broker)
    except BrokerURLError as exc:
        raise SettingsError(str(exc)) from None
    return RedisBroker(url, hub, retention)


def _store(settings: Settings) -> SqliteLog | None:
    """The resume store of ``settings``, opened now so a bad path stops the start at once."""
    if settings.store_path is None:
        return None
    try:
        return SqliteLog(settings.store_path)
    except StoreError as exc:
        raise SettingsError(str(exc)) from None


def _server_state(settings: Settings, extra_sources: Sequence[ModelSource]) -> ServerState:
    hub = Hub(HeartbeatSweep(settings.heartbeat_interval))
    retention = Retention(
        sessions=settings.retention_sessions,
        events=settings.retention_events,
        seconds=settings.retention_seconds,
    )
    broker = _broker(settings, hub, retention)
    engine = Engine(
        [*build_sources(settings), *extra_sources],
        hub if broker is None else broker.publisher,
        PROFILES[settings.profile],
        first_token_timeout=settings.first_token_timeout,
        stall_timeout=settings.stall_timeout,
        check_interval=settings.model_check_interval,
        preload=settings.preload,
        max_tokens=settings.max_tokens,
        retention=retention,
        log=_store(settings),
    )
    if broker is not None:
        broker.bind(engine)
    capabilities: tuple[Capability, ...] = ("visualization",)
    if len(engine.models) > 1:
        capabilities = ("council", "visualization")
    return ServerState(
        settings=settings,
        tier=settings.tier or detect_tier(),
        hub=hub,
        engine=engine,
        access=AccessPolicy(settings.token),
        browser=BrowserPolicy.from_settings(settings),
        limiter=ConnectionLimiter(settings.max_connections, settings.max_connections_per_address),
        rate_limit=RateLimit(
            settings.max_message_rate, settings.max_message_burst, settings.rate_limit_close_after
        ),
        body_cap=max(MAX_PROMPT_BODY, 6 * settings.max_prompt_bytes + 4096),
        startup_capabilities=capabilities,
        broker=broker,
    )


async def _start_broker(app: WirthforgeApp, broker: Broker) -> None:
    """Join the broker before the engine starts (its frame numbers and instance id come
    from the cluster); a broker out of reach stops the server with one line naming the fix."""
    from ..broker.node import BrokerStartError

    try:
        await app.nursery.start(broker.node.run)
    except BrokerStartError as exc:
        if fastpath.in_hypercorn_worker():  # Hypercorn's CLI: one line, and its exit status
            refuse_to_start(f"ERROR: wirthforge-trio: {exc}")
        raise SettingsError(str(exc)) from None  # serve() checked the broker before this
    broker.joined()


def create_app(
    settings: Settings | None = None, *, extra_sources: Sequence[ModelSource] = ()
) -> WirthforgeApp:
    """A new app for ``settings`` (default: from the ``WIRTHFORGE_*`` environment).

    ``extra_sources`` are an embedding program's own model sources, served beside the
    configured ones.
    """
    settings = settings if settings is not None else Settings.from_env()
    state = _server_state(settings, extra_sources)
    app = WirthforgeApp("wirthforge_trio")  # its root path holds static/
    app.config["MAX_CONTENT_LENGTH"] = state.body_cap
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 0
    app.extensions["wirthforge"] = state
    for blueprint in (access, page, api, socket_route):
        app.register_blueprint(blueprint)

    @app.before_serving
    async def start_engine() -> None:
        if state.broker is not None:
            await _start_broker(app, state.broker)
        await app.nursery.start(state.engine.run)
        tune_gc()
        log.info(
            "wirthforge-trio %s ready: models %s, %s, frame clock %d Hz",
            __version__,
            ", ".join(state.engine.models),
            state.tier,
            int(state.engine.clock.rate),
        )
        send_path = fastpath.gate(settings.direct_writes)
        log.info("send path: %s (%s)", send_path.path, send_path.reason)
        if settings.store_path is not None:
            log.info("resume log kept in %s", settings.store_path)

    @app.after_serving
    async def stop_engine() -> None:
        with trio.move_on_after(SHUTDOWN_CLOSE_TIMEOUT):
            await state.hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
        state.hub.abort_remaining()
        state.engine.stop()
        if state.broker is not None:
            await state.broker.node.close()

    @app.errorhandler(HTTPException)
    async def any_http_error(error: HTTPException) -> Any:
        """Every other HTTP error in the API's JSON shape (docs/protocol.md, "HTTP")."""
        return http_error(error, request.method, request.path)

    @app.errorhandler(RequestEntityTooLarge)
    async def too_large(_: RequestEntityTooLarge) -> Any:
        return json_error(
            413,
            f"the request body is over {state.body_cap} bytes; a prompt may have up to "
            f"{settings.max_prompt_bytes} bytes (WIRTHFORGE_MAX_PROMPT_BYTES)",
        )

    return app


def refuse_to_start(message: str, *, status: int = 2) -> None:
    """Stop this worker with ``message`` on stderr, printed once for all the workers of one
    supervisor (docs/decisions.md, "One worker unless a broker"). Never returns."""
    import multiprocessing
    import socket

    parent = multiprocessing.parent_process()
    workers = fastpath.hypercorn_workers()
    claim: socket.socket | None = None
    if parent is not None and workers is not None and workers > 1:
        # The first worker to bind this abstract (Linux, no file) name speaks for all, and
        # holds the name until each other worker has found it taken and said so.
        name = f"\0wirthforge-refusal-{parent.pid}"
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(name)
            claim.listen(workers)
        except OSError:  # another worker speaks
            _tell_the_speaker(name)
            os._exit(status)
    print(message, file=sys.stderr, flush=True)
    if claim is not None and workers is not None:
        claim.settimeout(REFUSAL_HOLD)
        try:
            for _ in range(workers - 1):
                claim.accept()[0].close()
        except OSError:  # a worker that never came (the timeout): go anyway
            pass
    os._exit(status)


def _tell_the_speaker(name: str) -> None:
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
            peer.settimeout(REFUSAL_HOLD)
            peer.connect(name)
    except OSError:  # the speaker has gone already: nothing to hold for
        pass


def several_workers_refusal(workers: int | None, settings: Settings) -> str | None:
    """The one line that stops a worker that would split the stream, or None to serve.

    Several workers behind one listening socket each have their own engine: without a broker
    a prompt would reach only the clients of the worker that took it (docs/decisions.md,
    "One worker unless a broker"); with one, they are one stream (``broker/``).
    """
    if workers is None or workers <= 1 or settings.broker is not None:
        return None
    return (
        f"ERROR: wirthforge-trio refuses {workers} Hypercorn workers: without a broker each "
        "would stream alone; run one worker (hypercorn -w 1, or `wirthforge serve`) or set a "
        "broker (WIRTHFORGE_BROKER=redis://HOST:PORT)."
    )


def app_from_environment() -> WirthforgeApp:
    """The app for ``hypercorn -k trio wirthforge_trio.app:app``: settings from the
    ``WIRTHFORGE_*`` environment, and a one-line error naming the fix for a bad one (or for
    several workers without a broker)."""
    try:
        settings = Settings.from_env()
        refusal = several_workers_refusal(fastpath.hypercorn_workers(), settings)
        if refusal is not None:
            refuse_to_start(refusal)
        configure_logging(settings.log_level)
        return create_app(settings)
    except SettingsError as exc:
        print(f"ERROR: wirthforge-trio configuration: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
