"""Sans-IO core of the Python client: what the Trio :class:`~wirthforge_trio.client.Client` does
next, decided without sockets, tasks or timers.

It mirrors :mod:`wirthforge_trio.protocol.connection` on the server side. The shell tells it
what happened (an attempt starts, the handshake is done, a text arrived, the connection ended
with this :class:`Failure`, the user asked to close) and it answers with what to do: the URL
to open, the messages to send, the event to hand the user, and whether and when to reconnect
(:class:`Retry` or :class:`Stop`). It holds the connection state machine (:data:`TRANSITIONS`),
the resume bookkeeping (sessions held, tokens counted, the ``resume`` message) and the
subscriptions, so all of it can be tested without a network (docs/decisions.md, "Reconnect
without loss: resume and snapshot").
"""

from __future__ import annotations

import enum
import logging
import random
import urllib.parse
from collections import deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final, Literal

import attrs

from .contract.close_codes import CLOSE_ABNORMAL, CLOSE_NORMAL
from .contract.codec import EventDecodeError, decode_event
from .contract.events import (
    CHANNELS,
    EXTENSION_TOPICS,
    ChannelsPayload,
    ClientMessage,
    ErrorEvent,
    Event,
    FrameEvent,
    Heartbeat,
    HeartbeatResponse,
    HeartbeatResponsePayload,
    HeldSession,
    Resume,
    ResumePayload,
    RewardEvent,
    StateSnapshot,
    Subscribe,
    TokenStream,
    Unsubscribe,
)

__all__ = [
    "DEFAULT_BACKOFF",
    "TRANSITIONS",
    "Backoff",
    "ClientClosed",
    "ClientCore",
    "ClientError",
    "ConnectionState",
    "Failure",
    "IllegalTransition",
    "NotConnected",
    "Received",
    "Retry",
    "SessionText",
    "Stop",
    "check_transition",
    "status_is_final",
    "with_resume",
]

log = logging.getLogger("wirthforge_trio.client")

SUBSCRIBABLE: Final = frozenset(CHANNELS + EXTENSION_TOPICS)
DEFAULT_CHANNELS: Final = frozenset(CHANNELS)
"""What the server sends a new connection: the five channels, no extension topic."""
ALWAYS_ON: Final = frozenset({"system"})
AFTER_FRAME_KEPT: Final = 256
"""Reward and error events remembered after the last frame, to drop their replay."""


# --- connection state machine ---------------------------------------------------------------


class ConnectionState(enum.Enum):
    """Where the client is in its connection life; see :data:`TRANSITIONS`."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


_S = ConnectionState
TRANSITIONS: Final[Mapping[ConnectionState, frozenset[ConnectionState]]] = MappingProxyType(
    {
        _S.DISCONNECTED: frozenset({_S.CONNECTING, _S.CLOSED}),
        # A failed handshake goes straight to RECONNECTING (waiting out the backoff).
        _S.CONNECTING: frozenset({_S.CONNECTED, _S.RECONNECTING, _S.CLOSED}),
        _S.CONNECTED: frozenset({_S.RECONNECTING, _S.CLOSED}),
        _S.RECONNECTING: frozenset({_S.CONNECTING, _S.CLOSED}),
        _S.CLOSED: frozenset(),  # final
    }
)
"""Every legal transition: the one place that says how a connection may move."""


class ClientError(Exception):
    """Base class of the client's errors."""


class IllegalTransition(ClientError, RuntimeError):
    """A transition :data:`TRANSITIONS` forbids: always a bug in the client."""


class NotConnected(ClientError):
    """The operation needs a live connection and there is none (it may come back)."""


class ClientClosed(ClientError):
    """The client is closed for good; waiting for another state is pointless."""


def check_transition(old: ConnectionState, new: ConnectionState) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"illegal connection transition {old.name} -> {new.name}")


# --- backoff --------------------------------------------------------------------------------


