"""Writing a message straight to a connection's socket when nothing is queued ahead of it.

Through ASGI, every send goes Quart → Hypercorn's ``WSStream`` → its h11 protocol → its TCP
server, which takes a per-connection lock and awaits the socket: three trips through Trio's
scheduler per message, on top of waking the connection's writer task. At 60 frames a second
to every client that was most of the server's CPU (``docs/benchmarks/README.md``). Yet almost
always nobody is behind: the socket has room and the writer has nothing queued. Then the
frame can be written at once, synchronously, from the task that publishes it, as the
``websockets`` library's ``broadcast()`` does.

``DirectSocket.attach`` finds Hypercorn's objects behind the ASGI ``send`` callable and checks
every one of them by type; with any other server, a TLS stream, HTTP/2 or a Hypercorn whose
insides differ, it returns None and the connection keeps the ordinary path. It swaps the
TCP server's send lock for a semaphore of one (the same ``async with`` for Hypercorn), so
that a write cut short by a full socket can keep the socket reserved until the connection's
own writer task has sent the rest: bytes of two messages never interleave. The lock also
keeps one switch, ``open_and_free``, that every frame's write reads instead of the state of
four objects; each change of it is passed on (``on_switch``) to the connection, which folds it
with its own state into the one attribute the hub reads for every frame (``frame_socket``).

The same objects serve the other direction: ``receive_inline`` lets the connection handle a
complete client message in Hypercorn's reading task, instead of after two more task switches
through Quart's message pump and the connection's reader. What clients send is small: a
heartbeat response, a ping. When the bytes Hypercorn read are such messages, whole, and
nothing is half-parsed in Hypercorn's or wsproto's buffers, they are taken from the bytes
directly (``leading_texts``) instead of through Hypercorn's h11 and WebSocket layers and
wsproto's parser: 50-70 µs less per message on a machine where they run cold.
Anything else (a control frame, a fragment, a longer or invalid message, a frame cut across
two reads) goes to Hypercorn as it came, from a frame boundary.

When all the bytes read were taken that way, the next bytes are read right there, beneath
Hypercorn's read loop: a wait for the socket and one ``recv``, instead of Hypercorn's timeout
scope and Trio's stream and socket layers (20-55 µs less per client message, measured
alone). Whatever is not a whole small message, the end of the stream, an error or a closed
socket returns the reading to Hypercorn, which then reads (or meets) it itself.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from hypercorn.events import RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState
from wsproto.events import TextMessage
from wsproto.frame_protocol import Buffer, FrameDecoder, FrameProtocol, MessageDecoder

_CONNECTED = ASGIWebsocketState.CONNECTED
_OPEN = ConnectionState.OPEN
_FIN_TEXT = 0x81
"""First byte of an unfragmented text frame (FIN and opcode 1)."""
_RECEIVE = "websocket.receive"
_MASKED = 0x80
"""Second byte's mask bit: set in every frame a client sends (RFC 6455 §5.3)."""
_MAX_READ = 65536
"""Bytes asked for by one read, as many as Hypercorn asks for."""
SMALL_PAYLOAD = 125
"""The longest payload whose length fits the frame's second byte (no extended length)."""


def _text_header(n: int) -> bytes:
    if n < 126:
        return bytes((_FIN_TEXT, n))
    if n < 65536:
        return bytes((_FIN_TEXT, 126)) + n.to_bytes(2, "big")
    return bytes((_FIN_TEXT, 127)) + n.to_bytes(8, "big")


_TEXT_HEADERS: tuple[bytes, ...] = tuple(_text_header(n) for n in range(1024))
"""The header of every text frame up to 1 KiB, made once: a frame is built on every tick,
with caches gone cold since the last, and a lookup touches less than building it does."""


def text_frame(payload: bytes) -> bytes:
    """One unmasked WebSocket text frame (RFC 6455 §5.2), as a server sends it."""
    n = len(payload)
    return (_TEXT_HEADERS[n] if n < 1024 else _text_header(n)) + payload


def _unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    mask = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little"
    )


