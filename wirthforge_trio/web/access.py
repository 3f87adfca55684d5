"""The access rules (:mod:`wirthforge_trio.security`) applied to every HTTP request before
its route runs; the WebSocket route applies them at its handshake."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from ..security import Refusal
from .errors import refuse
from .state import server_state

access = Blueprint("access", __name__)


def http_refusal() -> Refusal | None:
    """Why this request may not be answered in full, or None."""
    # The page and its files need no token: they reveal nothing private, and the page must
    # load before its script can read the token from the URL's #fragment.
    path = request.path
    return server_state().access.check(
        authorization=request.headers.get("Authorization"),
        query=request.args.keys(),
        server=request.scope.get("server"),
        token_needed=not (path == "/" or path.startswith("/static/")),
    )


@access.before_app_request
async def check_access() -> Any:
    """The access rules, for every HTTP route but /health (which answers on its own)."""
    if request.path == "/health":
        return None
    refusal = http_refusal()
    if refusal is None:
        return None
    server_state().log_refusal(refusal, request.remote_addr, f"{request.method} {request.path}")
    return refuse(refusal)
