"""One client connection: a nursery with a reader and a writer; heartbeats come from a sweep.

The writer is the only task that awaits a send, so a client that stops reading blocks nothing
but its own writer: the hub keeps offering frames to its size-1 slot (replacing stale ones),
and its lossless queue only grows by the text of the tokens being generated. While the writer
sleeps with nothing queued, a new message skips the queue and is offered to the connection's
:class:`~.port.SocketPort`, which writes it at once if it can; anything it does not take waits
in the mailbox, so the order is the same either way (docs/decisions.md, "The send path").
A cancel scope around the nursery is the heartbeat watchdog: each answered heartbeat pushes
its deadline forward, and when it expires the whole connection is cancelled and closed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import trio

from ..contract.close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_INTERNAL_ERROR,
    CLOSE_SLOW_CONSUMER,
)
from ..contract.codec import encode
from ..contract.events import (
    FRAME_BUDGET_MS,
    Event,
    ResumePayload,
    TokenStream,
    models_of,
    wall_ms,
)
from ..protocol.connection import (
    Action,
    CatchUp,
    Close,
    ConnectionProtocol,
    Join,
    Reply,
    error_event,
)
from .heartbeats import HeartbeatSweep
from .mailbox import Frame, Mailbox
from .port import OrdinaryPort, SocketPort

log = logging.getLogger("wirthforge_trio.transport")

WARNING_INTERVAL = 5.0
"""Seconds between two over-budget warnings of one connection (a slow client is one story)."""


class ClientGone(Exception):
    """Raised by a :class:`WebSocketPort` asked to receive or send after the client has
    disconnected (the connection then ends quietly)."""


class WebSocketPort(Protocol):
    """The three operations the transport needs from a WebSocket (Quart's object has them;
    ``receive`` and ``send`` raise :class:`ClientGone` once the client has disconnected)."""

    async def send(self, data: str) -> None: ...

    async def receive(self) -> str | bytes | None: ...

    async def close(self, code: int, reason: str = "") -> None: ...


def _nothing() -> None:
    pass


class Connection:
    """Owns one WebSocket from handshake to close."""

    # The hub reads a few of these for every client on every frame: slots keep it compact.
    __slots__ = (
        "_catch_up_bytes",
        "_closing",
        "_current_state",
        "_frame_rate",
        "_last_warning",
        "_nursery",
        "_on_join",
        "_passed_on",
        "_prepare_join",
        "_received",
        "_watchdog",
        "addresses",
        "client_close_code",
        "close_code",
        "frame_lane",
        "heartbeats",
        "lane_messages",
        "mailbox",
        "max_backlog_bytes",
        "opened_at",
        "port",
        "protocol",
        "received_inline",
        "remote",
        "resume_wait",
        "too_slow",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocketPort,
        protocol: ConnectionProtocol,
        *,
        remote: str,
        heartbeats: HeartbeatSweep,
        frame_rate: Callable[[], float],
        current_state: Callable[[str], Sequence[Event]] = lambda topic: (),
        on_join: Callable[[Connection, ResumePayload | None], None] = lambda c, r: None,
        prepare_join: Callable[[ResumePayload], Awaitable[None]] | None = None,
        resume_wait: float = 2.0,
        max_backlog_bytes: int = 1024 * 1024,
        addresses: tuple[tuple[str, int], tuple[str, int]] | None = None,
        port: SocketPort | None = None,
    ) -> None:
        self.websocket = websocket
        self.protocol = protocol
        self.mailbox = Mailbox()
        self.remote = remote
        self.heartbeats = heartbeats
        self._frame_rate = frame_rate
        self._current_state = current_state
        self._on_join = on_join
        self._prepare_join = prepare_join
        """Awaited before a resuming client joins (a broker's process catching up first)."""
        self.resume_wait = resume_wait
        self.max_backlog_bytes = max_backlog_bytes
        self.addresses = addresses
        """(server, client) socket addresses: how a stuck connection is found at shutdown."""
        self.port: SocketPort = port if port is not None else OrdinaryPort()
        """The one way a message reaches the socket without the writer (docs/decisions.md)."""
        self.frame_lane: Callable[[bytes], int] | None = None
        """The port's ``frame_send`` while the hub may write a whole frame with it, nothing
        else looked at; None whenever anything may stand in the way (:meth:`lane_changed`)."""
        self.lane_messages = 0
        """Messages the hub wrote through :attr:`frame_lane`."""
        self._watchdog: trio.CancelScope | None = None
        """Set while the reader serves live messages: client messages may then be handled
        as they arrive (:meth:`take_inline`)."""
        self._passed_on = 0
        self._received = 0
        self.received_inline = 0
        """Client messages handled in the task that read them (no trip through Quart)."""
        self.too_slow = False
        self._catch_up_bytes = 0
        self._closing: Close | None = None
        self.mailbox.on_parking = self.lane_changed
        self.port.start(self)
        self._nursery: trio.Nursery | None = None
        self._last_warning = -math.inf
        self.opened_at = trio.current_time()
        self.close_code: int | None = None
        self.client_close_code: int | None = None
        """The code of the client's own close frame, when it sent one (for the log)."""

    @property
    def id(self) -> str:
        return self.protocol.connection_id

    # -- fan-out entry points (called by the hub, never block) ---------------------------------

    def lane_changed(self) -> None:
        """Work out :attr:`frame_lane` again (a :class:`~.port.PortOwner` duty). Invariant: it
        is open exactly where :meth:`write_frame_now` would write the whole frame, framed once
        for all, so it is worked out whenever one of the things it folds together changes: the
        port's :attr:`~.port.SocketPort.open_and_free`, the writer's parking, a close request,
        the client's subscriptions (docs/decisions.md, "The frame lane")."""
        port = self.port
        self.frame_lane = (
            port.frame_send
            if port.open_and_free
            and port.shares_framing
            and self.mailbox.writer_parked
            and self._closing is None
            and self.protocol.wants_everything
            else None
        )

    @property
    def messages_written_at_once(self) -> int:
        """Messages written to the socket without the writer: by the port, or by the hub
        through the lane."""
        return self.port.messages_written + self.lane_messages

    def must_flush(self) -> None:
        """The port cut a write short: the writer sends the rest (:meth:`_writer`)."""
        self.mailbox.wake()

    def write_frame_now(self, frame: Frame, debug: bool = False) -> bool:
        """Write the frame at once if nothing is queued and the socket is free; False when it
        must wait in the latest-wins slot instead (:meth:`offer_frame`)."""
        if not self.mailbox.writer_parked or self._closing is not None:
            return False
        port = self.port
        if self.protocol.wants_all(frame.channels):
            written = port.write_now(frame.texts, frame.framed)
        else:
            wants, wants_models = self.protocol.wants, self.protocol.wants_models
            chosen = [
                i
                for i, (channel, models, _) in enumerate(frame.messages)
                if wants(channel) and wants_models(models)
            ]
            written = not chosen or port.write_now(
                [frame.texts[i] for i in chosen], [frame.framed[i] for i in chosen]
            )
        if written and debug:
            log.debug("connection %s sent frame %d", self.id, frame.number)
        return written

    def offer_frame(self, frame: Frame) -> None:
        """Leave the frame in the latest-wins slot for the writer (replacing an older one)."""
        self.mailbox.offer_frame(frame)

    def _write_now(self, text: str) -> bool:
        """Write one message at once if nothing is queued ahead of it and the socket is free;
        False when it must go the ordinary way (the mailbox)."""
        if not self.mailbox.writer_parked or self._closing is not None:
            return False
        return self.port.write_now((text,), ())

    def deliver(self, topic: str, text: str, event: Event) -> None:
        """Queue a lossless message if the client is subscribed to its topic and models."""
        if self.too_slow or not (
            self.protocol.wants(topic) and self.protocol.wants_models(models_of(event))
        ):
            return
        if self._over_backlog():
            return
        if self._write_now(text):
            return
        if isinstance(event, TokenStream):
            self.mailbox.put_tokens(event, text)
        else:
            self.mailbox.put(text)

    def _reply(self, text: str) -> None:
        """Queue an answer to the client (it counts against the backlog like any event)."""
        if self.too_slow or self._over_backlog():
            return
        if not self._write_now(text):
            self.mailbox.put(text)

    def queue_catch_up(self, texts: Iterable[str]) -> None:
        """Queue a resuming client's catch-up. It may be larger than the backlog limit (it is
        what the client came back for), so it is allowed on top of it until sent."""
        for text in texts:
            self.mailbox.put(text)
            self._catch_up_bytes += len(text)

    def _over_backlog(self) -> bool:
        """Whether what already waits unread is over the limit (then close as too slow). A
        single large message is fine; the queue is bounded by the limit plus one message."""
        if self.mailbox.queued_bytes <= self.max_backlog_bytes + self._catch_up_bytes:
            return False
        self._close_too_slow()
        return True

    def _close_too_slow(self) -> None:
        """Drop the unread backlog and close: the client resumes and gets it back exactly."""
        self.too_slow = True
        backlog = self.mailbox.queued_bytes
        self.mailbox.drop_lossless()
        log.warning(
            "connection %s left %d bytes unread (limit %d): closing with %d; it can resume",
            self.id,
            backlog,
            self.max_backlog_bytes,
            CLOSE_SLOW_CONSUMER,
        )
        self.mailbox.put(
            encode(
                error_event(
                    "SLOW_CONSUMER",
                    f"more than {self.max_backlog_bytes} bytes of events were left unread; "
                    "reconnect with /ws?resume=1 to catch up without loss",
                    timestamp=wall_ms(),
                    severity="error",
                )
            )
        )
        self.request_close(CLOSE_SLOW_CONSUMER, "too slow: unread backlog over the limit")

    def request_close(self, code: int, reason: str) -> None:
        """Close after what is already queued has been sent."""
        if self._closing is None:
            self._closing = Close(code, reason)
            self.lane_changed()
            self.mailbox.wake()  # the writer drains the queue, then closes

    # -- the connection's life ----------------------------------------------------------------

    def join(self, resume: ResumePayload | None) -> None:
        """Go live: the app queues the catch-up (if any) and adds us to the hub, atomically."""
        self._on_join(self, resume)

    async def run(self, first_message: str) -> None:
        """Serve the connection until the client leaves, is closed, or times out."""
        self.mailbox.put(first_message)
        if not self.protocol.awaiting_resume:
            self.join(None)
        self.heartbeats.enroll(self, trio.current_time())
        try:
            with trio.CancelScope() as watchdog:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._reader, watchdog)
                    nursery.start_soon(self._writer)
        except* ClientGone:
            pass  # the client disconnected while we read or wrote: nobody is left to tell
        finally:
            self.heartbeats.leave(self)
            # The lane stays closed from here on, and neither the port nor the mailbox
            # refers back to the connection (no reference cycle left to the collector).
            self.port.detach()
            self.frame_lane = None
            self.mailbox.on_parking = _nothing
        if watchdog.cancelled_caught:
            log.info(
                "connection %s missed heartbeats for %.1f s: closing",
                self.id,
                self.protocol.heartbeat_timeout,
            )
            await self._final_close(
                CLOSE_HEARTBEAT_TIMEOUT,
                "heartbeat timeout",
                encode(
                    error_event(
                        "HEARTBEAT_TIMEOUT",
                        f"no heartbeat_response for {self.protocol.heartbeat_timeout:g} s; "
                        "the connection is closed",
                        timestamp=wall_ms(),
                        severity="error",
                    )
                ),
            )

    async def close_on_cancel(self) -> None:
        """Best effort close frame (1001) when the server cancels the connection."""
        await self._final_close(CLOSE_GOING_AWAY, "server shutting down", None)

    async def _final_close(self, code: int, reason: str, last_text: str | None) -> None:
        """Send ``last_text`` (if any) and a close frame, shielded and bounded; best effort."""
        if self.close_code is not None:
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + 1.0
            try:
                if last_text is not None:
                    await self.websocket.send(last_text)
                await self.websocket.close(code, reason)
            except Exception:  # the peer is already gone: nobody is left to tell
                return
            if not scope.cancelled_caught:
                self.close_code = code

    async def _reader(self, watchdog: trio.CancelScope) -> None:
        """Take the client messages not handled as read (:meth:`take_inline`)."""
        protocol = self.protocol
        if protocol.awaiting_resume:
            # A resuming client speaks first; one that does not within the wait goes live as is.
            first: list[str | bytes | None] = []
            with trio.move_on_after(self.resume_wait):
                first.append(await self.websocket.receive())
                self._received += 1
            if first:
                await self._handle_first(first[0], watchdog)
            for action in protocol.join():
                self._apply(action)
            self.lane_changed()
        try:
            self._watchdog = watchdog
            while protocol.closed is None:  # after a Close, the writer ends the connection
                data = await self.websocket.receive()
                self._received += 1
                self._handle(data, watchdog)
        finally:
            self._watchdog = None

    def take_inline(self, data: str | bytes | None) -> bool:
        """Handle a client message in the task that read it from the socket, when that keeps
        the order: the reader is live and every message passed on the ordinary way before
        has been received by it. False: pass it on (the reader takes it in turn)."""
        watchdog = self._watchdog
        if watchdog is None or self._passed_on != self._received or self.protocol.closed:
            self._passed_on += 1
            return False
        self.received_inline += 1
        try:
            self._handle(data, watchdog)
        except Exception:  # a bug, not the client's fault: close, as the reader's crash would
            log.exception("connection %s: handling a client message failed", self.id)
            self.request_close(CLOSE_INTERNAL_ERROR, "internal error")
        return True

    async def _handle_first(self, data: str | bytes | None, watchdog: trio.CancelScope) -> None:
        """:meth:`_handle` for the message a resuming client opens with: the app may need to
        catch up before it can answer a resume exactly (``prepare_join``)."""
        actions = self._receive(data, watchdog)
        for action in actions:
            prepare = self._prepare_join
            if isinstance(action, Join) and action.resume is not None and prepare is not None:
                await prepare(action.resume)
            self._apply(action)
        self.lane_changed()

    def _handle(self, data: str | bytes | None, watchdog: trio.CancelScope) -> None:
        """Apply the protocol's answer to one client message; push the liveness deadline."""
        for action in self._receive(data, watchdog):
            self._apply(action)
        self.lane_changed()  # the message may have changed the subscriptions

    def _receive(self, data: str | bytes | None, watchdog: trio.CancelScope) -> list[Action]:
        """The protocol's answer to one client message; the liveness deadline pushed."""
        protocol = self.protocol
        if data is None:  # Quart's reading of an empty binary frame
            data = b""
        actions = protocol.receive(data, trio.current_time(), wall_ms())
        deadline = protocol.liveness_deadline
        watchdog.deadline = math.inf if deadline is None else deadline
        return actions

    def _apply(self, action: Action) -> None:
        if isinstance(action, Reply):
            self._reply(encode(action.event))
        elif isinstance(action, CatchUp):
            for event in self._current_state(action.topic):
                self._reply(encode(event))
        elif isinstance(action, Join):
            self.join(action.resume)
        else:
            self.request_close(action.code, action.reason)

    async def _writer(self) -> None:
        mailbox = self.mailbox
        wants, wants_models = self.protocol.wants, self.protocol.wants_models
        port = self.port
        while True:
            await mailbox.wait()
            if port.pending:
                await port.flush()  # the rest of a message written at once comes first
            while True:
                while (text := mailbox.take_lossless()) is not None:
                    await self._send(text)
                self._catch_up_bytes = 0  # all sent: the plain limit applies again
                if self._closing is not None:
                    self.close_code = self._closing.code
                    await self.websocket.close(self._closing.code, self._closing.reason)
                    assert self._nursery is not None
                    self._nursery.cancel_scope.cancel()
                    return
                heartbeat = mailbox.take_heartbeat()
                if heartbeat is None:
                    break
                await self._send(heartbeat)
            # No await since the lossless queue was last empty: a frame never overtakes a
            # lossless event queued before it (frame numbers never go backwards, and a
            # resume's snapshot and catch-up always come before the first live frame).
            frame = mailbox.take_frame()
            if frame is not None:
                for channel, models, text in frame.messages:
                    if wants(channel) and wants_models(models):
                        await self._send(text)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("connection %s sent frame %d", self.id, frame.number)

    async def _send(self, text: str) -> None:
        started = trio.current_time()
        await self.websocket.send(text)
        elapsed_ms = (trio.current_time() - started) * 1000.0
        if elapsed_ms > FRAME_BUDGET_MS and started - self._last_warning > WARNING_INTERVAL:
            self._last_warning = started
            log.warning(
                "connection %s: a send took %.1f ms, over the %.2f ms frame budget "
                "(slow client or busy machine)",
                self.id,
                elapsed_ms,
                FRAME_BUDGET_MS,
            )

    def client_closed(self, code: int) -> None:
        self.client_close_code = code

    def parse_fault(self, code: int, reason: str) -> None:
        """The client sent a frame that cannot be parsed: the close frame the port has sent in
        answer carries ``code`` and ``reason``; the log says so too."""
        self.close_code = code
        log.warning(
            "connection %s sent a frame that cannot be parsed (%s); closing it with %d",
            self.id,
            reason[:200],
            code,
        )

    def beat(self) -> None:
        """Send a heartbeat now, or leave it for the writer (a newer one replaces it)."""
        beat = self.protocol.heartbeat(trio.current_time(), wall_ms(), self._frame_rate())
        text = encode(beat)
        if not self._write_now(text):
            self.mailbox.set_heartbeat(text)
