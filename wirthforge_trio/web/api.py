"""The HTTP API: start and cancel generations, and read the server's models, health and
status (docs/protocol.md, "HTTP")."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import trio
from quart import Blueprint, jsonify, request

from ..engine.runtime import UnknownSessionError
from ..security import RETRY_AFTER_SECONDS
from ..transport import fastpath
from ..transport.connection import Connection
from ..version import __version__
from .access import http_refusal
from .errors import ErrorReply, json_error
from .state import ServerState, server_state

log = logging.getLogger("wirthforge_trio")

api = Blueprint("api", __name__)


def _session_limit(state: ServerState, new: int) -> ErrorReply | None:
    """A prompt may not take the generations running at once over WIRTHFORGE_MAX_SESSIONS."""
    limit, live = state.settings.max_sessions, state.engine.decipher.live_sessions
    if new > limit:
        return json_error(
            422,
            f"this prompt asks for {new} models, more than the {limit} sessions this "
            "server runs at once (WIRTHFORGE_MAX_SESSIONS)",
            "models",
        )
    if live + new <= limit:
        return None
    return json_error(
        429,
        f"{live} session(s) are running and this prompt would start {new}, over this "
        f"server's limit of {limit} at once (WIRTHFORGE_MAX_SESSIONS); wait for one to "
        "complete or cancel one",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _prompt_text(state: ServerState, body: Any) -> str | ErrorReply:
    """The prompt of a request body, or the error that names what is wrong with it."""
    if body is None:
        return json_error(400, 'the body must be JSON: {"prompt": "...", "models": [...]}')
    if not isinstance(body, dict):
        return json_error(400, "the body must be a JSON object")
    extra = sorted(set(body) - {"prompt", "models", "maxTokens"})
    if extra:
        return json_error(
            422, f"unexpected field {extra[0]!r}; allowed: prompt, models, maxTokens", extra[0]
        )
    text = body.get("prompt")
    if not isinstance(text, str) or not text.strip():
        return json_error(422, "'prompt' must be a non-empty string", "prompt")
    size = len(text.encode("utf-8", "replace"))
    limit = state.settings.max_prompt_bytes
    if size > limit:
        return json_error(
            413,
            f"the prompt has {size} bytes (UTF-8), over this server's limit of "
            f"{limit} (WIRTHFORGE_MAX_PROMPT_BYTES)",
            "prompt",
        )
    return text


def _prompt_models(state: ServerState, body: dict[str, Any]) -> list[str] | ErrorReply | None:
    """The model ids a prompt names (None: the default model), or the error."""
    models = body.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) for m in models)
    ):
        return json_error(422, "'models' must be a list of model ids", "models")
    wanted = [state.resolve_model(m) for m in models] if models else None
    engine = state.engine
    unknown = [m for m in dict.fromkeys(wanted or ()) if m not in engine.models]
    if unknown:
        return json_error(
            422,
            f"unknown model(s) {', '.join(unknown)}; this server runs: {', '.join(engine.models)}",
            "models",
        )
    return wanted


def _max_tokens(state: ServerState, body: dict[str, Any]) -> int | ErrorReply | None:
    """The prompt's own bound on each session's tokens (None: the server's), or the error."""
    max_tokens = body.get("maxTokens")
    limit = state.engine.max_tokens
    if max_tokens is not None and (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= limit
    ):
        return json_error(
            422,
            f"'maxTokens' must be a whole number from 1 to {limit}, this server's limit "
            "(--max-tokens / WIRTHFORGE_MAX_TOKENS)",
            "maxTokens",
        )
    return max_tokens


def _broker_full(state: ServerState) -> ErrorReply | None:
    """While Redis is down a process holds the stream's events, up to a limit; past it, a
    new prompt waits for Redis (docs/decisions.md, "Broker")."""
    node = None if state.broker is None else state.broker.node
    if node is None or not node.full:
        return None
    return json_error(
        503,
        f"the broker (Redis) at {node.url.redacted} is unavailable and this server already "
        f"holds {node.waiting} events for it; start Redis again (the server reconnects by "
        "itself), then send the prompt",
        headers={"Retry-After": "2"},
    )


def _unavailable(state: ServerState, model_ids: Sequence[str]) -> ErrorReply | None:
    """A prompt for a model whose runtime is down gets 503 naming the runtime, until a check
    finds it back (docs/decisions.md, "a dead runtime is noticed at once")."""
    engine = state.engine
    for model_id in dict.fromkeys(model_ids):
        entry = engine.models[model_id]
        if entry.status != "unavailable":
            continue
        where = f" at {entry.runtime_url}" if entry.runtime_url else ""
        return json_error(
            503,
            f"model {model_id} is unavailable: its {entry.source.kind} runtime{where} "
            f"does not answer. Start it again; the server checks every "
            f"{engine.check_interval:g} s and accepts prompts as soon as it is back.",
            "models",
            headers={"Retry-After": str(max(1, math.ceil(engine.check_interval)))},
        )
    return None


@api.post("/prompt")
async def prompt() -> Any:
    state = server_state()
    if request.mimetype != "application/json":  # a cross-site "simple" POST cannot send it
        return json_error(
            415,
            "POST /prompt takes JSON: send 'Content-Type: application/json' (this request "
            f"sent {request.mimetype[:100] or 'none'!r})",
            headers={"Accept-Post": "application/json"},
        )
    body = await request.get_json(force=True, silent=True)
    text = _prompt_text(state, body)
    if not isinstance(text, str):
        return text
    wanted = _prompt_models(state, body)
    if isinstance(wanted, tuple):
        return wanted
    max_tokens = _max_tokens(state, body)
    if isinstance(max_tokens, tuple):
        return max_tokens
    refused = (
        _unavailable(state, wanted or [state.engine.default_model])
        or _session_limit(state, len(set(wanted)) if wanted else 1)
        or _broker_full(state)
    )
    if refused is not None:
        return refused
    sessions = state.engine.submit(text, wanted, max_tokens=max_tokens)
    log.info("prompt accepted: %d session(s) %s", len(sessions), ", ".join(s.id for s in sessions))
    return jsonify(
        {"sessions": [{"sessionId": s.id, "modelId": s.model_id} for s in sessions]}
    ), 202


async def _cancel_elsewhere(state: ServerState, session_id: str) -> Any:
    """A session another process runs: the cancel goes to it through the broker."""
    broker = state.broker
    session = None if broker is None else broker.node.log.sessions.get(session_id)
    if broker is None or (session is None and session_id not in broker.node.log.origin_of):
        return json_error(404, f"no session {session_id[:64]!r} on this server", "sessionId")
    if session is not None and session.status != "streaming":
        return json_error(409, f"session {session_id} has already ended ({session.status})")
    if not await broker.node.cancel_remote(session_id):
        return json_error(
            503,
            "the broker is unavailable, so the cancel cannot reach the process running this "
            "session; try again in a few seconds",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return jsonify({"sessionId": session_id, "status": "cancelling"}), 202


@api.delete("/prompt/<session_id>")
async def cancel_prompt(session_id: str) -> Any:
    state = server_state()
    try:
        session = state.engine.cancel(session_id)
    except UnknownSessionError:
        return await _cancel_elsewhere(state, session_id)
    if session.status != "streaming":
        return json_error(409, f"session {session.id} has already ended ({session.status})")
    return jsonify({"sessionId": session.id, "status": "cancelling"}), 202


@api.get("/prompt/<session_id>")
async def prompt_status(session_id: str) -> Any:
    """How a session ended (or that it still streams): the wire's final token_stream says
    only that it is complete, and a page must not call a cancelled one complete."""
    session = server_state().engine.decipher.sessions.get(session_id)
    if session is None:
        return json_error(404, f"no session {session_id[:64]!r} on this server", "sessionId")
    return jsonify(
        {
            "sessionId": session.id,
            "modelId": session.model_id,
            "status": session.status,
            "tokens": len(session.tokens),
        }
    )


@api.get("/models")
async def models() -> Any:
    state = server_state()
    return jsonify({"defaultModel": state.engine.default_model, "models": state.models_view()})


@api.get("/health")
async def health() -> Any:
    state = server_state()
    statuses = {model_id: entry.status for model_id, entry in state.engine.models.items()}
    overall = "ok" if all(v == "ready" for v in statuses.values()) else "degraded"
    broker = None if state.broker is None else state.broker.node
    if broker is not None and broker.status != "up":
        overall = "degraded"
    if http_refusal() is not None:
        return jsonify({"status": overall})  # without the access token: nothing more
    body: dict[str, Any] = {
        "status": overall,
        "version": __version__,
        "uptimeSeconds": round(time.monotonic() - state.started_at, 3),
        "models": statuses,
    }
    if broker is not None:  # the address is in the operator's settings, never shown here
        body["broker"] = {
            "status": broker.status,
            "process": broker.origin,
            "outages": broker.outages,
            "held": broker.waiting,
            "refused": broker.refused,
            "late": broker.late,
        }
    return jsonify(body)


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


@api.get("/status")
async def status() -> Any:
    state = server_state()
    engine, hub = state.engine, state.hub
    clock = engine.clock
    send_path = fastpath.gate(state.settings.direct_writes)
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
            "models": state.models_view(),
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
