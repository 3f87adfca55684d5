"""The Quart-Trio app: routes only. ``hypercorn -k trio wirthforge_trio.app:app`` serves it.

:func:`create_app` wires the engine, the sources and the transport together for one set of
:class:`~wirthforge_trio.config.Settings`; the module-level ``app`` is built from the
``WIRTHFORGE_*`` environment so that a plain Hypercorn command is configurable too.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import attrs
import sniffio
import trio
from quart import Response, jsonify, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from . import __version__
from .config import Settings, SettingsError, detect_tier
from .contract.codec import encode
from .contract.events import (
    Capability,
    Event,
    ResumePayload,
    StartupComplete,
    StartupCompletePayload,
    Tier,
)
from .engine.decipher import Retention
from .engine.energy import PROFILES
from .engine.recovery import wants_for
from .engine.runtime import Engine, UnknownSessionError
from .protocol.connection import CLOSE_GOING_AWAY, ConnectionProtocol
from .protocol.limits import RateLimit
from .protocol.origin import origin_allowed
from .security import (
    RETRY_AFTER_SECONDS,
    AccessPolicy,
    ConnectionLimiter,
    LogThrottle,
    Refusal,
    Slot,
    select_subprotocol,
)
from .sources import make_source
from .sources.base import ModelSource
from .transport import fastpath
from .transport.connection import Connection
from .transport.heartbeats import HeartbeatSweep
from .transport.hub import Hub
from .worker import wait_without_polling

log = logging.getLogger("wirthforge_trio")

WRONG_WORKER_MESSAGE: Final = (
    "wirthforge-trio runs on Trio and needs Hypercorn's trio worker: start it with "
    "`hypercorn -k trio wirthforge_trio.app:app` (or `wirthforge serve`)."
)
SHUTDOWN_CLOSE_TIMEOUT: Final = 1.0
PAGE_SECURITY_HEADERS: Final = {
    # The page loads and talks to this server only ('self' covers its ws:// too).
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_PROMPT_BODY: Final = 1024 * 1024
"""Cap of a request body, raised for a larger WIRTHFORGE_MAX_PROMPT_BYTES (JSON may escape)."""


@attrs.define
class ServerState:
    """Everything one running server shares between its routes."""

    settings: Settings
    tier: Tier
    hub: Hub
    engine: Engine
    access: AccessPolicy
    limiter: ConnectionLimiter
    started_at: float = attrs.field(factory=time.monotonic)
    startup_capabilities: tuple[Capability, ...] = ("visualization",)


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
    """Freeze start-up objects and collect young objects less often.

    Measured here: a generation-2 collection stalls every sender at once (p99 35-42 ms at
    100 clients); freezing what start-up allocated and a higher gen-0 threshold keep the p99
    under 10 ms.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _configure_logging(level: str) -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())


def _socket_addresses(scope: Any) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(server, client) addresses of a connection's socket, when the ASGI server gives both."""
    server, client = scope.get("server"), scope.get("client")
    if server and client and len(server) == 2 and len(client) == 2:
        return (str(server[0]), int(server[1])), (str(client[0]), int(client[1]))
    return None


def _port_counters(connection: Connection) -> dict[str, int | None]:
    """A connection's fast-path counters for ``/status`` (None on the ordinary path)."""
    port = connection.port
    if port.path != "direct":
        return {"directWrites": None, "receivedInline": None, "directReads": None}
    return {
        "directWrites": connection.messages_written_at_once,
        "receivedInline": connection.received_inline,
        "directReads": port.messages_read,
    }


