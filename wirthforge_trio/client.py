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
tokens after the count the client reported. What to send, what to deliver and whether to
reconnect is decided by the sans-IO :class:`~wirthforge_trio.client_core.ClientCore`; this
module does the I/O and the waiting around it.

Events reach the user through a bounded Trio memory channel (``async for event in client``).
A user that stops reading fills it; the socket reader then blocks, trio-websocket stops
reading the socket, and TCP flow control slows the server down (which never delays other
clients). The watchdog only times the wait for the *socket*, never the wait for the user,
so backpressure is not mistaken for a dead server. While blocked, the client cannot answer
heartbeats either: a server that has seen answers before closes such a connection after its
heartbeat timeout (10 s by default, close 4408), and the client then reconnects and resumes.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .client_core import (
    DEFAULT_BACKOFF,
    TRANSITIONS,
    Backoff,
    ClientClosed,
    ClientCore,
    ClientError,
    ConnectionState,
    Failure,
    IllegalTransition,
    NotConnected,
    Retry,
    SessionText,
    Stop,
    check_transition,
    log,
    status_is_final,
)
from .contract.close_codes import CLOSE_ABNORMAL, CLOSE_NORMAL
from .contract.codec import encode_client_message
from .contract.events import ClientMessage, Event, Ping, Pong

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

CLOSE_TIMEOUT: Final = 2.0
"""Seconds a normal close (1000) may take before the socket is simply dropped."""
EVENT_BUFFER: Final = 512
"""Default size of the user's event channel: several seconds of 60 Hz frames."""
OUTGOING_BUFFER: Final = 64
"""Messages waiting for the connection's writer (heartbeat answers, subscriptions, pings)."""
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""A replayed token_stream of a long session can be large; this only guards memory."""

Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


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


@attrs.define(eq=False)
class _Link:
    """One WebSocket connection's I/O side (a new one per connection)."""

    ws: WebSocketConnection
    outgoing: trio.MemorySendChannel[str]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    pings: list[_PendingPing] = attrs.field(factory=list)
    aborted: bool = False
    silent: bool = False
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


@attrs.define(eq=False)
class _Attempt:
    """What one attempt opened, so its way out can close exactly that."""

    stream: Stream | None = None
    link: _Link | None = None
    error: BaseException | None = None


