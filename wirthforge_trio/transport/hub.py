"""The fan-out hub: one encoded frame or event, offered to every connection without waiting.

Publishing never awaits, so no client, however slow, can hold up the frame clock or another
client: a connection with nothing queued gets the message written to its socket at once
by its port (``port.py``), any other finds it in its mailbox, where its writer picks it up
at its own pace. Each frame reaches each socket through exactly one port call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import trio

from ..contract.codec import encode
from ..contract.events import Event, FrameEvent, models_of, topic_of
from .abort import shutdown_sockets
from .connection import Connection
from .heartbeats import HeartbeatSweep
from .mailbox import Frame

log = logging.getLogger("wirthforge_trio.transport")


class Hub:
    """Every open connection, and the ways to reach them all: frames, lossless events and,
    on the frames, heartbeats."""

    def __init__(self, heartbeats: HeartbeatSweep | None = None) -> None:
        self.heartbeats = heartbeats if heartbeats is not None else HeartbeatSweep(1.0)
        """Beats for every running connection, swept on every frame the hub publishes."""
        self._connections: dict[str, Connection] = {}
        self._emptied = trio.Event()
        self._emptied.set()
        self.frames_published = 0
        self._replaced_by_closed = 0

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._connections.values()))

    def add(self, connection: Connection) -> None:
        self._connections[connection.id] = connection
        self._emptied = trio.Event()

    def remove(self, connection: Connection) -> None:
        if self._connections.pop(connection.id, None) is not None:
            self._replaced_by_closed += connection.mailbox.frames_replaced
        if not self._connections:
            self._emptied.set()

    def publish_frame(self, number: int, events: Iterable[FrameEvent]) -> None:
        """Encode the frame's events once and offer them to every connection's frame slot;
        then send the heartbeats that are due (the contract counts them in frames)."""
        if self._connections:
            self._publish_frame(
                Frame(number, tuple((e.CHANNEL, models_of(e), encode(e)) for e in events))
            )
        self.heartbeats.beat_due(trio.current_time())

    def publish_frame_text(self, number: int, message: tuple[str, tuple[str, ...], str]) -> None:
        """As :meth:`publish_frame`, for a frame of one message already encoded (the frame
        at rest): (channel, modelIds, wire text)."""
        if self._connections:
            self._publish_frame(Frame(number, (message,)))
        self.heartbeats.beat_due(trio.current_time())

    def publish_frame_messages(
        self, number: int, messages: tuple[tuple[str, tuple[str, ...], str], ...]
    ) -> None:
        """As :meth:`publish_frame_text`, for a frame of several encoded messages (a frame
        merged with another process's energy, ``broker/frames.py``)."""
        if self._connections:
            self._publish_frame(Frame(number, messages))
        self.heartbeats.beat_due(trio.current_time())

    def _publish_frame(self, frame: Frame) -> None:
        number = frame.number
        debug = log.isEnabledFor(logging.DEBUG)
        data, messages = frame.data, len(frame.framed)
        size = len(data)
        behind = []
        for connection in self._connections.values():
            # The common case first, and as short as it can be: one look, one C-level send
            # (the port's frame_send). The lane is open only where the whole frame, framed
            # once, is what the client takes (docs/decisions.md, "The frame lane").
            send = connection.frame_lane
            if send is None:
                if not connection.write_frame_now(frame, debug):
                    behind.append(connection)
                continue
            try:
                written = send(data)
            except BlockingIOError:
                written = 0
            except OSError:
                written = -1  # the ordinary path meets the error and ends the connection
            if written != size and not connection.port.wrote(data, written, 0):
                behind.append(connection)  # nothing taken: it waits in the slot
                continue
            connection.lane_messages += messages
            if debug:
                log.debug("connection %s sent frame %d", connection.id, number)
        # Clients that are behind get the frame in their slot only once every other client
        # has been written to: a slow client does not delay the others by even a slot swap.
        for connection in behind:
            connection.offer_frame(frame)
        self.frames_published += 1

    def publish(self, event: Event, text: str | None = None) -> None:
        """Encode a lossless event once (unless ``text`` is its encoding already, as another
        process sent it through the broker) and queue it for every subscribed connection."""
        if not self._connections:
            return
        if text is None:
            text = encode(event)
        topic = topic_of(event)
        for connection in self._connections.values():
            connection.deliver(topic, text, event)

    @property
    def frames_replaced(self) -> int:
        """Frames superseded in a slot before their writer took them, closed connections too."""
        open_now = sum(c.mailbox.frames_replaced for c in self._connections.values())
        return self._replaced_by_closed + open_now

    def abort_remaining(self) -> int:
        """Shut down the sockets of connections still open (writers stuck on peers that do
        not read, which no close frame can reach); how many were found."""
        return shutdown_sockets(c.addresses for c in self._connections.values() if c.addresses)

    async def close_all(self, code: int, reason: str) -> None:
        """Ask every connection to close with ``code`` and wait until they have (callers bound
        the wait: a client that stopped reading may never take its close frame)."""
        if not self._connections:
            return
        log.info("closing %d connection(s) with %d (%s)", len(self._connections), code, reason)
        for connection in list(self._connections.values()):
            connection.request_close(code, reason)
        await self._emptied.wait()
