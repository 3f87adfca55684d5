"""The one interface between a connection and its socket, and the ordinary implementation.

The hub and the connection write through a :class:`SocketPort` and nothing else: "write
these messages now if the socket is free, else say no", "write this whole frame now, else
say no", "send the rest of a write cut short", "let go". Two implementations exist. The
fast path (:mod:`wirthforge_trio.transport.fastpath`, the only module that knows the insides
of Hypercorn, wsproto, Quart and Trio) writes to the socket itself. :class:`OrdinaryPort`,
below, always says no, so every message goes through the connection's writer and ASGI's
``send``: the ordinary path is always whole, and is what every connection gets whenever the
fast path is not engaged. See docs/decisions.md, "The send path: one seam".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

SendPath = Literal["direct", "asgi"]


class PortOwner(Protocol):
    """What a port tells the connection that owns it."""

    def lane_changed(self) -> None:
        """Whether whole frames may be written now (:attr:`SocketPort.open_and_free`) changed."""

    def must_flush(self) -> None:
        """A write was cut short: the owner's writer must call :meth:`SocketPort.flush`."""

    def take_inline(self, data: str | bytes | None) -> bool:
        """A client message, offered in the task that read it; False: deliver it the ASGI way."""

    def parse_fault(self, code: int, reason: str) -> None:
        """The client sent a frame that cannot be parsed; it is answered with this close."""

    def client_closed(self, code: int) -> None:
        """The client sent a close frame with ``code`` (which Hypercorn does not pass on)."""


class SocketPort(Protocol):
    """How a connection's messages reach its socket without awaiting, if they can."""

    path: SendPath
    """"direct" when this port writes to the socket itself, "asgi" when it never does."""
    open_and_free: bool
    """Whether a whole frame may be written now: the socket is free and the WebSocket open.
    Each change is told to the owner (:meth:`PortOwner.lane_changed`)."""
    shares_framing: bool
    """Whether a server frame is the same bytes on this connection as on any other (no
    extension such as permessage-deflate): then a frame framed once serves all."""
    messages_written: int
    """Messages this port wrote to the socket itself."""
    messages_read: int
    """Client messages parsed from the bytes read, beneath the server's own parsers."""
    frame_send: Callable[[bytes], int] | None
    """The frame lane's write: a standard socket's ``send``, for a whole frame framed once
    for all, to be called only while :attr:`open_and_free` and :attr:`shares_framing` hold
    (the owner's lane folds them in). A write it does not take whole is handed to
    :meth:`wrote`. None where the port never writes."""

    @property
    def pending(self) -> bool:
        """Whether part of a message was written and the rest must go out first (flush)."""

    def start(self, owner: PortOwner) -> None:
        """Begin serving ``owner``; undone by :meth:`detach`."""

    def write_now(self, texts: Sequence[str], framed: Sequence[bytes]) -> bool:
        """Write whole messages now if the socket is free (``framed``: the same texts framed
        once for every connection, or empty). False: nothing was written, queue them."""

    def wrote(self, data: bytes, written: int, messages: int) -> bool:
        """Account for a write of ``data`` through :attr:`frame_send` that took ``written``
        bytes (-1: it failed), ``messages`` of them counted here. True: taken (the rest, if
        any, goes out by :meth:`flush` first); False: nothing was, leave it in the slot."""

    async def flush(self) -> None:
        """Send the rest of a write cut short, then free the socket for other writes."""

    def detach(self) -> None:
        """Stop serving the owner: nothing refers to it any more, and nothing is written."""


def _no_undo() -> None:
    pass


class OrdinaryPort:
    """The port without a fast path: it never writes, so everything takes the ASGI way.

    ``hooks``, when given, is run by :meth:`start` and returns its own undo: how the seam adds
    what does not depend on direct writes (answering parse faults) without a port of its own.
    """

    __slots__ = ("_hooks", "_undo", "messages_read", "messages_written")

    frame_send: Callable[[bytes], int] | None = None

    path: SendPath = "asgi"
    open_and_free = False
    shares_framing = False
    pending = False

    def __init__(self, hooks: Callable[[PortOwner], Callable[[], None]] | None = None) -> None:
        self._hooks = hooks
        self._undo: Callable[[], None] = _no_undo
        self.messages_written = 0
        self.messages_read = 0

    def start(self, owner: PortOwner) -> None:
        if self._hooks is not None:
            self._undo = self._hooks(owner)

    def write_now(self, texts: Sequence[str], framed: Sequence[bytes]) -> bool:
        return False

    def wrote(self, data: bytes, written: int, messages: int) -> bool:
        return False

    async def flush(self) -> None:
        return None

    def detach(self) -> None:
        undo, self._undo = self._undo, _no_undo
        undo()
