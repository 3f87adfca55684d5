"""Which ``Host`` names the server answers to, and which browser origins may use it.

Two guards against web pages on other sites (docs/security.md, docs/decisions.md):

- **The Host allowlist** (DNS rebinding). A page on ``http://evil.example:8145`` whose
  name is rebound to 127.0.0.1 talks to this server as its own origin; only its ``Host``
  header betrays it. The server answers only to its own names (:class:`ServerNames`).
- **The Origin check** (cross-site WebSocket hijacking, cross-site POST). Allowed: no
  Origin (a non-browser client), an Origin whose host is a loopback name or one of the
  server's own names from its configuration, and the configured origins (``*`` for any).
  The request's ``Host`` header is never trusted for this: a rebinding page sends a Host
  that matches its Origin.

Both are pure functions of strings, so they run per request and per handshake for a few
dictionary look-ups, never per frame.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

import attrs

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
"""Loopback names a page or a Host may use on any port: a name that is loopback cannot be
rebound by a foreign site (127.0.0.2 and other addresses count as other hosts)."""
WILDCARD_BINDS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})
ANY: Final = "*"


def split_host(value: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` as (lowercase host, port).

    IPv6 comes back without brackets. Raises ValueError for anything else (a bare IPv6
    address, an empty name, a bad port, spaces or other characters no host name has).
    """
    text = value.strip().lower()
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {value!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected {rest!r} after ']' in {value!r}")
            port_text = rest[1:]
        ipaddress.IPv6Address(host.split("%", 1)[0])  # ValueError if not IPv6
    else:
        host, colon, port_text_found = text.partition(":")
        if colon:
            port_text = port_text_found
        if not host or not all(c.isalnum() or c in "-._" for c in host) or not host.isascii():
            raise ValueError(f"{value!r} is not a host name")
    port: int | None = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            raise ValueError(f"bad port in {value!r}")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"port {port} in {value!r} is over 65535")
    return host, port


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address (IPv4-mapped IPv6 as IPv4), or None for a name."""
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class ServerNames:
    """The names this server answers to, from its configuration and the socket only.

    A host is the server's own when it is a loopback name (any port), the address or name
    the server was bound to (any port), a configured name (``name``: any port, ``name:port``:
    that port), or the IP address the connection arrived on (the ASGI scope's ``server``):
    a literal address cannot be rebound, and for a wildcard bind it is exactly one of the
    machine's interface addresses.
    """

    names: frozenset[str] = LOOPBACK_HOSTS
    """Hosts allowed on any port (lowercase, IPv6 without brackets)."""
    host_ports: frozenset[tuple[str, int]] = frozenset()
    """Hosts allowed on one port only."""
    any_host: bool = False
    """``*`` configured: the Host check is off (a proxy in front checks it)."""

    @classmethod
    def build(cls, bound_host: str, configured: Iterable[str] = ()) -> ServerNames:
        """From the bind address and the configured entries (ValueError for a bad entry)."""
        names = set(LOOPBACK_HOSTS)
        if bound_host.strip().lower() not in WILDCARD_BINDS:
            bound = bound_host.strip().lower().strip("[]")
            names.add(bound)
        host_ports: set[tuple[str, int]] = set()
        any_host = False
        for entry in configured:
            if entry.strip() == ANY:
                any_host = True
                continue
            host, port = split_host(entry)
            if port is None:
                names.add(host)
            else:
                host_ports.add((host, port))
        return cls(frozenset(names), frozenset(host_ports), any_host)

    def includes(self, host: str, port: int | None, local_address: str | None) -> bool:
        """Whether (``host``, ``port``), as :func:`split_host` gives them, is this server."""
        if host in self.names or (port is not None and (host, port) in self.host_ports):
            return True
        if local_address is None:
            return False
        address = _address(host)
        return address is not None and address == _address(local_address)

    def host_allowed(self, host_header: str | None, local_address: str | None) -> bool:
        """Whether a request with this ``Host`` header may proceed.

        No Host at all (or an empty one: Quart's stand-in for HTTP/1.0 without Host) comes
        from no browser, since browsers always send one, so it cannot be a rebinding page.
        """
        if self.any_host or not host_header:
            return True
        try:
            host, port = split_host(host_header)
        except ValueError:
            return False
        return self.includes(host, port, local_address)


def _normalise(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(
    origin: str | None,
    extra: Iterable[str] = (),
    *,
    own: ServerNames | None = None,
    local_address: str | None = None,
) -> bool:
    """Whether a browser request from ``origin`` may proceed (never reads ``Host``).

    ``extra`` is the configured origins list (``*`` for any); ``own`` the server's names,
    whose pages are its own (by default the loopback names only); ``local_address`` the
    address the connection arrived on.
    """
    if origin is None:
        return True
    wanted = _normalise(origin)
    allowed = {_normalise(o) for o in extra}
    if ANY in allowed or wanted in allowed:
        return True
    try:
        parts = urlsplit(wanted)
        hostname = parts.hostname
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or hostname is None:
        return False
    if hostname in LOOPBACK_HOSTS:
        return True
    return own is not None and own.includes(hostname, port, local_address)
