"""Server settings: defaults, ``WIRTHFORGE_*`` environment variables, and their checks.

Every setting can come from the environment so that a plain ``hypercorn -k trio
wirthforge_trio.app:app`` is as configurable as ``wirthforge serve``. A bad value raises
:class:`SettingsError` naming the variable and what it accepts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit, urlunsplit

import attrs

from .contract.events import Tier
from .engine.energy import PROFILES
from .protocol.origin import split_host
from .sources import ModelSpecError, parse_model_spec

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8145
FALLBACK_PORT: Final = 8146
TIERS: Final = ("Low-Tier", "Mid-Tier", "High-Tier")
MIN_TOKEN_LENGTH: Final = 16
TOKEN_PATTERN: Final = re.compile(rf"[A-Za-z0-9._~-]{{{MIN_TOKEN_LENGTH},}}")
"""Characters valid in a URL fragment and in a ``Sec-WebSocket-Protocol`` value alike."""


class SettingsError(ValueError):
    """A setting with a value the server cannot use; the message says how to fix it."""


@attrs.frozen(kw_only=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    models: tuple[str, ...] = ("demo",)
    """Model specs: demo, demo:NAME, ollama:NAME, openai:NAME (the first is the default)."""
    ollama_url: str = "http://127.0.0.1:11434"
    openai_url: str = "http://127.0.0.1:8080/v1"
    openai_api_key: str | None = None
    preload: bool = False
    """Ask runtimes to load their models at start-up instead of at the first prompt."""
    first_token_timeout: float = 120.0
    """Seconds to wait for a model's first token (a runtime may be loading the model)."""
    stall_timeout: float = 30.0
    """Seconds without a token, after the first, before a session is ended as stalled."""
    model_check_interval: float = 10.0
    """Seconds between checks of a model that was unavailable."""
    retention_sessions: int = 64
    """Finished sessions kept with their text for clients that resume."""
    retention_events: int = 1000
    """Rewards, council and error events kept for clients that resume."""
    retention_seconds: float = 900.0
    """Nothing finished longer ago than this is kept for resuming."""
    resume_wait: float = 2.0
    """Seconds a ``/ws?resume=1`` connection waits for the client's ``resume``."""
    tier: Tier | None = None
    """None: detect from the machine."""
    allowed_origins: tuple[str, ...] = ()
    """Extra browser origins allowed to open the WebSocket; ``*`` allows any."""
    allowed_hosts: tuple[str, ...] = ()
    """Extra names the server answers to in ``Host`` (``name`` or ``name:port``; ``*``: any),
    beside loopback, the bind address and the address a request arrived on."""
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0
    max_message_bytes: int = 64 * 1024
    max_backlog_bytes: int = 1024 * 1024
    """Lossless messages one client may leave unread; past it the client is closed (4413)
    and catches up by resuming."""
    send_timeout: float = 10.0
    """Seconds a client's socket may accept no data before the kernel cuts it off
    (TCP_USER_TIMEOUT on the sockets ``wirthforge serve`` listens on)."""
    direct_writes: bool = True
    """Write a message straight to the socket when nothing is queued for the client (no task
    switch); off, every message goes through the connection's writer task and ASGI."""
    token: str | None = attrs.field(default=None, repr=False)
    """Access token every request must carry (``Authorization: Bearer``, or the WebSocket
    subprotocol ``wirthforge.token.<token>``); required to listen beyond loopback."""
    max_message_rate: float = 100.0
    """Client messages per second per connection, sustained; over it they are dropped."""
    max_message_burst: int = 200
    """Client messages a connection may send at once above the sustained rate."""
    rate_limit_close_after: float = 5.0
    """Seconds a connection may stay over the message rate before it is closed (1008)."""
    max_connections: int = 1024
    """Open WebSocket connections in total; more are refused at the handshake (HTTP 503)."""
    max_connections_per_address: int = 32
    """Open WebSocket connections per remote address, loopback exempt (HTTP 503)."""
    max_prompt_bytes: int = 32 * 1024
    """Largest ``POST /prompt`` prompt, in UTF-8 bytes (HTTP 413)."""
    max_sessions: int = 8
    """Generations running at once; a prompt that would exceed it gets HTTP 429."""
    max_tokens: int = 512
    """Most tokens one generation may produce (sent to the runtime as its own bound); a
    prompt's ``maxTokens`` may ask for fewer, never more."""
    profile: str = "default"
    demo_seed: int = 0
    demo_speed: float = 1.0
    log_level: str = "INFO"
    store: str | None = None
    """Where the resume log is kept across restarts: ``sqlite:PATH``; None keeps it in memory
    only (nothing is written to disk)."""
    broker: str | None = attrs.field(default=None, repr=False)
    """The broker that makes several processes one stream: ``redis://[:PASSWORD@]HOST[:PORT]
    [/DB]``. Its password is never logged: use :attr:`broker_redacted`."""

    def __attrs_post_init__(self) -> None:
        if self.store is not None:
            store_path(self.store)
        if self.broker is not None:
            redact_broker_url(self.broker)
        if not self.models:
            raise SettingsError("no model configured: set --model / WIRTHFORGE_MODELS to 'demo'")
        for model in self.models:
            try:
                parse_model_spec(model)
            except ModelSpecError as exc:
                raise SettingsError(f"{exc} (set with --model / WIRTHFORGE_MODELS)") from None
        for name in ("ollama_url", "openai_url"):
            url: str = getattr(self, name)
            if not url.startswith(("http://", "https://")):
                raise SettingsError(
                    f"{name.replace('_', '-')} {url!r} must start with http:// or https:// "
                    f"(set --{name.replace('_', '-')} / WIRTHFORGE_{name.upper()})"
                )
        for name in (
            "first_token_timeout",
            "stall_timeout",
            "model_check_interval",
            "retention_seconds",
            "resume_wait",
            "send_timeout",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(
                    f"{name.replace('_', ' ')} must be a positive number of seconds"
                )
        if self.tier is not None and self.tier not in TIERS:
            raise SettingsError(f"tier {self.tier!r} is not one of {', '.join(TIERS)}")
        if self.profile not in PROFILES:
            raise SettingsError(
                f"energy profile {self.profile!r} is not one of {', '.join(PROFILES)}"
            )
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout:
            raise SettingsError(
                "heartbeat interval must be positive and shorter than the heartbeat timeout "
                f"(got {self.heartbeat_interval:g} s and {self.heartbeat_timeout:g} s)"
            )
        if self.retention_sessions < 0 or self.retention_events < 0:
            raise SettingsError("retention counts must be 0 or more")
        if self.max_backlog_bytes < 1024:
            raise SettingsError("max backlog must be at least 1024 bytes")
        if self.max_message_bytes < 256:
            raise SettingsError("max message size must be at least 256 bytes")
        if self.token is not None:
            check_token(self.token)
        for entry in self.allowed_hosts:
            if entry.strip() != "*":
                try:
                    split_host(entry)
                except ValueError as exc:
                    raise SettingsError(
                        f"allowed host {entry!r} is not a host name: {exc}; give names or "
                        "addresses, with an optional :port, such as wirthforge.lan or "
                        "[fd00::5]:8145 (WIRTHFORGE_ALLOWED_HOSTS, --allowed-host)"
                    ) from None
        if self.max_message_rate <= 0 or self.rate_limit_close_after <= 0:
            raise SettingsError(
                "max message rate and rate limit close-after must be positive numbers "
                "(WIRTHFORGE_MAX_MESSAGE_RATE, WIRTHFORGE_RATE_LIMIT_CLOSE_AFTER)"
            )
        for name in (
            "max_message_burst",
            "max_connections",
            "max_connections_per_address",
            "max_prompt_bytes",
            "max_sessions",
            "max_tokens",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(
                    f"{name.replace('_', ' ')} must be at least 1 (WIRTHFORGE_{name.upper()})"
                )
        if not 0 <= self.port < 65536:
            raise SettingsError(f"port {self.port} is not between 0 (any free port) and 65535")
        if self.demo_speed <= 0:
            raise SettingsError("demo speed must be a positive factor (1 = real time)")
        if self.broker is not None and self.store is not None:
            raise SettingsError(
                "with a broker, Redis is the resume log: unset --store / WIRTHFORGE_STORE "
                "(or the broker, to keep a single process's log in SQLite)"
            )

    @property
    def store_path(self) -> str | None:
        """The SQLite file of ``store``, or None without a store."""
        return None if self.store is None else store_path(self.store)

    @property
    def broker_redacted(self) -> str | None:
        """The broker URL as it may be logged or shown: any password replaced by ``***``."""
        return None if self.broker is None else redact_broker_url(self.broker)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``WIRTHFORGE_*`` variables, then explicit ``overrides``.

        A variable that an override replaces is not read, so a bad one cannot stop a command
        whose flag sets that value."""
        env = os.environ if environ is None else environ
        given = {k: v for k, v in overrides.items() if v is not None}
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            if field.name in given:
                continue
            variable = f"WIRTHFORGE_{field.name.upper()}"
            raw = env.get(variable)
            if raw is None or raw.strip() == "":
                continue
            values[field.name] = _parse(variable, raw.strip(), field.default)
        values.update(given)
        return cls(**values)


def check_token(token: str) -> None:
    """Refuse a token that is short or holds characters a WebSocket subprotocol cannot carry.

    The message never repeats the token (it could end up in a log).
    """
    if not TOKEN_PATTERN.fullmatch(token):
        raise SettingsError(
            f"the access token (--token / WIRTHFORGE_TOKEN) must be at least {MIN_TOKEN_LENGTH} "
            "characters of A-Z a-z 0-9 - _ . ~ (e.g. the output of "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


STORE_SCHEMES: Final = ("sqlite",)
BROKER_SCHEMES: Final = ("redis", "rediss")


def store_path(store: str) -> str:
    """The file of a ``sqlite:PATH`` store; a :class:`SettingsError` for anything else."""
    scheme, _, path = store.partition(":")
    if scheme not in STORE_SCHEMES or not path.strip():
        raise SettingsError(
            f"store {store[:200]!r} is not sqlite:PATH (e.g. sqlite:/var/lib/wirthforge/"
            "resume.db); set --store / WIRTHFORGE_STORE, or leave it unset to keep nothing "
            "on disk"
        )
    return path


def redact_broker_url(url: str) -> str:
    """``url`` with its password (and user) hidden, after checking it is a usable broker
    URL. Errors never repeat the URL's password either."""
    parts = urlsplit(url)
    shown = _without_password(parts)
    if parts.scheme not in BROKER_SCHEMES:
        raise SettingsError(
            f"broker {shown!r} must be redis://HOST[:PORT][/DB] (or rediss://); set "
            "--broker / WIRTHFORGE_BROKER"
        )
    try:
        _ = parts.port  # raises for a port out of range
    except ValueError:
        raise SettingsError(
            f"broker {shown!r} has a port that is not between 0 and 65535 "
            "(--broker / WIRTHFORGE_BROKER)"
        ) from None
    if not parts.hostname:
        raise SettingsError(
            f"broker {shown!r} names no host: redis://HOST[:PORT] (--broker / WIRTHFORGE_BROKER)"
        )
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise SettingsError(
            f"broker {shown!r}: the path must be a database number such as /0 "
            "(--broker / WIRTHFORGE_BROKER)"
        )
    return shown


def _without_password(parts: SplitResult) -> str:
    if parts.password is None and parts.username is None:
        return urlunsplit(parts)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"***@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _parse(variable: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise SettingsError(f"{variable}={raw!r} is not {kind}") from None


ENVIRONMENT_VARIABLES: Final = tuple(f"WIRTHFORGE_{f.name.upper()}" for f in attrs.fields(Settings))


def detect_tier(cpu_count: int | None = None, memory_bytes: int | None = None) -> Tier:
    """WF-TECH-001's hardware tier from cores and memory (no accelerator probing yet).

    Low: fewer than 4 cores or under 8 GiB; High: 8+ cores and 32+ GiB; Mid otherwise.
    """
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    memory = memory_bytes if memory_bytes is not None else _memory_bytes()
    gib = memory / 2**30
    if cores < 4 or gib < 8:
        return "Low-Tier"
    if cores >= 8 and gib >= 32:
        return "High-Tier"
    return "Mid-Tier"


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30