@attrs.frozen
class Backoff:
    """Reconnect delays: exponential growth with "full jitter".

    ``delay(n) = uniform(0, min(cap, base * factor**n))`` for the n-th consecutive retry
    (n = 0 first). Bounds: ``0 <= delay(n) <= min(cap, base * factor**n)``, so the first
    retry waits at most ``base`` and no retry ever waits more than ``cap``. Full jitter
    spreads clients that lost the same server, so they do not all come back at once.
    """

    base: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))
    cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0.0))
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)

    def ceiling(self, attempt: int) -> float:
        """The largest delay retry ``attempt`` may get."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        try:
            return min(self.cap, self.base * self.factor**attempt)
        except OverflowError:  # factor**attempt beyond float range: long past the cap
            return self.cap

    def delay(self, attempt: int) -> float:
        """A random delay in ``[0, ceiling(attempt)]``."""
        return self.rng.uniform(0.0, self.ceiling(attempt))


DEFAULT_BACKOFF: Final = Backoff()


# --- what ended a connection, and what to do next -------------------------------------------


FailureKind = Literal["refused", "rejected", "timeout", "closed", "silent", "aborted", "error"]


@attrs.frozen
class Failure:
    """Why an attempt or a connection ended, as the shell saw it.

    ``refused``: nothing accepted the TCP connection; ``rejected``: the handshake got an
    HTTP ``code``; ``timeout``: no handshake within ``seconds``; ``closed``: the connection
    ended with close ``code`` (1006: dropped without a close frame); ``silent``: no message
    for ``seconds``; ``aborted``: :meth:`Client.abort`; ``error``: anything else.
    """

    kind: FailureKind
    code: int | None = None
    detail: str = ""
    seconds: float | None = None

    @property
    def connected(self) -> bool:
        """Whether a handshake had completed (so the failure ended a live connection)."""
        return self.kind in ("closed", "silent", "aborted")

    @property
    def close_code(self) -> int | None:
        """The close code this failure stands for; None for a handshake that failed."""
        if self.kind == "closed":
            return self.code
        return CLOSE_ABNORMAL if self.connected else None

    def describe(self) -> str:
        """One short line for a person: what happened, with the code or the time."""
        said = f": {self.detail}" if self.detail else ""
        match self.kind:
            case "refused":
                return f"connection refused{said}"
            case "rejected":
                return f"handshake refused with HTTP {self.code}{said}"
            case "timeout":
                return f"no handshake within {self.seconds or 0:.1f} s"
            case "closed" if self.code == CLOSE_ABNORMAL:
                return "connection dropped without a close frame (1006)"
            case "closed":
                return f"closed with code {self.code}{said}"
            case "silent":
                return f"timeout: no message for {self.seconds or 0:.1f} s"
            case "aborted":
                return "connection aborted by the client"
        return f"connection failed{said}"


def status_is_final(status: int) -> bool:
    """Whether a handshake refused with HTTP ``status`` would be refused again: a 4xx, but
    not 408 (timeout) or 429 (too many requests), which say "later"."""
    return 400 <= status < 500 and status not in (408, 429)


@attrs.frozen
class Retry:
    """Reconnect after ``delay`` seconds; ``attempt`` counts consecutive failures (0 first)."""

    delay: float
    attempt: int
    failure: Failure


@attrs.frozen
class Stop:
    """Do not reconnect: the client closes for good, for ``reason``."""

    reason: str
    failure: Failure | None = None


@attrs.frozen
class Received:
    """What one server message means: the event for the user (None: nothing new in it) and
    the messages to send back (heartbeat answers)."""

    event: Event | None
    replies: tuple[ClientMessage, ...] = ()


# --- what the client holds ------------------------------------------------------------------


@attrs.define
class SessionText:
    """One generation session as received: what ``resume`` reports and restores."""

    session_id: str
    model_id: str | None = None
    tokens: list[str] = attrs.field(factory=list)
    complete: bool = False
    offset: int = 0
    """Tokens of the session sent before this client joined (learned from a snapshot)."""

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def count(self) -> int:
        """Index of the next token in the whole session: what the server is told we hold."""
        return self.offset + len(self.tokens)


@attrs.frozen
class _Expected:
    """A resumed snapshot's row for a session, to place its next token_stream exactly."""

    held: int | None
    """The count ``resume`` reported (None: a session the client did not hold)."""
    published: int
    """Tokens the server had published at the snapshot: where a replay ends."""
    timestamp: int
    """The snapshot's timestamp, which its replayed token_streams share."""


@attrs.define
class _Books:
    """One connection's bookkeeping (a new one per connection)."""

    reported: dict[str, int] = attrs.field(factory=dict)
    """Session id -> token count this connection's ``resume`` reported as held."""
    expected: dict[str, _Expected] = attrs.field(factory=dict)
    """What the latest snapshot says about each session's next token_stream."""
    healthy: bool = False
    """The server proved it serves (snapshot or heartbeat): the backoff starts over."""


