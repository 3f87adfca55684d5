"""Who may talk to the server, and how many at once: the rules, with no Quart in them.

- **Loopback by default.** Without an access token the server answers only on a loopback
  address: ``wirthforge serve`` refuses to bind anything else (:func:`check_exposure`), and
  a request that reaches the app on another local address (a plain ``hypercorn --bind
  0.0.0.0:...``) is refused with 403 (:meth:`AccessPolicy.check`).
- **The access token** travels as ``Authorization: Bearer <token>`` or, from browsers (which
  cannot set headers on a WebSocket), as the subprotocol ``wirthforge.token.<token>``; never
  in the URL. It is compared in constant time and never logged.
- **Own names and origins** (:class:`BrowserPolicy`): a request whose ``Host`` is not one
  of the server's names is refused with 421 before any route (DNS rebinding); a
  state-changing request or a handshake from a foreign ``Origin`` with 403; CORS headers
  only for configured origins.
- **Connection limits** at the WebSocket handshake: in total, and per remote address
  (loopback exempt: every local client shares 127.0.0.1).

The web layer applies these to every request and handshake; docs/security.md describes the model.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

from .config import Settings, SettingsError
from .protocol.origin import ANY, ServerNames, origin_allowed

SUBPROTOCOL: Final = "wirthforge.v1"
"""The WebSocket subprotocol the server selects when a client offers it."""
TOKEN_SUBPROTOCOL_PREFIX: Final = "wirthforge.token."
"""A browser sends its token as the subprotocol ``wirthforge.token.<token>``."""
TOKEN_QUERY_PARAMETERS: Final = frozenset({"token", "access_token"})
RETRY_AFTER_SECONDS: Final = 5
"""``Retry-After`` of a refusal for lack of room (connections, sessions)."""

TOKEN_IN_URL: Final = (
    "do not put the access token in the URL (URLs end up in logs and browser history): send it "
    "as the header 'Authorization: Bearer <token>', or from a browser's WebSocket as the "
    "subprotocol 'wirthforge.token.<token>'; open the page as http://HOST:PORT/#token=<token>"
)
TOKEN_MISSING: Final = (
    "this server requires its access token: send 'Authorization: Bearer <token>' (or, from a "
    "browser's WebSocket, the subprotocol 'wirthforge.token.<token>'; the page takes it as "
    "http://HOST:PORT/#token=<token>)"
)
TOKEN_WRONG: Final = "the access token is wrong (it must equal the server's WIRTHFORGE_TOKEN)"


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) and ``localhost``; anything else is not."""
    if host is None:
        return False
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_exposure(settings: Settings) -> None:
    """``wirthforge serve`` listens beyond loopback only with a token: refuse otherwise."""
    if settings.token is None and not is_loopback(settings.host):
        raise SettingsError(
            f"the bind address {settings.host or '(all addresses)'} is not loopback, so other "
            "machines could connect: set an access token with WIRTHFORGE_TOKEN (or --token), "
            "or bind 127.0.0.1 (--host / WIRTHFORGE_HOST)"
        )


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (``hmac.compare_digest``) of the UTF-8 bytes."""
    return hmac.compare_digest(
        given.encode("utf-8", "replace"), expected.encode("utf-8", "replace")
    )


def presented_token(authorization: str | None, subprotocols: Sequence[str] = ()) -> str | None:
    """The token a request carries: a Bearer ``Authorization`` header, else the subprotocol."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for protocol in subprotocols:
        if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return protocol[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return None


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """The subprotocol to accept: ``wirthforge.v1`` if offered, else the token one (browsers
    fail a handshake that offered subprotocols and got none back), else none."""
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    return next((p for p in offered if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)), None)


@attrs.frozen
class Refusal:
    """An HTTP answer instead of the route: status, a message for the JSON body, headers."""

    status: int
    message: str
    reason: str
    """A few words for the log (never the token)."""
    headers: Mapping[str, str] = attrs.field(factory=dict)


def _local_is_loopback(server: object) -> bool:
    """Whether the ASGI ``server`` (local host, port) is loopback; unknown (Hypercorn gives
    None for a Unix socket) or no port counts as local."""
    if not isinstance(server, (tuple, list)) or len(server) < 2 or server[1] is None:
        return True
    return is_loopback(str(server[0]))


@attrs.frozen
class AccessPolicy:
    """Whether one request or handshake may proceed, from what it carries."""

    token: str | None = attrs.field(default=None, repr=False)

    def check(
        self,
        *,
        authorization: str | None,
        query: Iterable[str],
        server: object,
        subprotocols: Sequence[str] = (),
        token_needed: bool = True,
    ) -> Refusal | None:
        """None to proceed, else the refusal.

        ``server`` is the ASGI scope's (local address, port); ``token_needed=False`` for
        what needs no token (the page and its static files), which the other rules still
        cover.
        """
        if any(key.lower() in TOKEN_QUERY_PARAMETERS for key in query):
            return Refusal(400, TOKEN_IN_URL, "token in the URL")
        if self.token is None:
            if _local_is_loopback(server):
                return None
            assert isinstance(server, (tuple, list))
            return Refusal(
                403,
                f"this server has no access token, so it answers on loopback only, not on "
                f"{server[0]}: set WIRTHFORGE_TOKEN (or --token) to serve other machines",
                "no token configured, request on a non-loopback address",
            )
        if not token_needed:
            return None
        given = presented_token(authorization, subprotocols)
        if given is None:
            return Refusal(
                401,
                TOKEN_MISSING,
                "no access token",
                {"WWW-Authenticate": 'Bearer realm="wirthforge"'},
            )
        if not token_matches(given, self.token):
            return Refusal(
                403,
                TOKEN_WRONG,
                "wrong access token",
                {"WWW-Authenticate": 'Bearer realm="wirthforge", error="invalid_token"'},
            )
        return None


