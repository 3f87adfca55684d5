"""The browser page at ``/`` and its files under ``/static/``, with the headers that keep the
page talking to this server only (docs/browser.md)."""

from __future__ import annotations

from typing import Any, Final

from quart import Blueprint, Response, current_app, request

PAGE_SECURITY_HEADERS: Final = {
    # The page loads and talks to this server only ('self' covers its ws:// too).
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

page = Blueprint("page", __name__)


@page.get("/")
async def index() -> Any:
    """The lifeline page; its scripts and the JS client are under /static/."""
    response = await current_app.send_static_file("index.html")
    response.headers.update(PAGE_SECURITY_HEADERS)
    return response


@page.after_app_request
async def static_headers(response: Response) -> Response:
    if request.path.startswith("/static/"):
        response.headers.update(PAGE_SECURITY_HEADERS)
    return response
