"""The access rules (:mod:`wirthforge_trio.security`) applied to every HTTP request before
its route runs; the WebSocket route applies them at its handshake."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request, websocket

from ..security import Refusal
from .errors import refuse
from .state import server_state

access = Blueprint("access", __name__)


@access.before_app_request
async def check_browser() -> Any:
    """First, for every request (/health and unknown paths too): the Host must name this
    server (DNS rebinding), and a state-changing method may not come from a foreign Origin
    (cross-site POST); a configured origin's preflight is answered here.
    See docs/decisions.md, "Host allowlist and origins"."""
    state = server_state()
    browser = state.browser
    server, origin = request.scope.get("server"), request.headers.get("Origin")
    refusal = browser.check_host(request.headers.get("Host"), server)
    if refusal is None and request.method == "OPTIONS":
        cors = browser.cors_headers(origin, preflight=True)
        if cors and "Access-Control-Request-Method" in request.headers:
            return Response(b"", status=204, headers=cors)
    elif refusal is None and request.method not in ("GET", "HEAD"):
        refusal = browser.check_origin(origin, server, f"{request.method} {request.path}")
    if refusal is None:
        return None
    state.log_refusal(refusal, request.remote_addr, f"{request.method} {request.path}")
    return refuse(refusal)


@access.before_app_websocket
async def check_host() -> Any:
    """The Host allowlist for every handshake, before the route (its Origin is checked there,
    after the token)."""
    state = server_state()
    refusal = state.browser.check_host(websocket.headers.get("Host"), websocket.scope.get("server"))
    if refusal is None:
        return None
    state.log_refusal(refusal, websocket.remote_addr, "a WebSocket handshake")
    return refuse(refusal)


@access.after_app_request
async def cors_headers(response: Response) -> Response:
    """Access-Control-* only for the configured origins (WIRTHFORGE_ALLOWED_ORIGINS)."""
    response.headers.update(server_state().browser.cors_headers(request.headers.get("Origin")))
    return response


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