def _error(
    status: int,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[Response, int, dict[str, str]]:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return jsonify(body), status, headers or {}


def _refuse(refusal: Refusal) -> tuple[Response, int, dict[str, str]]:
    return _error(refusal.status, refusal.message, headers=dict(refusal.headers))


def create_app(
    settings: Settings | None = None, *, extra_sources: Sequence[ModelSource] = ()
) -> WirthforgeApp:
    """A new app for ``settings`` (default: from the ``WIRTHFORGE_*`` environment).

    ``extra_sources`` are an embedding program's own model sources, served beside the
    configured ones.
    """
    settings = settings if settings is not None else Settings.from_env()
    _configure_logging(settings.log_level)
    app = WirthforgeApp(__name__)
    body_cap = max(MAX_PROMPT_BODY, 6 * settings.max_prompt_bytes + 4096)
    app.config["MAX_CONTENT_LENGTH"] = body_cap
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 0
    hub = Hub(HeartbeatSweep(settings.heartbeat_interval))
    engine = Engine(
        [*build_sources(settings), *extra_sources],
        hub,
        PROFILES[settings.profile],
        first_token_timeout=settings.first_token_timeout,
        stall_timeout=settings.stall_timeout,
        check_interval=settings.model_check_interval,
        preload=settings.preload,
        retention=Retention(
            sessions=settings.retention_sessions,
            events=settings.retention_events,
            seconds=settings.retention_seconds,
        ),
    )
    capabilities: tuple[Capability, ...] = ("visualization",)
    if len(engine.models) > 1:
        capabilities = ("council", "visualization")
    state = ServerState(
        settings=settings,
        tier=settings.tier or detect_tier(),
        hub=hub,
        engine=engine,
        access=AccessPolicy(settings.token),
        limiter=ConnectionLimiter(settings.max_connections, settings.max_connections_per_address),
        startup_capabilities=capabilities,
    )
    app.extensions["wirthforge"] = state
    access, limiter = state.access, state.limiter
    rate_limit = RateLimit(
        settings.max_message_rate, settings.max_message_burst, settings.rate_limit_close_after
    )
    throttle = LogThrottle()

    def log_refusal(refusal: Refusal, remote: str | None, what: str) -> None:
        """One line per kind of refusal per 10 s; the token itself is never logged."""
        quiet = throttle.allow(refusal.reason, time.monotonic())
        if quiet is not None:
            more = f" ({quiet} more since the last)" if quiet else ""
            log.warning("refused %s from %s: %s%s", what, remote, refusal.reason, more)

    @app.before_serving
    async def start_engine() -> None:
        await app.nursery.start(engine.run)
        tune_gc()
        log.info(
            "wirthforge-trio %s ready: models %s, %s, frame clock %d Hz",
            __version__,
            ", ".join(engine.models),
            state.tier,
            int(engine.clock.rate),
        )
        send_path = fastpath.gate(settings.direct_writes)
        log.info("send path: %s (%s)", send_path.path, send_path.reason)

    @app.after_serving
    async def stop_engine() -> None:
        with trio.move_on_after(SHUTDOWN_CLOSE_TIMEOUT):
            await hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
        hub.abort_remaining()
        engine.stop()

    def join(connection: Connection, resume: ResumePayload | None) -> None:
        """Queue a resuming client's catch-up and add it to the hub in one step (no await
        between), so every event is either in the catch-up or live, never both or neither."""
        if resume is not None:
            protocol = connection.protocol
            connection.queue_catch_up(
                encode(event)
                for event in engine.catch_up(
                    resume,
                    wants=wants_for(protocol.wants, protocol.wants_models),
                    channels=protocol.channels,
                    subscribed_models=protocol.subscribed_models,
                )
            )
        hub.add(connection)

    def resolve_model(name: str) -> str:
        """A modelId from what a client may say: the id, the runtime's name, or the spec."""
        if name in engine.models:
            return name
        for model_id, entry in engine.models.items():
            if name in (entry.source.name, f"{entry.source.kind}:{entry.source.name}"):
                return model_id
        return name

    def current_state(topic: str) -> list[Event]:
        """What a client that just subscribed to an extension topic needs to catch up."""
        if topic == "models":
            return [entry.status_event() for entry in engine.models.values()]
        return []

    def models_view() -> list[dict[str, Any]]:
        return [
            {
                "modelId": model_id,
                "name": entry.source.name,
                "source": entry.source.kind,
                "status": entry.status,
                "message": entry.message,
                "state": str(engine.decipher.energies[model_id].state),
                "intensity": round(engine.decipher.energies[model_id].intensity, 4),
                "totalEnergy": round(engine.decipher.energies[model_id].total_eu, 6),
            }
            for model_id, entry in engine.models.items()
        ]

    @app.get("/")
    async def page() -> Any:
        """The lifeline page; its scripts and the JS client are under /static/."""
        response = await app.send_static_file("index.html")
        response.headers.update(PAGE_SECURITY_HEADERS)
        return response

    @app.after_request
    async def static_headers(response: Response) -> Response:
        if request.path.startswith("/static/"):
            response.headers.update(PAGE_SECURITY_HEADERS)
        return response

    def http_refusal() -> Refusal | None:
        # The page and its files need no token: they reveal nothing private, and the page
        # must load before its script can read the token from the URL's #fragment.
        path = request.path
        return access.check(
            authorization=request.headers.get("Authorization"),
            query=request.args.keys(),
            server=request.scope.get("server"),
            token_needed=not (path == "/" or path.startswith("/static/")),
        )

    @app.before_request
    async def check_access() -> Any:
        """The access rules, for every HTTP route but /health (which answers on its own)."""
        if request.path == "/health":
            return None
        refusal = http_refusal()
        if refusal is None:
            return None
        log_refusal(refusal, request.remote_addr, f"{request.method} {request.path}")
        return _refuse(refusal)

    @app.errorhandler(RequestEntityTooLarge)
    async def too_large(_: RequestEntityTooLarge) -> Any:
        return _error(
            413,
            f"the request body is over {body_cap} bytes; a prompt may have up to "
            f"{settings.max_prompt_bytes} bytes (WIRTHFORGE_MAX_PROMPT_BYTES)",
        )

    @app.websocket("/ws")
    async def ws() -> Any:
        remote = websocket.remote_addr
        refusal = access.check(
            authorization=websocket.headers.get("Authorization"),
            query=websocket.args.keys(),
            server=websocket.scope.get("server"),
            subprotocols=websocket.requested_subprotocols,
        )
        if refusal is not None:
            log_refusal(refusal, remote, "a WebSocket handshake")
            return _refuse(refusal)
        origin = websocket.headers.get("Origin")
        if not origin_allowed(origin, websocket.headers.get("Host"), settings.allowed_origins):
            log.warning(
                "refused a WebSocket handshake from origin %r", origin[:200] if origin else origin
            )
            return _error(
                403,
                f"origin {origin!r} may not open this WebSocket; allow it with "
                "WIRTHFORGE_ALLOWED_ORIGINS",
            )
        slot = limiter.acquire(remote)
        if not isinstance(slot, Slot):
            log_refusal(slot, remote, "a WebSocket handshake")
            return _refuse(slot)
        try:
            await websocket.accept(subprotocol=select_subprotocol(websocket.requested_subprotocols))
        except BaseException:
            slot.release()
            raise
        quart_websocket, port = fastpath.attach(settings.direct_writes)
        connection = Connection(
            quart_websocket,
            ConnectionProtocol(
                f"c-{uuid.uuid4().hex[:12]}",
                max_message_bytes=settings.max_message_bytes,
                heartbeat_timeout=settings.heartbeat_timeout,
                expect_resume=websocket.args.get("resume") in ("1", "true"),
                rate_limit=rate_limit,
            ),
            remote=websocket.remote_addr or "unknown",
            addresses=_socket_addresses(websocket.scope),
            heartbeats=hub.heartbeats,
            frame_rate=lambda: engine.clock.measured_rate,
            current_state=current_state,
            on_join=join,
            resume_wait=settings.resume_wait,
            max_backlog_bytes=settings.max_backlog_bytes,
            port=port,
        )
        startup = StartupComplete(
            timestamp=time.time_ns() // 1_000_000,
            payload=StartupCompletePayload(
                model=engine.default_model,
                tier=state.tier,
                version=__version__,
                capabilities=state.startup_capabilities,
            ),
        )
        log.info(
            "connection %s opened from %s (%d open)", connection.id, connection.remote, len(hub)
        )
        try:
            await connection.run(encode(startup))
        finally:
            # Cancelled by the server (shutdown) rather than closed: still say goodbye (1001).
            await connection.close_on_cancel()
            hub.remove(connection)
            slot.release()
            log.info(
                "connection %s closed (code %s, %d open)",
                connection.id,
                connection.close_code,
                len(hub),
            )
        return None

    def session_limit(new: int) -> tuple[Response, int, dict[str, str]] | None:
        """A prompt may not take the generations running at once over WIRTHFORGE_MAX_SESSIONS."""
        limit, live = settings.max_sessions, engine.decipher.live_sessions
        if new > limit:
            return _error(
                422,
                f"this prompt asks for {new} models, more than the {limit} sessions this "
                "server runs at once (WIRTHFORGE_MAX_SESSIONS)",
                "models",
            )
        if live + new <= limit:
            return None
        return _error(
            429,
            f"{live} session(s) are running and this prompt would start {new}, over this "
            f"server's limit of {limit} at once (WIRTHFORGE_MAX_SESSIONS); wait for one to "
            "complete or cancel one",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    @app.post("/prompt")
    async def prompt() -> Any:
        body = await request.get_json(force=True, silent=True)
        if body is None:
            return _error(400, 'the body must be JSON: {"prompt": "...", "models": [...]}')
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        extra = sorted(set(body) - {"prompt", "models"})
        if extra:
            return _error(422, f"unexpected field {extra[0]!r}; allowed: prompt, models", extra[0])
        text = body.get("prompt")
        if not isinstance(text, str) or not text.strip():
            return _error(422, "'prompt' must be a non-empty string", "prompt")
        size = len(text.encode("utf-8", "replace"))
        if size > settings.max_prompt_bytes:
            return _error(
                413,
                f"the prompt has {size} bytes (UTF-8), over this server's limit of "
                f"{settings.max_prompt_bytes} (WIRTHFORGE_MAX_PROMPT_BYTES)",
                "prompt",
            )
        models = body.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) for m in models)
        ):
            return _error(422, "'models' must be a list of model ids", "models")
        wanted = [resolve_model(m) for m in models] if models else None
        unknown = [m for m in dict.fromkeys(wanted or ()) if m not in engine.models]
        if unknown:
            return _error(
                422,
                f"unknown model(s) {', '.join(unknown)}; this server runs: "
                f"{', '.join(engine.models)}",
                "models",
            )
        busy = session_limit(len(set(wanted)) if wanted else 1)
        if busy is not None:
            return busy
        sessions = engine.submit(text, wanted)
        log.info(
            "prompt accepted: %d session(s) %s", len(sessions), ", ".join(s.id for s in sessions)
        )
        return jsonify(
            {"sessions": [{"sessionId": s.id, "modelId": s.model_id} for s in sessions]}
        ), 202

    @app.delete("/prompt/<session_id>")
    async def cancel_prompt(session_id: str) -> Any:
        try:
            session = engine.cancel(session_id)
        except UnknownSessionError:
            return _error(404, f"no session {session_id[:64]!r} on this server", "sessionId")
        if session.status != "streaming":
            return _error(409, f"session {session.id} has already ended ({session.status})")
        return jsonify({"sessionId": session.id, "status": "cancelling"}), 202

    @app.get("/models")
    async def models() -> Any:
        return jsonify({"defaultModel": engine.default_model, "models": models_view()})

    @app.get("/health")
    async def health() -> Any:
        statuses = {model_id: entry.status for model_id, entry in engine.models.items()}
        overall = "ok" if all(v == "ready" for v in statuses.values()) else "degraded"
        if http_refusal() is not None:
            return jsonify({"status": overall})  # without the access token: nothing more
        return jsonify(
            {
                "status": overall,
                "version": __version__,
                "uptimeSeconds": round(time.monotonic() - state.started_at, 3),
                "models": statuses,
            }
        )

    @app.get("/status")
    async def status() -> Any:
        clock = engine.clock
        send_path = fastpath.gate(settings.direct_writes)
        now = trio.current_time()
        return jsonify(
            {
                "version": __version__,
                "tier": state.tier,
                "sendPath": send_path.path,
                "sendPathReason": send_path.reason,
                "connections": len(hub),
                "frameRate": round(clock.measured_rate, 2),
                "frameNumber": clock.frame_number,
                "framesPublished": hub.frames_published,
                "framesReplaced": hub.frames_replaced,
                "framesSkipped": clock.skipped,
                "clock": {
                    "rate": clock.rate,
                    "originMonotonicNs": clock.origin_monotonic_ns,
                },
                "overruns": engine.overruns,
                "liveSessions": engine.decipher.live_sessions,
                "analysesShed": engine.analyses_shed,
                "framesAtRest": engine.decipher.rest_frames,
                "models": models_view(),
                "clients": [
                    {
                        "connectionId": c.id,
                        "connectedSeconds": round(now - c.opened_at, 3),
                        "framesReplaced": c.mailbox.frames_replaced,
                        "queued": c.mailbox.queued,
                        "queuedBytes": c.mailbox.queued_bytes,
                        "tooSlow": c.too_slow,
                        "sendPath": c.port.path,
                        **_port_counters(c),
                        "heartbeatRoundTrip": c.protocol.rtt_summary(),
                    }
                    for c in hub
                ],
            }
        )

    return app


def _app_from_environment() -> WirthforgeApp:
    try:
        return create_app()
    except SettingsError as exc:
        print(f"ERROR: wirthforge-trio configuration: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


app = _app_from_environment()
# Imported by Hypercorn's trio worker: wait for its supervisor's shutdown word without polling.
wait_without_polling()
