"""``/ws``: the handshake's checks (access, origin, limits), then one
:class:`~wirthforge_trio.transport.connection.Connection` for the socket's whole life."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from quart import Blueprint, websocket

from ..contract.codec import encode
from ..contract.events import StartupComplete, StartupCompletePayload, wall_ms
from ..protocol.connection import ConnectionProtocol
from ..security import Slot, select_subprotocol
from ..transport import fastpath
from ..transport.connection import Connection
from ..version import __version__
from .errors import ErrorReply, json_error, refuse
from .state import ServerState, server_state

log = logging.getLogger("wirthforge_trio")

socket_route = Blueprint("websocket", __name__)


def _socket_addresses(scope: Any) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(server, client) addresses of a connection's socket, when the ASGI server gives both."""
    server, client = scope.get("server"), scope.get("client")
    if server and client and len(server) == 2 and len(client) == 2:
        return (str(server[0]), int(server[1])), (str(client[0]), int(client[1]))
    return None


def _handshake_refusal(state: ServerState) -> ErrorReply | Slot:
    """The connection slot this handshake may take, or the answer that refuses it."""
    remote = websocket.remote_addr
    refusal = state.access.check(
        authorization=websocket.headers.get("Authorization"),
        query=websocket.args.keys(),
        server=websocket.scope.get("server"),
        subprotocols=websocket.requested_subprotocols,
    )
    if refusal is not None:
        state.log_refusal(refusal, remote, "a WebSocket handshake")
        return refuse(refusal)
    origin = websocket.headers.get("Origin")
    if not state.browser.origin_ok(origin, websocket.scope.get("server")):
        log.warning(
            "refused a WebSocket handshake from origin %r", origin[:200] if origin else origin
        )
        return json_error(
            403,
            f"origin {origin!r} may not open this WebSocket; allow it with "
            "WIRTHFORGE_ALLOWED_ORIGINS",
        )
    slot = state.limiter.acquire(remote)
    if not isinstance(slot, Slot):
        state.log_refusal(slot, remote, "a WebSocket handshake")
        return refuse(slot)
    return slot


def _startup(state: ServerState) -> StartupComplete:
    return StartupComplete(
        timestamp=wall_ms(),
        payload=StartupCompletePayload(
            model=state.engine.default_model,
            tier=state.tier,
            version=__version__,
            capabilities=state.startup_capabilities,
        ),
    )


@socket_route.websocket("/ws")
async def ws() -> Any:
    state = server_state()
    settings, engine, hub = state.settings, state.engine, state.hub
    slot = _handshake_refusal(state)
    if not isinstance(slot, Slot):
        return slot
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
            rate_limit=state.rate_limit,
        ),
        remote=websocket.remote_addr or "unknown",
        addresses=_socket_addresses(websocket.scope),
        heartbeats=hub.heartbeats,
        frame_rate=lambda: engine.clock.measured_rate,
        current_state=state.current_state,
        on_join=state.join,
        # On a broker a resume waits for this process to catch up (BrokerNode.ready_for).
        prepare_join=None if state.broker is None else state.broker.node.ready_for,
        resume_wait=settings.resume_wait,
        max_backlog_bytes=settings.max_backlog_bytes,
        port=port,
    )
    # The count includes this connection (and any still awaiting resume).
    log.info(
        "connection %s opened from %s (%d open)",
        connection.id,
        connection.remote,
        state.limiter.open,
    )
    try:
        await connection.run(encode(_startup(state)))
    finally:
        closed_by_server = connection.close_code
        # Cancelled by the server (shutdown) rather than closed: still say goodbye (1001).
        await connection.close_on_cancel()
        hub.remove(connection)
        slot.release()
        _log_closed(connection, closed_by_server is None, state)
    return None


def _log_closed(connection: Connection, by_client: bool, state: ServerState) -> None:
    if by_client and connection.client_close_code is not None:
        log.info(
            "connection %s closed by the client (code %s, %d open)",
            connection.id,
            connection.client_close_code,
            state.limiter.open,
        )
    else:
        log.info(
            "connection %s closed (code %s, %d open)",
            connection.id,
            connection.close_code,
            state.limiter.open,
        )
