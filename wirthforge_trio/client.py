"""A reconnecting, resuming Trio client for the WF-TECH-003 WebSocket protocol.

``async with connect(url) as client`` opens a nursery holding one supervisor task. The
supervisor (re)connects with trio-websocket, answers heartbeats, runs a watchdog, and after
any abnormal end (an error, a close other than 1000, a silent server) reconnects with
jittered exponential backoff. A handshake the server refuses with a 4xx status (a missing or
wrong access token, a wrong path) is not retried, since it would be refused again: the client
closes, and ``last_error`` holds the refusal with the server's explanation. Each connection
is opened with ``?resume=1`` and starts with a ``resume`` message built from what the client
holds, so a reconnect loses nothing and duplicates nothing: the server answers with a
``state_snapshot``, the lossless events that were missed, and per held session exactly the
tokens after the count the client reported.

Events reach the user through a bounded Trio memory channel (``async for event in client``).
A user that stops reading fills it; the socket reader then blocks, trio-websocket stops
reading the socket, and TCP flow control slows the server down (which never delays other
clients). The watchdog only times the wait for the *socket*, never the wait for the user,
so backpressure is not mistaken for a dead server. While blocked, the client cannot answer
heartbeats either: a server that has seen answers before closes such a connection after its
heartbeat timeout (10 s by default, close 4408), and the client then reconnects and resumes.
"""

from __future__ import annotations

import enum
import logging
import random
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, Final

import attrs
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from .contract.codec import EventDecodeError, decode_event, encode_client_message
from .contract.events import (
    CHANNELS,
    EXTENSION_TOPICS,
    ChannelsPayload,
    ClientMessage,
    Event,
    FrameEvent,
    Heartbeat,
    HeartbeatResponse,
    HeartbeatResponsePayload,
    HeldSession,
    Ping,
    Pong,
    Resume,
    ResumePayload,
    StateSnapshot,
    Subscribe,
    TokenStream,
    Unsubscribe,
)

__all__ = [
    "DEFAULT_BACKOFF",
    "TRANSITIONS",
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectionState",
    "IllegalTransition",
    "NotConnected",
    "SessionText",
    "check_transition",
    "connect",
]

log = logging.getLogger("wirthforge_trio.client")

CLOSE_NORMAL: Final = 1000
CLOSE_ABNORMAL: Final = 1006
"""What trio-websocket reports when the TCP connection ended without a close frame."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds a normal close (1000) may take before the socket is simply dropped."""
EVENT_BUFFER: Final = 512
"""Default size of the user's event channel: several seconds of 60 Hz frames."""
OUTGOING_BUFFER: Final = 64
"""Messages waiting for the connection's writer (heartbeat answers, subscriptions, pings)."""
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""A replayed token_stream of a long session can be large; this only guards memory."""
SUBSCRIBABLE: Final = frozenset(CHANNELS + EXTENSION_TOPICS)
DEFAULT_CHANNELS: Final = frozenset(CHANNELS)
"""What the server sends a new connection: the five channels, no extension topic."""
ALWAYS_ON: Final = frozenset({"system"})


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
    """Base class of this module's errors."""


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


@attrs.define(eq=False)
class _Waiter:
    state: ConnectionState
    reached: bool = False
    woken: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class _PendingPing:
    payload: dict[str, Any]
    sent_at: float = 0.0
    rtt_ms: float | None = None
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.frozen
class _Expected:
    """A resumed snapshot's row for a session, to place its next token_stream exactly."""

    held: int | None
    """The count ``resume`` reported (None: a session the client did not hold)."""
    published: int
    """Tokens the server had published at the snapshot: where a replay ends."""
    timestamp: int
    """The snapshot's timestamp, which its replayed token_streams share."""


