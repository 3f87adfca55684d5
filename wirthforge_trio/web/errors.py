"""Every HTTP error as JSON of one shape, ``{"error": message, "field"?: name}``
(docs/protocol.md, "HTTP")."""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import WebsocketMismatch

from ..security import Refusal

ErrorReply = tuple[Response, int, dict[str, str]]


def json_error(
    status: int,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> ErrorReply:
    """An error answer: ``status`` with ``{"error": message}`` (and the field at fault)."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return jsonify(body), status, headers or {}


def refuse(refusal: Refusal) -> ErrorReply:
    """The answer to a request the access rules or limits refuse."""
    return json_error(refusal.status, refusal.message, headers=dict(refusal.headers))


def http_error(error: HTTPException, method: str, path: str) -> ErrorReply:
    """An HTTP error raised outside the routes (Quart's own 404, 405, 400) as JSON, saying
    what to do instead."""
    status = error.code or 500
    shown = path[:200]
    if isinstance(error, WebsocketMismatch):
        message = (
            f"{shown} is a WebSocket endpoint: connect to it with a WebSocket client "
            "(ws://HOST:PORT/ws), not with plain HTTP"
        )
    elif isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        message = f"{method} is not allowed on {shown}; use {allowed}"
        return json_error(status, message, headers={"Allow": allowed} if allowed else None)
    elif isinstance(error, NotFound):
        message = (
            f"no such path: {shown}; the server answers /, /ws, /prompt, /models, /health "
            "and /status"
        )
    else:
        message = f"{error.name.lower()}: {error.description}" if error.description else error.name
    return json_error(status, message)