@attrs.frozen
class _Target:
    """Where a ``ws://``/``wss://`` URL points: what the TCP connection and handshake need."""

    host: str
    port: int
    resource: str
    host_header: str
    tls: bool

    @classmethod
    def of(cls, url: str) -> _Target:
        parts = urllib.parse.urlsplit(url)
        tls = parts.scheme == "wss"
        if parts.hostname is None:
            raise ValueError(f"a WebSocket URL names a host, got {url!r}")
        host = parts.hostname
        port = parts.port or (443 if tls else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        shown = f"[{host}]" if ":" in host else host
        header = shown if port == (443 if tls else 80) else f"{shown}:{port}"
        return cls(host, port, resource, header, tls)


def _json_normal(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as it will look after the round trip (tuples become lists...)."""
    result: dict[str, Any] = orjson.loads(orjson.dumps(dict(payload)))
    return result


def _failure_of(error: BaseException, connect_timeout: float) -> Failure:
    """A failed handshake as the core's :class:`Failure`."""
    if isinstance(error, ConnectionRejected):
        return Failure("rejected", error.status_code, _said(error.body))
    if isinstance(error, ConnectionTimeout):
        return Failure("timeout", seconds=connect_timeout)
    cause = error.__cause__ if isinstance(error, HandshakeError) else error
    if _refused(cause):
        return Failure("refused")
    return Failure("error", detail=str(cause or error) or type(error).__name__)


def _refused(error: BaseException | None) -> bool:
    """Whether every TCP connect behind ``error`` was refused (trio groups one error per
    address tried under the ``OSError`` it raises)."""
    if isinstance(error, ConnectionRefusedError):
        return True
    group = None if error is None else error.__cause__
    if isinstance(error, OSError) and isinstance(group, BaseExceptionGroup):
        return all(isinstance(e, ConnectionRefusedError) for e in group.exceptions)
    return False


def _said(body: bytes | None) -> str:
    """What a refusal's body says: its JSON ``error``, else the start of its text."""
    body = (body or b"")[:2000]
    try:
        said = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        said = None
    if not isinstance(said, str):
        said = body.decode("utf-8", "replace").strip()[:200]
    return said


# --- the client -----------------------------------------------------------------------------


class Client:
    """A connection to a WIRTHFORGE server that survives reconnects; built by :func:`connect`.

    ``async for event in client`` yields every server event (typed, in order), including
    ``startup_complete`` and ``state_snapshot`` of each connection and replayed token
    streams. ``sessions`` holds the text of every session seen, without duplicates across
    reconnects; ``lost_sessions`` the ones a restarted server could not resume. The
    decisions and the books are :class:`~wirthforge_trio.client_core.ClientCore`'s; this
    class does the I/O and the waiting.
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
        self._core = ClientCore(
            url,
            channels=channels,
            models=models,
            resume=resume,
            backoff=backoff,
            max_attempts=max_attempts,
        )
        self.watchdog = watchdog
        self.connect_timeout = connect_timeout
        self._headers = [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
        self.last_error: BaseException | None = None
        """What made the latest attempt or connection fail (a refusal, an OSError...)."""

        self._events_send, self._events_recv = trio.open_memory_channel[Event](buffer)
        self._waiters: list[_Waiter] = []
        self._seen_transitions = 0
        self._link: _Link | None = None
        self._started = False
        self._supervisor_scope = trio.CancelScope()
        self._closed = trio.Event()
        self._ping_sequence = 0

    # -- what the core holds ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._core.url

    @property
    def resume(self) -> bool:
        return self._core.resume

    @property
    def backoff(self) -> Backoff:
        return self._core.backoff

    @property
    def max_attempts(self) -> int | None:
        return self._core.max_attempts

    @property
    def state(self) -> ConnectionState:
        return self._core.state

    @property
    def transitions(self) -> list[tuple[ConnectionState, ConnectionState]]:
        """Every transition so far, in order."""
        return self._core.transitions

    @property
    def sessions(self) -> dict[str, SessionText]:
        return self._core.sessions

    @property
    def lost_sessions(self) -> list[str]:
        return self._core.lost_sessions

    @property
    def server_instance(self) -> str | None:
        return self._core.server_instance

    @property
    def last_frame(self) -> int | None:
        return self._core.last_frame

    @property
    def attempts(self) -> int:
        """Connection attempts made, the first included."""
        return self._core.attempts

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one."""
        return self._core.reconnects

    @property
    def close_code(self) -> int | None:
        """Close code of the last connection that ended (1006: dropped without a close)."""
        return self._core.close_code

    @property
    def undecodable(self) -> int:
        """Server messages that were not contract events (skipped, logged)."""
        return self._core.undecodable

    @property
    def retry(self) -> Retry | None:
        """The latest decision to reconnect: its delay and the failure that caused it."""
        return self._core.retry

    @property
    def channels(self) -> frozenset[str]:
        """The channels and topics this client receives (restored on every reconnect)."""
        return self._core.channels

    @property
    def models(self) -> frozenset[str] | None:
        """The modelId filter (None: every model, minus any unsubscribed ones)."""
        return self._core.models

    # -- state --------------------------------------------------------------------------------

    def _wake_waiters(self) -> None:
        """Wake the waiters of every transition the core made since the last call."""
        transitions = self._core.transitions
        for _, new in transitions[self._seen_transitions :]:
            for waiter in self._waiters:
                if waiter.state is new:
                    waiter.reached = True
                    waiter.woken.set()
                elif new is ConnectionState.CLOSED:
                    waiter.woken.set()
        self._seen_transitions = len(transitions)

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

    # -- user operations ----------------------------------------------------------------------

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._events_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def subscribe(self, channels: Iterable[str] = (), models: Iterable[str] = ()) -> None:
        """Add channels/topics and modelIds (``"*"``: every model again).

        Remembered and restored on every reconnect. Does not wait for the server's
        ``subscriptions`` reply: it arrives in the event stream (waiting here could
        deadlock a caller that is also the one reading events).
        """
        await self._send_if_connected(self._core.subscribe(channels, models))

    async def unsubscribe(self, channels: Iterable[str] = (), models: Iterable[str] = ()) -> None:
        """Remove channels/topics and modelIds; ``system`` cannot be left."""
        await self._send_if_connected(self._core.unsubscribe(channels, models))

    async def _send_if_connected(self, message: ClientMessage | None) -> None:
        link = self._link
        if message is None or link is None:
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
        if self._core.request_close():
            link = self._link
            if link is not None:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await link.ws.aclose(CLOSE_NORMAL, "client closing")
            self._supervisor_scope.cancel()
            if not self._started:
                self._finish()
        await self._closed.wait()

    # -- the supervisor -----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff until closed; :func:`connect` runs it.

        Returns once the client is CLOSED (:meth:`aclose`, a close 1000 from the server, a
        final refusal, ``max_attempts``) or raises if cancelled. Runs once per client.
        """
        if self._started:
            raise RuntimeError("Client.run() was already started; a client runs once")
        self._started = True
        try:
            with self._supervisor_scope:
                while True:
                    url = self._core.begin_attempt()
                    self._wake_waiters()
                    failure = await self._attempt(url)
                    decision = self._core.ended(failure)
                    self._wake_waiters()
                    if isinstance(decision, Stop):
                        break
                    await trio.sleep(decision.delay)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._link = None
        self._core.finish()
        self._wake_waiters()
        self._events_send.close()
        self._closed.set()

    async def _attempt(self, url: str) -> Failure:
        """One connection from handshake to end: what ended it."""
        opened = _Attempt()
        try:
            # This nursery holds trio-websocket's reader task, so its end is ours to bound.
            async with trio.open_nursery() as nursery:
                link = await self._open(nursery, url, opened)
                try:
                    await self._serve(link)
                finally:
                    self._link = None
                    for pending in link.pings:
                        pending.done.set()  # rtt stays None: that ping fails, NotConnected
                    await self._wind_down(nursery, link, opened)
        except* (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError) as group:
            opened.error = group.exceptions[0]
        finally:
            if opened.stream is not None:
                await trio.aclose_forcefully(opened.stream)
        if opened.error is not None:
            self.last_error = opened.error
            log.info("connection to %s failed: %r", self.url, opened.error)
        ended = opened.link
        if ended is None:
            return _failure_of(opened.error or HandshakeError(), self.connect_timeout)
        if ended.aborted:
            return Failure("aborted")
        if ended.silent:
            return Failure("silent", seconds=self.watchdog)
        return Failure("closed", ended.close_code or CLOSE_ABNORMAL, ended.close_reason or "")

    async def _open(self, nursery: trio.Nursery, url: str, opened: _Attempt) -> _Link:
        """The TCP connection and the handshake, within ``connect_timeout``.

        The stream is opened here rather than by ``open_websocket_url`` so that the client
        holds it: dropping a connection is then closing our own stream (public API only).
        """
        target = _Target.of(url)
        try:
            with trio.fail_after(self.connect_timeout):
                if target.tls:
                    context = ssl.create_default_context()
                    opened.stream = await trio.open_ssl_over_tcp_stream(
                        target.host, target.port, ssl_context=context, https_compatible=True
                    )
                else:
                    opened.stream = await trio.open_tcp_stream(target.host, target.port)
                ws = await wrap_client_stream(
                    nursery,
                    opened.stream,
                    target.host_header,
                    target.resource,
                    extra_headers=self._headers or None,
                    max_message_size=MAX_MESSAGE_BYTES,
                )
        except trio.TooSlowError:
            raise ConnectionTimeout from None
        except OSError as exc:
            raise HandshakeError from exc
        outgoing, to_write = trio.open_memory_channel[str](OUTGOING_BUFFER)
        link = opened.link = self._link = _Link(ws, outgoing)
        nursery.start_soon(self._writer, link, to_write)
        for message in self._core.handshake_done():
            link.send_nowait(message)  # first in the queue: resume comes first
        self._wake_waiters()
        return link

    async def _wind_down(self, nursery: trio.Nursery, link: _Link, opened: _Attempt) -> None:
        """End the connection's tasks: at once when dropped, else after the server's close.

        trio-websocket's reader may be parked on its full one-message queue, where it would
        never see a closed stream: cancelling the nursery that holds it frees it.
        """
        link.outgoing.close()
        if (link.aborted or link.silent) and opened.stream is not None:
            await trio.aclose_forcefully(opened.stream)
            nursery.cancel_scope.cancel()
        else:
            # A close handshake was done or started: the server closes TCP next (bounded).
            nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
        if link.aborted:
            log.info("connection to %s aborted by the client", self.url)
        elif link.silent:
            log.warning(
                "no message from %s for %.1f s: treating the server as dead",
                self.url,
                self.watchdog,
            )

    async def _serve(self, link: _Link) -> None:
        with link.scope:
            await self._reader(link)

    async def _writer(self, link: _Link, to_write: trio.MemoryReceiveChannel[str]) -> None:
        """The only task that sends on the socket, in queue order."""
        async with to_write:
            async for text in to_write:
                try:
                    await link.ws.send_message(text)
                except ConnectionClosed:
                    return  # the reader sees the close too and ends the connection

    async def _reader(self, link: _Link) -> None:
        """Receive, let the core keep the books, hand events to the user; returns at the end."""
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
            received = self._core.receive(data)
            for reply in received.replies:
                link.send_nowait(reply)
            event = received.event
            if event is None:
                continue
            if isinstance(event, Pong):
                self._pong(link, event)
            await self._events_send.send(event)

    @staticmethod
    def _pong(link: _Link, event: Pong) -> None:
        now = trio.current_time()
        for pending in link.pings:
            if pending.payload == event.payload:
                link.pings.remove(pending)
                pending.rtt_ms = (now - pending.sent_at) * 1000.0
                pending.done.set()
                return


# --- entry point ----------------------------------------------------------------------------


def refusal_is_final(error: BaseException | None) -> bool:
    """Whether a failed handshake would fail again the same way: refused with a 4xx status,
    but not 408 (timeout) or 429 (too many requests), which say "later"."""
    return isinstance(error, ConnectionRejected) and status_is_final(error.status_code)


def describe_handshake_error(error: ConnectionRejected | BaseException | None) -> str:
    """A failed handshake as one line: for a refusal, the status and what the server said
    (its JSON ``error``, else the start of its body); else the error and its cause."""
    if not isinstance(error, ConnectionRejected):
        cause = None if error is None else error.__cause__
        return repr(error) if cause is None else f"{error!r} ({cause})"
    said = _said(error.body)
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
        nursery.start_soon(client.run)
        try:
            yield client
        finally:
            # Say goodbye even when the block is being cancelled, within a bound.
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT + 1.0):
                await client.aclose()
            nursery.cancel_scope.cancel()