@attrs.define(eq=False)
class _Link:
    """One WebSocket connection's bookkeeping (a new one per attempt)."""

    ws: WebSocketConnection
    outgoing: trio.MemorySendChannel[str]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    reported: dict[str, int] = attrs.field(factory=dict)
    """Session id -> token count this connection's ``resume`` reported as held."""
    expected: dict[str, _Expected] = attrs.field(factory=dict)
    """What the latest snapshot says about each session's next token_stream."""
    pings: list[_PendingPing] = attrs.field(factory=list)
    aborted: bool = False
    silent: bool = False
    healthy: bool = False
    """The server proved it serves (snapshot or heartbeat): the backoff starts over."""
    close_code: int | None = None
    close_reason: str | None = None

    async def send(self, message: ClientMessage) -> None:
        try:
            await self.outgoing.send(encode_client_message(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise NotConnected("the connection ended before the message could be sent") from None

    def send_nowait(self, message: ClientMessage) -> None:
        """Best effort (heartbeat answers): a full queue means a newer one will follow."""
        try:
            self.outgoing.send_nowait(encode_client_message(message))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _with_resume(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k != "resume"
    ]
    query.append(("resume", "1"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _json_normal(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as it will look after the round trip (tuples become lists...)."""
    result: dict[str, Any] = orjson.loads(orjson.dumps(dict(payload)))
    return result


# --- the client -----------------------------------------------------------------------------


class Client:
    """A connection to a WIRTHFORGE server that survives reconnects; built by :func:`connect`.

    ``async for event in client`` yields every server event (typed, in order), including
    ``startup_complete`` and ``state_snapshot`` of each connection and replayed token
    streams. ``sessions`` holds the text of every session seen, without duplicates across
    reconnects; ``lost_sessions`` the ones a restarted server could not resume.
    """

    def __init__(
        self,
        url: str,
        *,
        channels: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        resume: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        watchdog: float = 2.0,
        extra_headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        max_attempts: int | None = None,
        buffer: int = EVENT_BUFFER,
    ) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("ws", "wss"):
            raise ValueError(f"a WebSocket URL starts with ws:// or wss://, got {url!r}")
        if watchdog <= 0:
            raise ValueError(f"watchdog must be > 0 seconds, got {watchdog}")
        self.url = url
        self.resume = resume
        self.backoff = backoff
        self.watchdog = watchdog
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self._headers = [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
        self._channels: set[str] = set(DEFAULT_CHANNELS)
        self._models_included: set[str] | None = None
        self._models_excluded: set[str] = set()
        if channels is not None:
            wanted = set(channels) | ALWAYS_ON
            self._check_channels(wanted)
            self._channels = wanted
        if models is not None:
            self._models_included = set(models)

        self.state = ConnectionState.DISCONNECTED
        self.transitions: list[tuple[ConnectionState, ConnectionState]] = []
        self.sessions: dict[str, SessionText] = {}
        self.lost_sessions: list[str] = []
        self.server_instance: str | None = None
        self.last_frame: int | None = None
        self.attempts = 0
        """Connection attempts made, the first included."""
        self.reconnects = 0
        """Successful connections after the first one."""
        self.close_code: int | None = None
        """Close code of the last connection that ended (1006: dropped without a close)."""
        self.last_error: BaseException | None = None
        self.undecodable = 0
        """Server messages that were not contract events (skipped, logged)."""

        self._events_send, self._events_recv = trio.open_memory_channel[Event](buffer)
        self._waiters: list[_Waiter] = []
        self._link: _Link | None = None
        self._connected_once = False
        self._close_requested = False
        self._supervisor_scope = trio.CancelScope()
        self._closed = trio.Event()
        self._ping_sequence = 0

    # -- state --------------------------------------------------------------------------------

    def _set_state(self, new: ConnectionState) -> None:
        old = self.state
        check_transition(old, new)
        self.state = new
        self.transitions.append((old, new))
        log.debug("client %s: %s -> %s", self.url, old.name, new.name)
        for waiter in self._waiters:
            if waiter.state is new:
                waiter.reached = True
                waiter.woken.set()
            elif new is ConnectionState.CLOSED:
                waiter.woken.set()

    async def wait_state(self, state: ConnectionState) -> None:
        """Return once the client is in ``state`` (now, or at its next entry into it).

        Transient states are not missed: waiters are woken by the transition itself.
        Raises :class:`ClientClosed` if the client closes while waiting for another state.
        """
        if self.state is state:
            return
        if self.state is ConnectionState.CLOSED:
            raise ClientClosed(f"the client is closed; it will never be {state.name}")
        waiter = _Waiter(state)
        self._waiters.append(waiter)
        try:
            await waiter.woken.wait()
        finally:
            self._waiters.remove(waiter)
        if not waiter.reached:
            raise ClientClosed(f"the client closed while waiting for {state.name}")

    @property
    def channels(self) -> frozenset[str]:
        """The channels and topics this client receives (restored on every reconnect)."""
        return frozenset(self._channels)

    @property
    def models(self) -> frozenset[str] | None:
        """The modelId filter (None: every model, minus any unsubscribed ones)."""
        if self._models_included is None:
            return None
        return frozenset(self._models_included - self._models_excluded)

    # -- user operations ----------------------------------------------------------------------

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._events_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    @staticmethod
    def _check_channels(channels: set[str]) -> None:
        unknown = sorted(channels - SUBSCRIBABLE)
        if unknown:
            raise ValueError(
                f"unknown channel(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(CHANNELS + EXTENSION_TOPICS)}"
            )

    async def subscribe(self, channels: Iterable[str] = (), models: Iterable[str] = ()) -> None:
        """Add channels/topics and modelIds (``"*"``: every model again).

        Remembered and restored on every reconnect. Does not wait for the server's
        ``subscriptions`` reply: it arrives in the event stream (waiting here could
        deadlock a caller that is also the one reading events).
        """
        wanted, model_set = set(channels), set(models)
        if not wanted and not model_set:
            raise ValueError("subscribe: name at least one channel or modelId")
        self._check_channels(wanted)
        self._channels |= wanted
        if "*" in model_set:
            self._models_included, self._models_excluded = None, set()
        elif model_set:
            self._models_excluded -= model_set
            if self._models_included is None:
                self._models_included = set(model_set)
            else:
                self._models_included |= model_set
        await self._send_if_connected(
            Subscribe(
                payload=ChannelsPayload(
                    channels=tuple(sorted(wanted)), models=tuple(sorted(model_set))
                )
            )
        )

    async def unsubscribe(self, channels: Iterable[str] = (), models: Iterable[str] = ()) -> None:
        """Remove channels/topics and modelIds; ``system`` cannot be left."""
        unwanted, model_set = set(channels), set(models)
        if not unwanted and not model_set:
            raise ValueError("unsubscribe: name at least one channel or modelId")
        self._check_channels(unwanted)
        if unwanted & ALWAYS_ON:
            raise ValueError("the 'system' channel carries heartbeats and cannot be left")
        self._channels -= unwanted
        self._models_excluded |= model_set
        if self._models_included is not None:
            self._models_included -= model_set
        await self._send_if_connected(
            Unsubscribe(
                payload=ChannelsPayload(
                    channels=tuple(sorted(unwanted)), models=tuple(sorted(model_set))
                )
            )
        )

    async def _send_if_connected(self, message: ClientMessage) -> None:
        link = self._link
        if link is None:
            return  # restored from the remembered state when the next connection opens
        try:
            await link.send(message)
        except NotConnected:
            pass

    async def ping(
        self, payload: Mapping[str, Any] | None = None, *, seconds: float = 5.0
    ) -> float:
        """Round trip of a ``ping`` to its ``pong``, in milliseconds.

        Raises :class:`NotConnected` without a connection (or if it drops meanwhile) and
        ``trio.TooSlowError`` after ``seconds``. The pong is read by the socket reader, so
        a caller that is also the only reader of events must not let the buffer fill up.
        """
        link = self._link
        if link is None or self.state is not ConnectionState.CONNECTED:
            raise NotConnected(f"cannot ping while {self.state.name}")
        self._ping_sequence += 1
        body = _json_normal(payload if payload is not None else {"ping": self._ping_sequence})
        pending = _PendingPing(body)
        link.pings.append(pending)
        try:
            with trio.fail_after(seconds):
                pending.sent_at = trio.current_time()
                await link.send(Ping(payload=body))
                await pending.done.wait()
        finally:
            if pending in link.pings:
                link.pings.remove(pending)
        if pending.rtt_ms is None:
            raise NotConnected("the connection ended before the pong arrived")
        return pending.rtt_ms

    def abort(self) -> None:
        """Drop the current TCP connection without a close frame (a simulated network cut).

        The client then reconnects as after any failure. A test hook; no-op when idle.
        """
        link = self._link
        if link is not None:
            link.aborted = True
            link.scope.cancel()

    async def aclose(self) -> None:
        """Close normally (1000) and stop for good: state CLOSED, no reconnect."""
        if not self._close_requested:
            self._close_requested = True
            link = self._link
            if link is not None:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await link.ws.aclose(CLOSE_NORMAL, "client closing")
            self._supervisor_scope.cancel()
        await self._closed.wait()

    # -- the supervisor -----------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Connect, serve, and reconnect with backoff until closed (the only state writer)."""
        failures = 0
        try:
            with self._supervisor_scope:
                while True:
                    self._set_state(ConnectionState.CONNECTING)
                    self.attempts += 1
                    link = await self._connect_once()
                    if link is not None and link.healthy:
                        failures = 0
                    if self._close_requested:
                        break
                    if link is not None and link.close_code == CLOSE_NORMAL:
                        log.info("server closed the connection normally (1000): not reconnecting")
                        break
                    if link is None and refusal_is_final(self.last_error):
                        log.info(
                            "%s refused the connection (%s): not retrying",
                            self.url,
                            describe_handshake_error(self.last_error),
                        )
                        break
                    if self.max_attempts is not None and failures + 1 >= self.max_attempts:
                        log.warning(
                            "giving up on %s after %d failed attempt(s): %r",
                            self.url,
                            failures + 1,
                            self.last_error,
                        )
                        break
                    self._set_state(ConnectionState.RECONNECTING)
                    delay = self.backoff.delay(failures)
                    failures += 1
                    log.info("reconnecting to %s in %.2f s", self.url, delay)
                    await trio.sleep(delay)
        finally:
            self._link = None
            if self.state is not ConnectionState.CLOSED:
                self._set_state(ConnectionState.CLOSED)
            self._events_send.close()
            self._closed.set()

    async def _connect_once(self) -> _Link | None:
        """One connection from handshake to end; None if the handshake failed."""
        url = _with_resume(self.url) if self.resume else self.url
        link: _Link | None = None
        # Bounds the way out (close handshake or drop) once the connection is over.
        with trio.CancelScope() as way_out:
            try:
                async with open_websocket_url(
                    url,
                    extra_headers=self._headers or None,
                    connect_timeout=self.connect_timeout,
                    disconnect_timeout=CLOSE_TIMEOUT,
                    max_message_size=MAX_MESSAGE_BYTES,
                ) as ws:
                    outgoing, to_write = trio.open_memory_channel[str](OUTGOING_BUFFER)
                    link = _Link(ws, outgoing)
                    self._link = link
                    if self._connected_once:
                        self.reconnects += 1
                    self._connected_once = True
                    self._set_state(ConnectionState.CONNECTED)
                    try:
                        await self._serve(link, to_write)
                    finally:
                        way_out.deadline = trio.current_time() + 2 * CLOSE_TIMEOUT
                        self._link = None
                        for pending in link.pings:
                            pending.done.set()  # rtt stays None: that ping fails, NotConnected
                        if link.aborted or link.silent:
                            await self._drop_transport(ws)
            except* (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError) as group:
                self.last_error = group.exceptions[0]
                log.info("connection to %s failed: %r", self.url, self.last_error)
        if way_out.cancelled_caught:
            log.warning("closing the connection to %s took too long: abandoned", self.url)
        if link is not None:
            self.close_code = link.close_code
        return link

    @staticmethod
    async def _drop_transport(ws: WebSocketConnection) -> None:
        """Close the TCP stream under the WebSocket: no close frame, no waiting for a peer.

        trio-websocket has no public handle for this, hence its private ``_stream``. Its
        reader task may be parked on its full one-message queue, where it would never see
        the closed stream (and its ``aclose`` does not free it then): taking what it holds
        lets it run into the closed stream and finish.
        """
        await trio.aclose_forcefully(ws._stream)
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                while True:
                    await ws.get_message()
            except ConnectionClosed:
                pass

    async def _serve(self, link: _Link, to_write: trio.MemoryReceiveChannel[str]) -> None:
        with link.scope:
            async with trio.open_nursery() as nursery:
                for message in self._opening_messages(link):
                    link.send_nowait(message)  # first in the queue: resume comes first
                nursery.start_soon(self._writer, link, to_write)
                await self._reader(link)
                nursery.cancel_scope.cancel()
        if link.aborted:
            link.close_code, link.close_reason = CLOSE_ABNORMAL, "aborted by the client"
            log.info("connection to %s aborted by the client", self.url)
        elif link.silent:
            link.close_code, link.close_reason = CLOSE_ABNORMAL, "server silent"
            log.warning(
                "no message from %s for %.1f s: treating the server as dead",
                self.url,
                self.watchdog,
            )

    def _opening_messages(self, link: _Link) -> list[ClientMessage]:
        """``resume`` (or the subscription changes) that restore this client's state."""
        messages: list[ClientMessage] = []
        if self.resume:
            held = [s for s in self.sessions.values() if not s.complete]
            link.reported = {s.session_id: s.count for s in held}
            included = self._models_included
            messages.append(
                Resume(
                    payload=ResumePayload(
                        server_instance=self.server_instance,
                        last_frame=self.last_frame,
                        sessions=tuple(
                            HeldSession(session_id=s.session_id, tokens=s.count) for s in held
                        ),
                        channels=(
                            None
                            if self._channels == DEFAULT_CHANNELS
                            else tuple(
                                c for c in CHANNELS + EXTENSION_TOPICS if c in self._channels
                            )
                        ),
                        models=(
                            None
                            if included is None
                            else tuple(sorted(included - self._models_excluded))
                        ),
                    )
                )
            )
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

    async def _writer(self, link: _Link, to_write: trio.MemoryReceiveChannel[str]) -> None:
        """The only task that sends on the socket, in queue order."""
        async with to_write:
            async for text in to_write:
                try:
                    await link.ws.send_message(text)
                except ConnectionClosed:
                    return  # the reader sees the close too and ends the connection

    async def _reader(self, link: _Link) -> None:
        """Receive, keep the books, hand events to the user; returns when the link ends."""
        ws = link.ws
        while True:
            # The watchdog times only this wait: time blocked on the user is not silence.
            with trio.move_on_after(self.watchdog) as idle:
                try:
                    data = await ws.get_message()
                except ConnectionClosed as exc:
                    reason = exc.reason
                    link.close_code = CLOSE_ABNORMAL if reason is None else reason.code
                    link.close_reason = None if reason is None else reason.reason
                    log.info(
                        "connection to %s closed: %s %s",
                        self.url,
                        link.close_code,
                        link.close_reason or "",
                    )
                    return
            if idle.cancelled_caught:
                link.silent = True
                return
            try:
                event = decode_event(data)
            except EventDecodeError as exc:
                self.undecodable += 1
                log.warning("skipping a server message that is not a contract event: %s", exc)
                continue
            delivered = self._account(link, event)
            if delivered is not None:
                await self._events_send.send(delivered)

    # -- bookkeeping --------------------------------------------------------------------------

    def _account(self, link: _Link, event: Event) -> Event | None:
        """Update what the client holds from one event; the event to deliver (or None)."""
        if isinstance(event, FrameEvent):
            self.last_frame = event.frame_number
        elif isinstance(event, Heartbeat):
            link.healthy = True
            link.send_nowait(
                HeartbeatResponse(payload=HeartbeatResponsePayload(sequence=event.payload.sequence))
            )
        elif isinstance(event, TokenStream):
            return self._account_tokens(link, event)
        elif isinstance(event, StateSnapshot):
            link.healthy = True
            self._account_snapshot(link, event)
        elif isinstance(event, Pong):
            now = trio.current_time()
            for pending in link.pings:
                if pending.payload == event.payload:
                    link.pings.remove(pending)
                    pending.rtt_ms = (now - pending.sent_at) * 1000.0
                    pending.done.set()
                    break
        return event

    def _account_tokens(self, link: _Link, event: TokenStream) -> TokenStream | None:
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
        expected = link.expected.pop(sid, None)
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

    def _account_snapshot(self, link: _Link, event: StateSnapshot) -> None:
        """Learn the server instance; drop sessions that cannot be resumed; note the rest."""
        snap = event.payload
        if snap.server_instance != self.server_instance:
            self.last_frame = None  # frame numbers of another instance mean nothing here
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
        link.expected.clear()
        for info in snap.sessions:
            sid = info.session_id
            if snap.resumed:
                if sid in lost or (sid in self.sessions and sid not in link.reported):
                    continue  # lost, or complete here: nothing more will come
                link.expected[sid] = _Expected(
                    held=link.reported.get(sid), published=info.tokens, timestamp=event.timestamp
                )
            elif sid not in self.sessions and info.status == "streaming":
                # Nothing is replayed without a resume: live tokens continue at this count.
                self.sessions[sid] = SessionText(sid, info.model_id, offset=info.tokens)


# --- entry point ----------------------------------------------------------------------------


def refusal_is_final(error: BaseException | None) -> bool:
    """Whether a failed handshake would fail again the same way: refused with a 4xx status,
    but not 408 (timeout) or 429 (too many requests), which say "later"."""
    return (
        isinstance(error, ConnectionRejected)
        and 400 <= error.status_code < 500
        and error.status_code not in (408, 429)
    )


def describe_handshake_error(error: ConnectionRejected | BaseException | None) -> str:
    """A failed handshake as one line: for a refusal, the status and what the server said
    (its JSON ``error``, else the start of its body); else the error and its cause."""
    if not isinstance(error, ConnectionRejected):
        cause = None if error is None else error.__cause__
        return repr(error) if cause is None else f"{error!r} ({cause})"
    body = (error.body or b"")[:2000]
    try:
        said = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        said = None
    if not isinstance(said, str):
        said = body.decode("utf-8", "replace").strip()[:200]
    return f"HTTP {error.status_code}" + (f": {said}" if said else "")


@asynccontextmanager
async def connect(
    url: str,
    *,
    channels: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    resume: bool = True,
    backoff: Backoff = DEFAULT_BACKOFF,
    watchdog: float = 2.0,
    extra_headers: Mapping[str, str] | None = None,
    connect_timeout: float = 5.0,
    max_attempts: int | None = None,
    buffer: int = EVENT_BUFFER,
) -> AsyncIterator[Client]:
    """A :class:`Client` kept connected to ``url`` until the block ends.

    Yields at once (state DISCONNECTED or CONNECTING); ``await client.wait_state(
    ConnectionState.CONNECTED)`` waits for the link. ``channels``/``models`` are the initial
    subscriptions; ``max_attempts`` bounds consecutive failed attempts (None: forever).
    Leaving the block closes normally (1000) and cancels the client's tasks.
    """
    client = Client(
        url,
        channels=channels,
        models=models,
        resume=resume,
        backoff=backoff,
        watchdog=watchdog,
        extra_headers=extra_headers,
        connect_timeout=connect_timeout,
        max_attempts=max_attempts,
        buffer=buffer,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._supervise)
        try:
            yield client
        finally:
            # Say goodbye even when the block is being cancelled, within a bound.
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT + 1.0):
                await client.aclose()
            nursery.cancel_scope.cancel()
