"""Which browser origins may open the WebSocket (the cross-site WebSocket hijacking guard).

Browsers always send ``Origin`` on a WebSocket handshake and let any page connect anywhere,
so a page on another site could otherwise read the user's token stream. Allowed: no Origin
(a non-browser client), the server's own origin, localhost / 127.0.0.1 / [::1] on any port,
and whatever the operator configured (``*`` for any).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def _normalise(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str | None, host_header: str | None, extra: Iterable[str] = ()) -> bool:
    """Whether a handshake with this ``Origin`` (and ``Host``) may proceed."""
    if origin is None:
        return True
    wanted = _normalise(origin)
    allowed = {_normalise(o) for o in extra}
    if "*" in allowed or wanted in allowed:
        return True
    try:
        parts = urlsplit(wanted)
        hostname = parts.hostname
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or hostname is None:
        return False
    if hostname in LOOPBACK_HOSTS:
        return True
    return host_header is not None and parts.netloc == host_header.strip().lower()