def leading_texts(data: bytes, limit: int = SMALL_PAYLOAD) -> tuple[list[str], int]:
    """The whole text messages at the start of ``data`` as a client sends them (masked,
    unfragmented, no extension bits, at most ``limit`` ≤ 125 bytes of valid UTF-8), and how
    many bytes they took. Parsing stops at the first frame that is anything else, or not
    all there: the rest, from that frame's first byte, is for a full parser (wsproto)."""
    texts: list[str] = []
    at = 0
    end = len(data)
    while at + 6 <= end and data[at] == _FIN_TEXT:
        length = data[at + 1] - _MASKED
        if length < 0 or length > limit:
            break
        start = at + 6
        stop = start + length
        if stop > end:
            break
        try:
            texts.append(_unmask(data[start:stop], data[at + 2 : start]).decode())
        except UnicodeDecodeError:
            break  # a protocol error: wsproto reports it, and Hypercorn ends the connection
        at = stop
    return texts, at


def hypercorn_websocket(asgi_send: Callable[..., Any]) -> WSStream | None:
    """Hypercorn's WebSocket stream behind its ASGI ``send``, or None (another server)."""
    # Quart may wrap Hypercorn's ``send`` (functools.wraps: 0.23 turns OSError into its own
    # error); the direct path looks at what is wrapped, its sends go through the wrapper.
    ws_stream = getattr(inspect.unwrap(asgi_send), "__self__", None)
    return ws_stream if isinstance(ws_stream, WSStream) else None


def _hypercorn_parts(asgi_send: Callable[..., Any]) -> tuple[Any, Any] | None:
    """(WSStream, TCPServer) behind Hypercorn's ASGI send, each checked by type, or None."""
    ws_stream = hypercorn_websocket(asgi_send)
    if ws_stream is None:
        return None
    protocol = getattr(getattr(ws_stream, "send", None), "__self__", None)
    if not isinstance(protocol, H11Protocol):  # HTTP/2 WebSockets keep the ordinary path
        return None
    tcp_server = getattr(getattr(protocol, "send", None), "__self__", None)
    if not isinstance(tcp_server, TCPServer):
        return None
    return ws_stream, tcp_server


class _ReadState:
    """The parsers a client message passes through in Hypercorn's reading task, each checked
    by type, so that :meth:`between_messages` can tell when none of them holds a part of one."""

    __slots__ = (
        "frames",
        "frames_buffer",
        "h11",
        "limit",
        "messages",
        "reads_here",
        "wrapper",
        "ws",
    )

    ws: Any
    wrapper: Any

    def __init__(self, ws_stream: Any, tcp_server: Any) -> None:
        wrapper = getattr(tcp_server, "protocol", None)
        h11 = getattr(getattr(wrapper, "protocol", None), "connection", None)
        proto = getattr(getattr(ws_stream, "connection", None), "_proto", None)
        frames = getattr(proto, "_frame_decoder", None)
        messages = getattr(proto, "_message_decoder", None)
        limit = getattr(getattr(ws_stream, "buffer", None), "max_length", None)
        config = getattr(tcp_server, "config", None)
        if not (
            isinstance(wrapper, ProtocolWrapper)
            and isinstance(wrapper.protocol, H11Protocol)
            and wrapper.protocol.stream is ws_stream
            and isinstance(h11, H11WSConnection)
            and isinstance(h11.buffer, bytearray)
            and isinstance(proto, FrameProtocol)
            and isinstance(frames, FrameDecoder)
            and isinstance(frames.buffer, Buffer)
            and isinstance(messages, MessageDecoder)
            and isinstance(limit, int)
            and hasattr(config, "read_timeout")
        ):
            raise LookupError("not the Hypercorn and wsproto this was written for")
        self.wrapper = wrapper
        self.ws = ws_stream
        self.h11 = h11
        self.frames = frames
        self.frames_buffer = frames.buffer
        self.messages = messages
        self.limit = min(SMALL_PAYLOAD, limit)
        self.reads_here = getattr(config, "read_timeout", 0) is None
        """Whether the next bytes may be read here (Hypercorn's read timeout is not in force;
        with one, every read stays Hypercorn's)."""

    def between_messages(self) -> bool:
        """Whether the WebSocket is open and no parser holds part of a frame or a message:
        then bytes that start with a whole frame can be parsed from that frame on."""
        ws = self.ws
        connection = ws.connection
        return (
            ws.state is _CONNECTED
            and not ws.closed
            and connection.state is _OPEN
            and not connection._events
            and ws.buffer.value is None
            and not self.h11.buffer
            and self.frames.header is None
            and not len(self.frames_buffer)
            and self.messages.opcode is None
        )


