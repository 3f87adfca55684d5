"""One client connection: a nursery with a reader, a writer and a heartbeat task.

The writer is the only task that sends, so a client that stops reading blocks nothing but
its own writer: the hub keeps offering frames to its size-1 slot (replacing stale ones), and
its lossless queue only grows by the text of the tokens being generated. A cancel scope
around the nursery is the heartbeat watchdog: each answered heartbeat pushes its deadline
forward, and when it expires the whole connection is cancelled and closed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from ..contract.codec import encode
from ..contract.events import FRAME_BUDGET_MS, Event, TokenStream
from ..protocol.connection import (
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT_TIMEOUT,
    CatchUp,
    Close,
    ConnectionProtocol,
    Reply,
    error_event,
)
from .mailbox import Mailbox

log = logging.getLogger("wirthforge_trio.transport")

WARNING_INTERVAL = 5.0
"""Seconds between two over-budget warnings of one connection (a slow client is one story)."""


class WebSocketPort(Protocol):
    """The three operations the transport needs from a WebSocket (Quart's object has them)."""

    async def send(self, data: str) -> None: ...

    async def receive(self) -> str | bytes: ...

    async def close(self, code: int, reason: str = "") -> None: ...


def wall_ms() -> int:
    """Unix epoch milliseconds, as the contract's timestamps are."""
    return time.time_ns() // 1_000_000


class Connection:
    """Owns one WebSocket from handshake to close."""

    def __init__(
        self,
        websocket: WebSocketPort,
        protocol: ConnectionProtocol,
        *,
        remote: str,
        heartbeat_interval: float,
        frame_rate: Callable[[], float],
        current_state: Callable[[str], Sequence[Event]] = lambda topic: (),
    ) -> None:
        self.websocket = websocket
        self.protocol = protocol
        self.mailbox = Mailbox()
        self.remote = remote
        self.heartbeat_interval = heartbeat_interval
        self._frame_rate = frame_rate
        self._current_state = current_state
        self._closing: Close | None = None
        self._nursery: trio.Nursery | None = None
        self._last_warning = -math.inf
        self.opened_at = trio.current_time()
        self.close_code: int | None = None

    @property
    def id(self) -> str:
        return self.protocol.connection_id

    # -- fan-out entry points (called by the hub, never block) ---------------------------------

    def deliver(self, topic: str, text: str, event: Event) -> None:
        """Queue a lossless message if the client is subscribed to its channel or topic."""
        if not self.protocol.wants(topic):
            return
        if isinstance(event, TokenStream):
            self.mailbox.put_tokens(event, text)
        else:
            self.mailbox.put(text)

    def request_close(self, code: int, reason: str) -> None:
        """Close after what is already queued has been sent."""
        if self._closing is None:
            self._closing = Close(code, reason)
            self.mailbox.wake()  # the writer drains the queue, then closes

    # -- the connection's life ----------------------------------------------------------------

    async def run(self, first_message: str) -> None:
        """Serve the connection until the client leaves, is closed, or times out."""
        self.mailbox.put(first_message)
        with trio.CancelScope() as watchdog:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader, watchdog)
                nursery.start_soon(self._writer)
                nursery.start_soon(self._heartbeats)
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
        protocol = self.protocol
        while True:
            data = await self.websocket.receive()
            actions = protocol.receive(data, trio.current_time(), wall_ms())
            deadline = protocol.liveness_deadline
            watchdog.deadline = math.inf if deadline is None else deadline
            for action in actions:
                if isinstance(action, Reply):
                    self.mailbox.put(encode(action.event))
                elif isinstance(action, CatchUp):
                    for event in self._current_state(action.topic):
                        self.mailbox.put(encode(event))
                else:
                    self.request_close(action.code, action.reason)
                    return

    async def _writer(self) -> None:
        mailbox = self.mailbox
        wants = self.protocol.wants
        while True:
            await mailbox.wait()
            while (text := mailbox.take_lossless()) is not None:
                await self._send(text)
            if self._closing is not None:
                self.close_code = self._closing.code
                await self.websocket.close(self._closing.code, self._closing.reason)
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
                return
            heartbeat = mailbox.take_heartbeat()
            if heartbeat is not None:
                await self._send(heartbeat)
            frame = mailbox.take_frame()
            if frame is not None:
                for channel, text in frame.messages:
                    if wants(channel):
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

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            beat = self.protocol.heartbeat(trio.current_time(), wall_ms(), self._frame_rate())
            self.mailbox.set_heartbeat(encode(beat))
