"""A connection's outbox: a size-1 frame slot where the newest frame wins, beside a lossless queue.

Frames are state: a stale one is worth nothing once a newer one exists, so the slot (a Trio
memory channel of size 1) swaps the old frame out and counts it. Everything else (tokens,
council, rewards, errors, replies) is history and must arrive, so it waits in an unbounded
queue; when the client falls behind, token batches of one session that are still waiting are
merged into one, which bounds the queue by the generated text itself. The heartbeat has a
latest-wins slot of its own: an old heartbeat says nothing a newer one does not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

import attrs
import trio

from ..contract.codec import encode
from ..contract.events import TokenStream, TokenStreamPayload
from ..protocol.rfc6455 import text_frame

_ONE_CHANNEL: dict[str, frozenset[str]] = {}
"""The channels of a frame of one message: made once, as building a set on every tick with
cold caches cost several times a lookup."""


class Frame:
    """One frame's messages, each encoded once and shared by every connection.

    Built on every tick, at rest too, so its fields are worked out at once in plain code
    (as an attrs class with a factory per field it took several calls more per frame)."""

    __slots__ = ("channels", "data", "framed", "messages", "number", "texts")

    def __init__(self, number: int, messages: tuple[tuple[str, tuple[str, ...], str], ...]):
        self.number = number
        self.messages = messages
        """(channel, modelIds, wire text) for each event."""
        self.texts: tuple[str, ...]
        """The wire texts of the messages, in order."""
        self.framed: tuple[bytes, ...]
        """Each message as an unmasked text frame, the same bytes for every connection without
        extensions (``protocol/rfc6455.py``)."""
        self.data: bytes
        """The whole frame as written to a connection that takes all of it (:attr:`framed`
        joined once for all)."""
        self.channels: frozenset[str]
        """The channels of the messages: a connection subscribed to all of them (and without a
        model filter) takes the whole frame without a check per message."""
        if len(messages) == 1:  # every frame at rest, and most others
            channel, _, text = messages[0]
            self.texts = (text,)
            self.data = text_frame(text.encode())
            self.framed = (self.data,)
            channels = _ONE_CHANNEL.get(channel)
            if channels is None:  # once per channel: an event class's constant
                channels = _ONE_CHANNEL[channel] = frozenset((channel,))
            self.channels = channels
        else:
            self.texts = tuple(text for _, _, text in messages)
            self.framed = tuple(text_frame(text.encode()) for text in self.texts)
            self.data = b"".join(self.framed)
            self.channels = frozenset(channel for channel, _, _ in messages)

    def __repr__(self) -> str:
        return f"Frame(number={self.number!r}, messages={self.messages!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.number, self.messages) == (other.number, other.messages)

    def __hash__(self) -> int:
        return hash((self.number, self.messages))


@attrs.define
class _TokenBatch:
    """A token_stream still waiting in the queue; later batches of its session merge into it."""

    event: TokenStream
    text: str | None
    size: int
    """Bytes counted against the backlog: the texts of every batch merged in."""

    def merge(self, later: TokenStream, text: str) -> None:
        self.size += len(text)
        old, new = self.event.payload, later.payload
        cost = None
        if old.energy_cost is not None or new.energy_cost is not None:
            cost = round((old.energy_cost or 0.0) + (new.energy_cost or 0.0), 6)
        self.event = TokenStream(
            timestamp=later.timestamp,
            payload=TokenStreamPayload(
                tokens=old.tokens + new.tokens,
                is_complete=new.is_complete,
                session_id=new.session_id,
                model_id=new.model_id,
                energy_cost=cost,
            ),
        )
        self.text = None  # re-encoded when it is finally sent

    def wire_text(self) -> str:
        if self.text is None:
            self.text = encode(self.event)
        return self.text


_Item = str | _TokenBatch

FRAME_SLOT_SIZE: Final = 1


class Mailbox:
    """What one connection still has to send, and the wake-up for its writer."""

    # Read for every client on every frame (``writer_parked``): slots keep the object small.
    __slots__ = (
        "_frame_in",
        "_frame_out",
        "_heartbeat",
        "_lot",
        "_open_batches",
        "_queue",
        "_ready",
        "batches_merged",
        "frames_offered",
        "frames_replaced",
        "on_parking",
        "queued_bytes",
        "writer_parked",
    )

    def __init__(self) -> None:
        self._frame_in, self._frame_out = trio.open_memory_channel[Frame](FRAME_SLOT_SIZE)
        self._queue: deque[_Item] = deque()
        self._open_batches: dict[str, _TokenBatch] = {}
        self._heartbeat: str | None = None
        self._lot = trio.lowlevel.ParkingLot()
        self._ready = False
        self.writer_parked = False
        """The writer sleeps with nothing to send (it parks only when all is sent)."""
        self.on_parking: Callable[[], None] = lambda: None
        """Called after every change of :attr:`writer_parked` (the connection follows it)."""
        self.frames_offered = 0
        """Frames put in the slot (a frame written at once by the connection's port never
        reaches it: those count as the port's writes)."""
        self.frames_replaced = 0
        self.batches_merged = 0
        self.queued_bytes = 0
        """Size of the lossless messages waiting (as encoded when queued)."""

    # -- producers (never block) --------------------------------------------------------------

    def offer_frame(self, frame: Frame) -> None:
        """Put the newest frame in the slot, replacing a frame the writer has not taken."""
        self.frames_offered += 1
        try:
            self._frame_in.send_nowait(frame)
        except trio.WouldBlock:
            self._frame_out.receive_nowait()
            self.frames_replaced += 1
            self._frame_in.send_nowait(frame)
        self.wake()

    def put(self, text: str) -> None:
        """Queue a lossless message. It also seals waiting token batches, keeping order."""
        self._open_batches.clear()
        self._queue.append(text)
        self.queued_bytes += len(text)
        self.wake()

    def put_tokens(self, event: TokenStream, text: str) -> None:
        """Queue a token batch, merged into its session's batch if that one is still waiting."""
        session = event.payload.session_id
        waiting = self._open_batches.get(session)
        self.queued_bytes += len(text)
        if waiting is not None:
            waiting.merge(event, text)
            self.batches_merged += 1
        else:
            batch = _TokenBatch(event, text, len(text))
            self._open_batches[session] = batch
            self._queue.append(batch)
        if event.payload.is_complete:
            self._open_batches.pop(session, None)
        self.wake()

    def set_heartbeat(self, text: str) -> None:
        self._heartbeat = text
        self.wake()

    @property
    def queued(self) -> int:
        """Lossless messages waiting (merged batches count once)."""
        return len(self._queue)

    # -- the writer ---------------------------------------------------------------------------

    async def wait(self) -> None:
        """Sleep until there is something to send."""
        if self._ready:
            await trio.lowlevel.checkpoint()
        else:
            self._set_parked(True)
            try:
                await self._lot.park()
            finally:
                self._set_parked(False)
        self._ready = False

    def take_lossless(self) -> str | None:
        """The next lossless message's text, or None when the queue is empty."""
        if not self._queue:
            return None
        item = self._queue.popleft()
        if isinstance(item, str):
            self.queued_bytes -= len(item)
            return item
        self.queued_bytes -= item.size
        if self._open_batches.get(item.event.payload.session_id) is item:
            del self._open_batches[item.event.payload.session_id]
        return item.wire_text()

    def drop_lossless(self) -> int:
        """Forget every waiting lossless message (a client that will resume); how many."""
        dropped = len(self._queue)
        self._queue.clear()
        self._open_batches.clear()
        self.queued_bytes = 0
        return dropped

    def take_heartbeat(self) -> str | None:
        text, self._heartbeat = self._heartbeat, None
        return text

    def take_frame(self) -> Frame | None:
        try:
            return self._frame_out.receive_nowait()
        except trio.WouldBlock:
            return None

    def wake(self) -> None:
        """Rouse the writer (also used to make it notice a close request)."""
        self._ready = True
        self._set_parked(False)
        self._lot.unpark_all()

    def _set_parked(self, parked: bool) -> None:
        if self.writer_parked is not parked:
            self.writer_parked = parked
            self.on_parking()