def with_resume(url: str) -> str:
    """``url`` with ``resume=1`` in its query (once, whatever was there)."""
    parts = urllib.parse.urlsplit(url)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k != "resume"
    ]
    query.append(("resume", "1"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def check_channels(channels: set[str]) -> None:
    """Raise ``ValueError`` naming any channel or topic the server does not know."""
    unknown = sorted(channels - SUBSCRIBABLE)
    if unknown:
        raise ValueError(
            f"unknown channel(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(CHANNELS + EXTENSION_TOPICS)}"
        )


# --- the core -------------------------------------------------------------------------------


class ClientCore:
    """The client's decisions and books; the Trio shell does the I/O and the waiting.

    The shell calls, per attempt: :meth:`begin_attempt` (the URL to open), then either
    :meth:`handshake_done` (the opening messages to send first) and :meth:`receive` for each
    text, or nothing; then :meth:`ended` with the :class:`Failure` (a :class:`Retry` or a
    :class:`Stop`); finally :meth:`finish`. Only these move :attr:`state`.
    """

    def __init__(
        self,
        url: str,
        *,
        channels: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        resume: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        max_attempts: int | None = None,
    ) -> None:
        self.url = url
        self.resume = resume
        self.backoff = backoff
        self.max_attempts = max_attempts
        self._channels: set[str] = set(DEFAULT_CHANNELS)
        self._models_included: set[str] | None = None
        self._models_excluded: set[str] = set()
        if channels is not None:
            wanted = set(channels) | ALWAYS_ON
            check_channels(wanted)
            self._channels = wanted
        if models is not None:
            self._models_included = set(models)

        self.state = ConnectionState.DISCONNECTED
        self.transitions: list[tuple[ConnectionState, ConnectionState]] = []
        self.sessions: dict[str, SessionText] = {}
        self.lost_sessions: list[str] = []
        self.server_instance: str | None = None
        self.last_frame: int | None = None
        self._after_frame: deque[str] = deque(maxlen=AFTER_FRAME_KEPT)
        """The reward and error events received since the last frame, as sent: a resume
        replays them when the connection broke before the next frame."""
        self._replaying = False
        """Between a resumed snapshot and the first live frame."""
        self.replays_dropped = 0
        """Replayed events dropped because they had come before (protocol.md, resume)."""
        self.attempts = 0
        self.reconnects = 0
        self.close_code: int | None = None
        self.undecodable = 0
        self.failure: Failure | None = None
        """What ended the latest attempt or connection."""
        self.retry: Retry | None = None
        """The latest decision to reconnect (its delay, its cause)."""
        self._failures = 0
        """Consecutive attempts that failed without the server proving it serves."""
        self._books: _Books | None = None
        self._connected_once = False
        self._close_requested = False

    # -- state --------------------------------------------------------------------------------

    def _move(self, new: ConnectionState) -> None:
        old = self.state
        check_transition(old, new)
        self.state = new
        self.transitions.append((old, new))
        log.debug("client %s: %s -> %s", self.url, old.name, new.name)

    @property
    def connected(self) -> bool:
        """A handshake completed and the connection has not ended yet."""
        return self._books is not None

    @property
    def close_requested(self) -> bool:
        return self._close_requested

    # -- the connection life --------------------------------------------------------------------

    def begin_attempt(self) -> str:
        """A new attempt starts: the URL to open (with ``resume=1`` when resuming)."""
        self._move(ConnectionState.CONNECTING)
        self.attempts += 1
        return with_resume(self.url) if self.resume else self.url

    def handshake_done(self) -> list[ClientMessage]:
        """The server accepted: the messages to send before anything else, in order."""
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        self._move(ConnectionState.CONNECTED)
        self._books = _Books()
        return self._opening_messages(self._books)

    def request_close(self) -> bool:
        """The user closes; True the first time (the shell then says goodbye, once)."""
        first = not self._close_requested
        self._close_requested = True
        return first

    def ended(self, failure: Failure) -> Retry | Stop:
        """The attempt or connection is over: reconnect after a delay, or stop for good."""
        books, self._books = self._books, None
        self.failure = failure
        if failure.connected:
            self.close_code = failure.close_code
        if books is not None and books.healthy:
            self._failures = 0
        stop = self._stop_reason(failure)
        if stop is not None:
            return Stop(stop, failure)
        self._move(ConnectionState.RECONNECTING)
        retry = Retry(self.backoff.delay(self._failures), self._failures, failure)
        self._failures += 1
        self.retry = retry
        log.info("reconnecting to %s in %.2f s (%s)", self.url, retry.delay, failure.describe())
        return retry

    def _stop_reason(self, failure: Failure) -> str | None:
        if self._close_requested:
            return "closed by the client"
        if failure.kind == "closed" and failure.code == CLOSE_NORMAL:
            log.info("server closed the connection normally (1000): not reconnecting")
            return "the server closed normally (1000)"
        if failure.kind == "rejected" and failure.code is not None:
            if status_is_final(failure.code):
                log.info("%s refused the connection (%s): not retrying", self.url, failure.detail)
                return f"refused with HTTP {failure.code}: retrying cannot change it"
        if self.max_attempts is not None and self._failures + 1 >= self.max_attempts:
            log.warning(
                "giving up on %s after %d failed attempt(s): %s",
                self.url,
                self._failures + 1,
                failure.describe(),
            )
            return f"gave up after {self._failures + 1} failed attempt(s)"
        return None

    def finish(self) -> None:
        """The shell stopped for good: the client is CLOSED."""
        self._books = None
        if self.state is not ConnectionState.CLOSED:
            self._move(ConnectionState.CLOSED)

    # -- subscriptions --------------------------------------------------------------------------

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    @property
    def models(self) -> frozenset[str] | None:
        if self._models_included is None:
            return None
        return frozenset(self._models_included - self._models_excluded)

    def subscribe(self, channels: Iterable[str], models: Iterable[str]) -> ClientMessage | None:
        """Remember the additions; the message to send now (None: not connected)."""
        wanted, model_set = set(channels), set(models)
        if not wanted and not model_set:
            raise ValueError("subscribe: name at least one channel or modelId")
        check_channels(wanted)
        self._channels |= wanted
        if "*" in model_set:
            self._models_included, self._models_excluded = None, set()
        elif model_set:
            self._models_excluded -= model_set
            if self._models_included is None:
                self._models_included = set(model_set)
            else:
                self._models_included |= model_set
        payload = ChannelsPayload(channels=tuple(sorted(wanted)), models=tuple(sorted(model_set)))
        return Subscribe(payload=payload) if self.connected else None

    def unsubscribe(self, channels: Iterable[str], models: Iterable[str]) -> ClientMessage | None:
        """Remember the removals; the message to send now (None: not connected)."""
        unwanted, model_set = set(channels), set(models)
        if not unwanted and not model_set:
            raise ValueError("unsubscribe: name at least one channel or modelId")
        check_channels(unwanted)
        if unwanted & ALWAYS_ON:
            raise ValueError("the 'system' channel carries heartbeats and cannot be left")
        self._channels -= unwanted
        self._models_excluded |= model_set
        if self._models_included is not None:
            self._models_included -= model_set
        payload = ChannelsPayload(channels=tuple(sorted(unwanted)), models=tuple(sorted(model_set)))
        return Unsubscribe(payload=payload) if self.connected else None

    def _opening_messages(self, books: _Books) -> list[ClientMessage]:
        """``resume`` (or the subscription changes) that restore this client's state."""
        messages: list[ClientMessage] = []
        if self.resume:
            messages.append(self._resume_message(books))
        else:
            dropped = DEFAULT_CHANNELS - self._channels
            added = self._channels - DEFAULT_CHANNELS
            if dropped:
                messages.append(
                    Unsubscribe(payload=ChannelsPayload(channels=tuple(sorted(dropped))))
                )
            if added:
                messages.append(Subscribe(payload=ChannelsPayload(channels=tuple(sorted(added)))))
            if self._models_included:
                messages.append(
                    Subscribe(payload=ChannelsPayload(models=tuple(sorted(self._models_included))))
                )
        if self._models_included is None and self._models_excluded:
            # "every model but these" has no resume field: restore it with an unsubscribe.
            messages.append(
                Unsubscribe(payload=ChannelsPayload(models=tuple(sorted(self._models_excluded))))
            )
        return messages

    def _resume_message(self, books: _Books) -> Resume:
        held = [s for s in self.sessions.values() if not s.complete]
        books.reported = {s.session_id: s.count for s in held}
        included = self._models_included
        channels = None
        if self._channels != DEFAULT_CHANNELS:
            channels = tuple(c for c in CHANNELS + EXTENSION_TOPICS if c in self._channels)
        models = None if included is None else tuple(sorted(included - self._models_excluded))
        return Resume(
            payload=ResumePayload(
                server_instance=self.server_instance,
                last_frame=self.last_frame,
                sessions=tuple(HeldSession(session_id=s.session_id, tokens=s.count) for s in held),
                channels=channels,
                models=models,
            )
        )

    # -- what arrives ---------------------------------------------------------------------------

    def receive(self, data: str | bytes) -> Received:
        """One server message: update the books; what to deliver and what to answer."""
        books = self._books
        if books is None:
            raise NotConnected("a message arrived outside a connection")
        try:
            event = decode_event(data)
        except EventDecodeError as exc:
            self.undecodable += 1
            log.warning("skipping a server message that is not a contract event: %s", exc)
            return Received(None)
        if isinstance(event, FrameEvent):
            self.last_frame = event.frame_number
            self._after_frame.clear()
            self._replaying = False
        elif isinstance(event, (ErrorEvent, RewardEvent)):
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            if self._replaying and text in self._after_frame:
                self._after_frame.remove(text)
                self.replays_dropped += 1
                return Received(None)
            self._after_frame.append(text)
        elif isinstance(event, Heartbeat):
            books.healthy = True
            answer = HeartbeatResponse(
                payload=HeartbeatResponsePayload(sequence=event.payload.sequence)
            )
            return Received(event, (answer,))
        elif isinstance(event, TokenStream):
            return Received(self._account_tokens(books, event))
        elif isinstance(event, StateSnapshot):
            books.healthy = True
            self._account_snapshot(books, event)
        return Received(event)

    def _account_tokens(self, books: _Books, event: TokenStream) -> TokenStream | None:
        """Append a token_stream's tokens exactly once, wherever they start in the session.

        A batch continues at the client's count, except the first one after a resumed
        snapshot: a replay ends at the snapshot's count (so it starts at ``published -
        len(tokens)``), which may overlap what the client holds (trimmed) and, for a session
        the client did not hold, covers the whole session. The delivered event carries only
        the new tokens.
        """
        payload = event.payload
        sid = payload.session_id
        tokens = payload.tokens
        expected = books.expected.pop(sid, None)
        session = self.sessions.get(sid)
        if session is None:
            offset = 0
            if expected is not None:
                is_replay = (
                    expected.published > 0
                    and len(tokens) == expected.published
                    and event.timestamp == expected.timestamp
                )
                offset = 0 if is_replay else expected.published
            session = self.sessions[sid] = SessionText(sid, payload.model_id, offset=offset)
        elif session.complete:
            log.warning("dropping a token_stream for session %s, already complete", sid)
            return None
        else:
            have = session.count
            start = have
            if expected is not None and expected.held is not None:
                if expected.published > expected.held:  # tokens were missed: this is the replay
                    start = expected.published - len(tokens)
            if start > have:
                log.warning("session %s: %d token(s) missing before this batch", sid, start - have)
            overlap = max(0, have - start)
            if overlap:
                log.warning("session %s: trimming %d token(s) already held", sid, overlap)
                tokens = tokens[overlap:]
                event = attrs.evolve(event, payload=attrs.evolve(payload, tokens=tokens))
        session.model_id = session.model_id or payload.model_id
        session.tokens.extend(tokens)
        session.complete = payload.is_complete
        if not tokens and not payload.is_complete:
            return None
        return event

    def _account_snapshot(self, books: _Books, event: StateSnapshot) -> None:
        """Learn the server instance; drop sessions that cannot be resumed; note the rest."""
        snap = event.payload
        if snap.server_instance != self.server_instance:
            self.last_frame = None  # frame numbers of another instance mean nothing here
        if not snap.resumed:
            self._after_frame.clear()  # nothing will be replayed
        self._replaying = snap.resumed
        self.server_instance = snap.server_instance
        known = {s.session_id: s for s in snap.sessions}
        lost: set[str] = set()
        for sid, held in list(self.sessions.items()):
            if held.complete:
                continue  # nothing of it is missing, whatever the server remembers
            info = known.get(sid)
            if info is not None and info.resumable and snap.resumed:
                continue
            del self.sessions[sid]
            lost.add(sid)
            self.lost_sessions.append(sid)
            log.warning(
                "session %s cannot be resumed (%s): dropped the %d token(s) held",
                sid,
                (info.reason if info is not None else None) or snap.reason or "unknown",
                len(held.tokens),
            )
        books.expected.clear()
        for info in snap.sessions:
            sid = info.session_id
            if snap.resumed:
                if sid in lost or (sid in self.sessions and sid not in books.reported):
                    continue  # lost, or complete here: nothing more will come
                books.expected[sid] = _Expected(
                    held=books.reported.get(sid), published=info.tokens, timestamp=event.timestamp
                )
            elif sid not in self.sessions and info.status == "streaming":
                # Nothing is replayed without a resume: live tokens continue at this count.
                self.sessions[sid] = SessionText(sid, info.model_id, offset=info.tokens)