class _SendLock:
    """Hypercorn's send lock for one connection, in place of its ``trio.Lock`` (Hypercorn only
    uses ``async with``): a semaphore of one, so that a task other than the one that took it
    may release it (the rest of a write cut short), which also keeps its owner's
    :attr:`DirectSocket.open_and_free` up to date. The switch goes off before the lock is
    waited for, so no other task sees it on while a send is on its way."""

    __slots__ = ("_owner", "_semaphore")

    def __init__(self, owner: DirectSocket) -> None:
        self._owner = owner
        self._semaphore = trio.Semaphore(1, max_value=1)

    @property
    def free(self) -> bool:
        return self._semaphore.value == 1

    async def __aenter__(self) -> None:
        self._owner.switch(False)
        try:
            await self._semaphore.acquire()
        except BaseException:
            self._owner.refresh()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def acquire_nowait(self) -> None:
        self._semaphore.acquire_nowait()
        self._owner.switch(False)

    def release(self) -> None:
        self._semaphore.release()
        self._owner.refresh()


class DirectSocket:
    """The socket of one WebSocket, for whole messages written without awaiting."""

    # Read for every client on every frame: slots keep the lookups short and the object small.
    __slots__ = (
        "_connection",
        "_fileno",
        "_followed",
        "_forward",
        "_lock",
        "_pending",
        "_read",
        "_socket",
        "_ws_stream",
        "messages_read",
        "messages_written",
        "on_cut_short",
        "on_switch",
        "open_and_free",
        "raw_socket",
        "shares_framing",
        "socket_reads",
        "writes_cut_short",
    )

    def __init__(
        self,
        ws_stream: Any,
        socket_: trio.socket.SocketType,
        tcp_server: Any = None,
    ):
        self._ws_stream = ws_stream
        self._connection = ws_stream.connection
        self._socket = socket_
        raw = getattr(socket_, "_sock", None)
        self.raw_socket: socket.socket | None = raw if isinstance(raw, socket.socket) else None
        """The standard socket beneath Trio's, whose ``send`` writes a frame for the hub
        (and fails once the socket is closed, whatever number its descriptor had)."""
        # The standard socket's own fileno (C) rather than Trio's wrapper method: looked up for
        # every write, and -1 once the socket is closed, as through the wrapper.
        self._fileno: Callable[[], int] = (raw or socket_).fileno
        self._lock = _SendLock(self)
        """The socket's send lock, shared with Hypercorn (``attach`` installs it)."""
        self.open_and_free = False
        """Whether nothing is being sent on the socket and the WebSocket is open in
        Hypercorn's eyes and in wsproto's: read for every client on every frame, in place of
        four objects' state. Kept only while every change of that state passes
        :meth:`refresh` (see :meth:`receive_inline`); False otherwise."""
        self._followed = False
        # Without extensions a server's frame is the same bytes for every connection, so a
        # frame's messages are framed once for all (``text_frame``). With permessage-deflate
        # each connection compresses with its own context: wsproto frames them.
        extensions = getattr(getattr(self._connection, "_proto", None), "extensions", None)
        self.shares_framing = extensions == []
        self._pending: memoryview | None = None
        self._forward: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        """Hypercorn's own ``app_put`` while :meth:`receive_inline` stands in for it."""
        # Parsing client messages from the bytes read needs the framing shared (no extension
        # may have a say in how a frame reads), and Hypercorn's parsers as this was written for;
        # without either, messages are still taken inline, after Hypercorn has parsed them.
        self._read: _ReadState | None = None
        if self.shares_framing and tcp_server is not None:
            try:
                self._read = _ReadState(ws_stream, tcp_server)
            except LookupError:
                pass
        self.on_cut_short: Callable[[], None] = lambda: None
        """Called when a write was cut short: whoever owns the connection must :meth:`flush`."""
        self.on_switch: Callable[[], None] = lambda: None
        """Called after every change of :attr:`open_and_free` (by :meth:`switch`)."""
        self.messages_written = 0
        self.messages_read = 0
        """Client messages parsed from the bytes read, beneath Hypercorn's layers."""
        self.socket_reads = 0
        """Reads from the socket made here rather than by Hypercorn's read loop."""
        self.writes_cut_short = 0

    @classmethod
    def attach(cls, asgi_send: Callable[..., Any]) -> DirectSocket | None:
        """The direct path for an accepted WebSocket served by Hypercorn's trio worker over
        plain TCP and HTTP/1.1, or None (the caller keeps the ordinary path)."""
        parts = _hypercorn_parts(asgi_send)
        if parts is None:
            return None
        ws_stream, tcp_server = parts
        stream = getattr(tcp_server, "stream", None)
        lock = getattr(tcp_server, "send_lock", None)
        if not isinstance(stream, trio.SocketStream) or not isinstance(lock, trio.Lock):
            return None  # TLS, or a different send lock than the one this was written for
        if lock.locked() or lock.statistics().tasks_waiting:
            return None
        if getattr(ws_stream, "connection", None) is None or not callable(
            getattr(ws_stream, "app_put", None)
        ):
            return None
        direct = cls(ws_stream, stream.socket, tcp_server)
        tcp_server.send_lock = direct._lock
        return direct

    def state_allows_writes(self) -> bool:
        """Nothing is being sent on the socket (also while the rest of a cut-short write
        waits) and the WebSocket is open in Hypercorn's eyes and in wsproto's."""
        ws = self._ws_stream
        return (
            self._lock.free
            and not ws.closed
            and ws.state is _CONNECTED
            and self._connection.state is _OPEN
        )

    def switch(self, on: bool) -> None:
        """Set :attr:`open_and_free`, and tell the owner (every change goes through here)."""
        self.open_and_free = on
        self.on_switch()

    def refresh(self) -> None:
        """Work out :attr:`open_and_free` again, after a change that may have touched it."""
        self.switch(self._followed and self.state_allows_writes())

    def receive_inline(self, take: Callable[[str | bytes | None], bool]) -> None:
        """Offer each complete client message to ``take`` in Hypercorn's reading task, before
        it goes the ASGI way; ``take`` returns False to let it go that way after all. Undone
        by :meth:`stop_receiving_inline`, which the owner must call when it is done.

        Through ASGI a message passes three tasks (Hypercorn's reader, Quart's message pump,
        the connection's reader), each a trip through Trio's scheduler; handled here it takes
        none. The message is what Quart would hand on: its bytes, else its text (None for an
        empty binary message). Small text messages are parsed from the bytes Hypercorn read
        when they can be (see the module's docstring), the rest by Hypercorn and wsproto."""
        ws = self._ws_stream
        forward = self._forward = ws.app_put

        async def app_put(message: dict[str, Any]) -> None:
            if message.get("type") == _RECEIVE and take(
                message.get("bytes") or message.get("text")
            ):
                return
            await forward(message)

        ws.app_put = app_put
        read = self._read
        if read is None:
            return
        wrapper = read.wrapper
        parse = wrapper.handle  # Hypercorn's: h11, its WebSocket stream, wsproto
        sock = self._socket

        def hooked() -> bool:
            """Whether ``handle`` still stands in for Hypercorn's (not stopped)."""
            return vars(wrapper).get("handle") is handle

        async def read_more() -> bytes | None:
            """The next bytes from the socket, or None to leave the reading to Hypercorn
            (the end of the stream, an error, a closed socket, or inline reading stopped)."""
            while hooked():
                try:
                    await trio.lowlevel.wait_readable(sock)
                    data = os.read(sock.fileno(), _MAX_READ)
                    self.socket_reads += 1
                except BlockingIOError:
                    continue
                except (OSError, trio.ClosedResourceError, trio.BusyResourceError):
                    return None
                return data or None  # at the end, Hypercorn reads the end itself
            return None

        async def handle(event: Any) -> None:
            while type(event) is RawData and read.between_messages():
                data = event.data
                texts, used = leading_texts(data, read.limit)
                if not used:
                    break
                self.messages_read += len(texts)
                for text in texts:  # as Hypercorn would have put them
                    await app_put({"type": _RECEIVE, "bytes": None, "text": text})
                if used < len(data):
                    event = RawData(data=data[used:])
                    break
                if not read.reads_here:
                    return
                more = await read_more()
                if more is None:
                    return
                if not hooked():  # stopped while waiting
                    await parse(RawData(data=more))
                    return
                event = RawData(data=more)
            # Hypercorn's parsers may close the WebSocket, or send (a pong, a close) and
            # yield on the way: until they are done, writes check the state itself.
            self._followed = False
            self.switch(False)
            try:
                await parse(event)
            finally:
                if hooked():
                    self._followed = True
                    self.refresh()

        wrapper.handle = handle
        # Every change of the socket's state now passes refresh(): sends through the lock,
        # and whatever the client's bytes do through Hypercorn's parsers, in ``handle``.
        self._followed = True
        self.refresh()

    def stop_receiving_inline(self) -> None:
        """Every message goes the ASGI way again, and Hypercorn's objects no longer refer to
        ``take`` (nor, through it, to its owner): one reference cycle fewer for the garbage
        collector when the connection is gone."""
        if self._forward is not None:
            self._ws_stream.app_put = self._forward
            self._forward = None
            if self._read is not None:
                vars(self._read.wrapper).pop("handle", None)
                self._followed = False
                self.switch(False)

    @property
    def pending(self) -> bool:
        """Whether a message was cut short and its rest still has to go out first."""
        return self._pending is not None

    def write_now(self, texts: Sequence[str], framed: Sequence[bytes]) -> bool:
        """Write whole messages now, if nothing is being sent on this socket and the WebSocket
        is open in Hypercorn's eyes and in wsproto's. ``framed``: the same texts as unmasked
        frames, shared by every connection without extensions (empty: frame them here).

        True when they are taken: all written, or the rest held for :meth:`flush` with the
        socket reserved (``on_cut_short`` is called to have it sent). False when nothing was
        written and the caller should queue them for the ordinary path: the socket is busy or
        full (and the framing shared, so nothing has been committed), or broken (then the
        ordinary path meets the error and closes the connection as it always does)."""
        if not self.open_and_free and (self._followed or not self.state_allows_writes()):
            return False
        fd = self._fileno()
        if fd < 0:
            return False
        if not self.shares_framing:
            send = self._connection.send
            data = b"".join(send(TextMessage(data=text)) for text in texts)
        elif len(framed) == 1:
            data = framed[0]
        elif framed:
            data = b"".join(framed)
        else:
            data = b"".join(text_frame(text.encode()) for text in texts)
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            written = -1
        return self.wrote(data, written, len(texts))

    def wrote(self, data: bytes, written: int, messages: int) -> bool:
        """Account for a write of ``data`` (``messages`` whole messages) that took
        ``written`` bytes (-1: it failed); what :meth:`write_now` returns for it."""
        if written == len(data):
            self.messages_written += messages
            return True
        if written < 0 or (written == 0 and self.shares_framing):
            return False
        # Part of a frame is on the wire (or deflate's context already holds the messages):
        # nothing else may be sent on this socket until the rest is.
        self.messages_written += messages
        self._lock.acquire_nowait()
        self._pending = memoryview(data)[written:]
        self.writes_cut_short += 1
        self.on_cut_short()
        return True

    async def flush(self) -> None:
        """Send the rest of a message that was cut short, then free the socket for others.
        Cancelled half-way, the stream is beyond repair (half a frame is out): shut the socket
        down so that both ends learn it at once, rather than leave it hanging."""
        try:
            while self._pending is not None and len(self._pending):
                await trio.lowlevel.wait_writable(self._socket)
                try:
                    written = os.write(self._socket.fileno(), self._pending)
                except BlockingIOError:
                    continue
                self._pending = self._pending[written:]
        except (OSError, trio.ClosedResourceError):
            pass  # the peer is gone: the ordinary path reports it
        except BaseException:
            self._shut_down()
            raise
        finally:
            if self._pending is not None:
                self._pending = None
                self._lock.release()

    def _shut_down(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