HOST_HINT: Final = (
    "if it is a name of this machine, allow it with WIRTHFORGE_ALLOWED_HOSTS (or wirthforge "
    "serve --allowed-host)"
)
CORS_METHODS: Final = "GET, POST, DELETE"
CORS_HEADERS: Final = "Authorization, Content-Type"
CORS_MAX_AGE: Final = "600"


def _local_address(server: object) -> str | None:
    """The local IP address of the ASGI scope's ``server``, if it has one."""
    if isinstance(server, (tuple, list)) and server and isinstance(server[0], str):
        return server[0]
    return None


@attrs.frozen
class BrowserPolicy:
    """What keeps other sites' pages out: the Host allowlist, the Origin rule and CORS.

    Built once per server from its settings; each check is a few set look-ups.
    """

    names: ServerNames
    origins: tuple[str, ...] = ()
    _cors_origins: frozenset[str] = attrs.field(default=frozenset(), alias="cors_origins")

    @classmethod
    def from_settings(cls, settings: Settings) -> BrowserPolicy:
        try:
            names = ServerNames.build(settings.host, settings.allowed_hosts)
        except ValueError as exc:  # Settings checks the entries; this is for safety
            raise SettingsError(f"WIRTHFORGE_ALLOWED_HOSTS: {exc}") from None
        cors = frozenset(o.strip().rstrip("/").lower() for o in settings.allowed_origins)
        return cls(names, settings.allowed_origins, cors)

    def check_host(self, host_header: str | None, server: object) -> Refusal | None:
        """None when ``Host`` names this server, else the 421 that refuses the request."""
        if self.names.host_allowed(host_header, _local_address(server)):
            return None
        shown = (host_header or "")[:100]
        return Refusal(
            421,
            f"this server does not answer to the name {shown!r} in the Host header (a page "
            f"on another site may be reaching it through DNS rebinding); {HOST_HINT}",
            "Host not allowed",
        )

    def origin_ok(self, origin: str | None, server: object) -> bool:
        return origin_allowed(
            origin, self.origins, own=self.names, local_address=_local_address(server)
        )

    def check_origin(self, origin: str | None, server: object, what: str) -> Refusal | None:
        """None when ``origin`` may do ``what``, else the 403 that refuses it."""
        if self.origin_ok(origin, server):
            return None
        shown = (origin or "")[:200]
        return Refusal(
            403,
            f"origin {shown!r} may not {what}: pages on other sites cannot use this server; "
            "allow it with WIRTHFORGE_ALLOWED_ORIGINS",
            "foreign Origin",
        )

    def cors_headers(self, origin: str | None, *, preflight: bool = False) -> dict[str, str]:
        """CORS headers for a configured origin (none for any other, loopback included)."""
        if origin is None or not self._cors_origins:
            return {}
        wanted = origin.strip().rstrip("/").lower()
        if ANY not in self._cors_origins and wanted not in self._cors_origins:
            return {}
        headers = {"Access-Control-Allow-Origin": origin.strip(), "Vary": "Origin"}
        if preflight:
            headers |= {
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE,
            }
        return headers


class Slot:
    """One admitted WebSocket connection; :meth:`release` (idempotent) gives its room back."""

    def __init__(self, limiter: ConnectionLimiter, key: str | None) -> None:
        self._limiter = limiter
        self._key = key
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self._key)


class ConnectionLimiter:
    """Counts open WebSocket connections, in total and per remote address.

    Loopback addresses are exempt from the per-address limit (every local client comes from
    127.0.0.1: tests, benchmarks, several tabs), not from the total.
    """

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self._by_address: dict[str, int] = {}

    def count(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def acquire(self, address: str | None) -> Slot | Refusal:
        """A slot for a connection from ``address``, or the 503 that refuses it."""
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if self.open >= self.total:
            return Refusal(
                503,
                f"this server already has {self.open} open WebSocket connections, its limit "
                f"(WIRTHFORGE_MAX_CONNECTIONS); try again later",
                "connection limit reached",
                retry,
            )
        key = None if is_loopback(address) else (address or "unknown")
        if key is not None:
            held = self._by_address.get(key, 0)
            if held >= self.per_address:
                return Refusal(
                    503,
                    f"{key} already has {held} open WebSocket connections, the limit per "
                    "address (WIRTHFORGE_MAX_CONNECTIONS_PER_ADDRESS); close some or try "
                    "again later",
                    "per-address connection limit reached",
                    retry,
                )
            self._by_address[key] = held + 1
        self.open += 1
        return Slot(self, key)

    def _release(self, key: str | None) -> None:
        self.open -= 1
        if key is not None:
            left = self._by_address[key] - 1
            if left:
                self._by_address[key] = left
            else:
                del self._by_address[key]


class LogThrottle:
    """At most one log line per kind of event per interval (refusals can come in floods)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, kind: str, now: float) -> int | None:
        """None to stay quiet; else how many of this kind were kept quiet since the last."""
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self.suppressed.pop(kind, 0)
