"""The broker's address: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, checked at start-up and
shown only with its password hidden (docs/decisions.md, "Broker")."""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, urlsplit

import attrs

SCHEMES: Final = ("redis", "rediss")
DEFAULT_PORT: Final = 6379


class BrokerURLError(ValueError):
    """A broker address the server cannot use; the message never repeats the password."""


@attrs.frozen
class BrokerURL:
    """A parsed Redis URL. ``str()`` and ``repr()`` hide the password; :attr:`url` has it."""

    url: str = attrs.field(repr=False)
    host: str
    port: int
    db: int
    has_password: bool

    @property
    def redacted(self) -> str:
        """The address as it may be logged: ``redis://***@host:port/db`` (user and password
        hidden alike, as ``Settings.broker_redacted`` shows it)."""
        parts = urlsplit(self.url)
        auth = "***@" if parts.username or self.has_password else ""
        return f"{parts.scheme}://{auth}{_hostport(parts)}/{self.db}"

    def __str__(self) -> str:
        return self.redacted


def _hostport(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or DEFAULT_PORT}"


def parse_broker_url(url: str) -> BrokerURL:
    """Check ``url`` and split it; a :class:`BrokerURLError` names what to fix."""
    hint = "set WIRTHFORGE_BROKER / --broker to redis://HOST:PORT (e.g. redis://127.0.0.1:6379)"
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise BrokerURLError(f"the broker address is not a valid URL; {hint}") from None
    if parts.scheme not in SCHEMES:
        raise BrokerURLError(
            f"the broker address must start with redis:// or rediss:// "
            f"(got {parts.scheme or 'no scheme'!r}); {hint}"
        )
    if not parts.hostname:
        raise BrokerURLError(f"the broker address names no host; {hint}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise BrokerURLError(f"the broker address's database must be a number (/0); {hint}")
    if parts.query or parts.fragment:
        raise BrokerURLError(f"the broker address takes no ?query or #fragment; {hint}")
    return BrokerURL(
        url=url.strip(),
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        has_password=parts.password is not None,
    )
