"""Every HTTP error as JSON of one shape, ``{"error": message, "field"?: name}``
(docs/protocol.md, "HTTP")."""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify

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
