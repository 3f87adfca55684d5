"""The seam: the one module that knows the insides of Hypercorn, wsproto, Quart and Trio.

Everything here reaches past a library's public API, so everything here is switched on only
where it was tested: :func:`gate` compares the installed versions with :data:`TESTED` once
per process, and each connection's objects are checked by type again when it opens. Where
either check fails, a connection gets :class:`~.port.OrdinaryPort` and is served through
ASGI's ``send``, as by any ASGI server; the log says why once, and ``/status`` says which
path is in use (``sendPath``). The rest of the transport only sees :class:`~.port.SocketPort`.

What this module does, each undone when the connection ends (docs/decisions.md, "The send
path: one seam"):

- :class:`DirectSocket` writes whole messages to the socket from the task that publishes
  them when nothing is queued and the socket is free, and finishes a write the socket cut
  short before anything else goes out (it replaces Hypercorn's send lock with a semaphore
  of one that the connection's writer can release).
- It reads small whole client messages from the bytes Hypercorn read, and the next bytes
  beneath Hypercorn's read loop, handing anything else to Hypercorn from a frame boundary.
- :func:`_answer_parse_faults` makes Hypercorn send the close frame RFC 6455 §7.1.7 asks
  for when wsproto cannot parse a client frame (it marks wsproto's state as closing).
- :class:`LeanWebsocket` and :class:`LeanASGIWebsocketConnection` skip the per-message work of
  Quart's defaults that this server does not use.
- :func:`patch_hypercorn_worker` has Hypercorn's trio worker wait for its shutdown Event in a
  thread instead of polling it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple, Protocol

import trio
from quart import websocket as current_websocket
from quart.wrappers import base as quart_base
from quart_trio.asgi import TrioASGIWebsocketConnection
from quart_trio.wrappers.websocket import TrioWebsocket
from werkzeug.local import LocalProxy

from ..protocol.rfc6455 import SMALL_PAYLOAD, leading_texts, text_frame
from .connection import ClientGone
from .port import OrdinaryPort, PortOwner, SendPath, SocketPort

_INTERNALS_MISSING = ""
try:
    from hypercorn.events import RawData
    from hypercorn.protocol import ProtocolWrapper
    from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
    from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
    from hypercorn.trio.tcp_server import TCPServer
    from wsproto.connection import Connection as WsConnection
    from wsproto.connection import ConnectionState
    from wsproto.events import CloseConnection, TextMessage
    from wsproto.frame_protocol import Buffer, FrameDecoder, FrameProtocol, MessageDecoder
except ImportError as exc:  # pragma: no cover - a release that moved them: the gate says so
    _INTERNALS_MISSING = f"{exc.name or exc}: not where the fast path looks for it"

log = logging.getLogger("wirthforge_trio.transport")

TESTED: Final[Mapping[str, frozenset[str]]] = {
    "hypercorn": frozenset({"0.17.0", "0.18.0"}),
    "wsproto": frozenset({"1.2.0", "1.3.2"}),
    "quart": frozenset({"0.20.0", "0.22.0", "0.23.1"}),
    "quart-trio": frozenset({"0.12.0", "0.13.0"}),
}
"""The releases the end-to-end tests passed on with the fast path: today's on Python 3.11
(quart-trio 0.12 with Quart 0.22) and 3.13 (quart-trio 0.13 with Quart 0.23), and the lowest
that pyproject.toml allows (``nox -s lowest``). Any other release of any of them gets the
ordinary path until it is tested and added here."""

_RECEIVE = "websocket.receive"
_MAX_READ = 65536
"""Bytes asked for by one read, as many as Hypercorn asks for."""


class Gate(NamedTuple):
    """Whether connections get the fast path, and why (for the log and ``/status``)."""

    path: SendPath
    reason: str


@functools.cache
def _versions_gate() -> Gate:
    if _INTERNALS_MISSING:
        return Gate("asgi", _INTERNALS_MISSING)
    for name, tested in TESTED.items():
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return Gate("asgi", f"{name} is not installed")
        if version not in tested:
            return Gate("asgi", f"{name} {version} is not among the tested {sorted(tested)}")
    return Gate("direct", "hypercorn, wsproto, quart and quart-trio are tested releases")


def gate(direct_writes: bool = True) -> Gate:
    """The send path for this process's connections: the installed versions, read once,
    and the ``direct_writes`` setting (``WIRTHFORGE_DIRECT_WRITES=0`` forces ASGI)."""
    if not direct_writes:
        return Gate("asgi", "direct writes are off (WIRTHFORGE_DIRECT_WRITES=0)")
    return _versions_gate()


# -- Quart's WebSocket classes --------------------------------------------------------------

# Quart 0.23 ends a pending ``receive`` with this error when the client disconnects (0.22
# only cancels the handler); a Quart without it never raises it.
_QUART_DISCONNECTED: type[BaseException] = getattr(
    quart_base, "ClientDisconnectedError", ClientGone
)


class LeanWebsocket(TrioWebsocket):
    """Quart's WebSocket whose ``send`` goes straight to ASGI's once the handshake is done
    (Quart's own awaits ``accept()`` and builds headers on every message), on tested
    releases; either way a client that has left raises :class:`ClientGone`."""

    _lean_accepted = False
    asgi_send: Callable[..., Awaitable[None]] | None = None
    """The server's ASGI ``send`` callable (:func:`attach` looks behind it)."""

    async def accept(self, headers: Any = None, subprotocol: str | None = None) -> None:
        await super().accept(headers, subprotocol)
        self._lean_accepted = _versions_gate().path == "direct"

    async def send(self, data: str | bytes) -> None:
        try:
            if self._lean_accepted:
                await self._send(data)
            elif isinstance(data, str):
                await super().send(data)
            else:
                await super().send(data)
        except _QUART_DISCONNECTED:
            raise ClientGone from None

    async def receive(self) -> str | bytes:
        try:
            return await super().receive()
        except _QUART_DISCONNECTED:
            raise ClientGone from None


class LeanASGIWebsocketConnection(TrioASGIWebsocketConnection):
    """The ASGI side of a WebSocket, without the ``websocket_sent`` signal per message
    (nobody here listens to it) on tested releases."""

    def _create_websocket_from_scope(self, send: Any) -> Any:
        websocket = super()._create_websocket_from_scope(send)
        if isinstance(websocket, LeanWebsocket):
            websocket.asgi_send = send
        return websocket

    async def send_data(self, send: Any, data: str | bytes) -> None:
        if _versions_gate().path != "direct" or getattr(self, "_disconnected", False):
            # Newer Quart raises its own error for a send after the client left: keep it.
            await super().send_data(send, data)
        elif isinstance(data, str):
            await send({"type": "websocket.send", "bytes": None, "text": data})
        else:
            await send({"type": "websocket.send", "bytes": data, "text": None})


# -- finding Hypercorn's objects ------------------------------------------------------------


def _ws_stream_of(asgi_send: Callable[..., Any]) -> WSStream | None:
    """Hypercorn's WebSocket stream behind its ASGI ``send`` (Quart 0.23 wraps it with
    functools.wraps to translate errors: its sends still go through the wrapper)."""
    ws_stream = getattr(inspect.unwrap(asgi_send), "__self__", None)
    return ws_stream if isinstance(ws_stream, WSStream) else None


def _tcp_server_of(ws_stream: WSStream) -> TCPServer | None:
    """The TCP server of a WebSocket over HTTP/1.1 (HTTP/2 keeps the ordinary path)."""
    protocol = getattr(ws_stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    tcp_server = getattr(protocol.send, "__self__", None)
    return tcp_server if isinstance(tcp_server, TCPServer) else None


class _ReadState:
    """The parsers a client message passes through in Hypercorn's reading task, each checked
    by type, so that :meth:`between_messages` can tell when none of them holds a part of one."""

    __slots__ = ("frames", "frames_buffer", "h11", "limit", "messages", "reads_here", "wrapper")

    def __init__(self, ws_stream: WSStream, tcp_server: TCPServer) -> None:
        wrapper = tcp_server.protocol
        if not (isinstance(wrapper, ProtocolWrapper) and isinstance(wrapper.protocol, H11Protocol)):
            raise LookupError("not Hypercorn's HTTP/1.1 protocol")
        h11 = wrapper.protocol.connection
        proto = ws_stream.connection._proto
        frames = proto._frame_decoder
        messages = proto._message_decoder
        if not (
            wrapper.protocol.stream is ws_stream
            and isinstance(h11, H11WSConnection)
            and isinstance(h11.buffer, bytearray)
            and isinstance(proto, FrameProtocol)
            and isinstance(frames, FrameDecoder)
            and isinstance(frames.buffer, Buffer)
            and isinstance(messages, MessageDecoder)
            and isinstance(ws_stream.buffer.max_length, int)
        ):
            raise LookupError("not the Hypercorn and wsproto this was written for")
        self.wrapper = wrapper
        self.h11 = h11
        self.frames = frames
        self.frames_buffer = frames.buffer
        self.messages = messages
        self.limit = min(SMALL_PAYLOAD, ws_stream.buffer.max_length)
        self.reads_here = tcp_server.config.read_timeout is None
        """Whether the next bytes may be read here (with Hypercorn's read timeout in force,
        every read stays Hypercorn's)."""

    def between_messages(self, ws: WSStream) -> bool:
        """Whether the WebSocket is open and no parser holds part of a frame or a message:
        then bytes that start with a whole frame can be parsed from that frame on."""
        connection = ws.connection
        return (
            ws.state is ASGIWebsocketState.CONNECTED
            and not ws.closed
            and connection.state is ConnectionState.OPEN
            and not connection._events
            and ws.buffer.value is None
            and not self.h11.buffer
            and self.frames.header is None
            and not len(self.frames_buffer)
            and self.messages.opcode is None
        )


class _NoOwner:
    """The owner of a port that serves nobody (before start, after detach)."""

    def lane_changed(self) -> None:
        pass

    def must_flush(self) -> None:
        pass

    def take_inline(self, data: str | bytes | None) -> bool:
        return False

    def parse_fault(self, code: int, reason: str) -> None:
        pass

    def client_closed(self, code: int) -> None:
        pass


_NOBODY: Final = _NoOwner()


class _SendLock:
    """Hypercorn's send lock for one connection, in place of its ``trio.Lock`` (Hypercorn only
    uses ``async with``): a semaphore of one, so that a task other than the one that took it
    may release it (the rest of a write cut short). Invariant: the owner's
    :attr:`DirectSocket.open_and_free` goes off before the lock is waited for, so no other
    task sees it on while a send is on its way."""

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


def _answer_parse_faults(connection: WsConnection, owner: PortOwner) -> Callable[[], None]:
    """Have Hypercorn answer a client frame wsproto cannot parse with a close frame naming
    the fault, reported to ``owner``; returns the undo. wsproto yields ``CloseConnection``
    while still open only on a parse failure (a client's close frame moves its state on
    first), and Hypercorn sends a close frame only in a closing handshake: marking the state
    as closing makes it send one, with the code and reason, before it closes the socket."""
    events = connection.events

    def events_answering_faults() -> Any:
        for event in events():
            if isinstance(event, CloseConnection) and connection.state is ConnectionState.OPEN:
                connection._state = ConnectionState.REMOTE_CLOSING
                owner.parse_fault(event.code, event.reason or "")
            elif isinstance(event, CloseConnection):
                owner.client_closed(event.code)
            yield event

    def stop() -> None:
        vars(connection).pop("events", None)

    connection.events = events_answering_faults  # type: ignore[method-assign]
    return stop


class DirectSocket:
    """The fast path's :class:`~.port.SocketPort`: whole messages written without awaiting,
    client messages read beneath Hypercorn's layers."""

    # Read for every client on every frame: slots keep the lookups short and the object small.
    __slots__ = (
        "_fileno",
        "_followed",
        "_forward",
        "_lock",
        "_owner",
        "_pending",
        "_read",
        "_socket",
        "_undo_faults",
        "_ws",
        "frame_send",
        "messages_read",
        "messages_written",
        "open_and_free",
        "shares_framing",
        "socket_reads",
        "writes_cut_short",
    )

    path: SendPath = "direct"

    def __init__(self, ws_stream: WSStream, tcp_server: TCPServer, raw: socket.socket) -> None:
        self._ws = ws_stream
        self._socket = tcp_server.stream.socket
        # The standard socket's own send and fileno (C): -1 and an error once it is closed,
        # whatever number its descriptor had, as through Trio's wrapper.
        self.frame_send: Callable[[bytes], int] | None = raw.send
        self._fileno = raw.fileno
        self._lock = _SendLock(self)
        self._owner: PortOwner = _NOBODY
        self.open_and_free = False
        """Invariant: while :attr:`_followed`, equal to :meth:`state_allows_writes` (every
        change of that state passes :meth:`refresh`); False otherwise."""
        self._followed = False
        # Without extensions a server's frame is the same bytes for every connection; with
        # permessage-deflate each connection compresses with its own context.
        self.shares_framing = ws_stream.connection._proto.extensions == []
        self._pending: memoryview | None = None
        self._forward: Callable[[Any], Awaitable[None]] | None = None
        self._undo_faults: Callable[[], None] | None = None
        # Parsing client messages from the bytes needs the framing shared and Hypercorn's
        # parsers as checked; without them, messages are still taken as Hypercorn parsed them.
        self._read: _ReadState | None = None
        if self.shares_framing:
            try:
                self._read = _ReadState(ws_stream, tcp_server)
            except LookupError:
                pass
        self.messages_written = 0
        """Messages written by :meth:`write_now` (the owner counts its lane's)."""
        self.messages_read = 0
        self.socket_reads = 0
        """Reads from the socket made here rather than by Hypercorn's read loop."""
        self.writes_cut_short = 0
        tcp_server.send_lock = self._lock  # type: ignore[assignment]

    def state_allows_writes(self) -> bool:
        """Nothing is being sent on the socket (also while the rest of a cut-short write
        waits) and the WebSocket is open in Hypercorn's eyes and in wsproto's."""
        ws = self._ws
        return (
            self._lock.free
            and not ws.closed
            and ws.state is ASGIWebsocketState.CONNECTED
            and ws.connection.state is ConnectionState.OPEN
        )

    def switch(self, on: bool) -> None:
        """Set :attr:`open_and_free`, and tell the owner (every change goes through here)."""
        self.open_and_free = on
        self._owner.lane_changed()

    def refresh(self) -> None:
        """Work out :attr:`open_and_free` again, after a change that may have touched it."""
        self.switch(self._followed and self.state_allows_writes())

    def start(self, owner: PortOwner) -> None:
        """Serve ``owner``: answer parse faults, and offer it each complete client message in
        Hypercorn's reading task, before it goes the ASGI way (three task switches fewer)."""
        self._owner = owner
        self._undo_faults = _answer_parse_faults(self._ws.connection, owner)
        ws = self._ws
        forward = ws.app_put
        if forward is None:
            return
        self._forward = forward

        async def app_put(message: Any) -> None:
            if message.get("type") == _RECEIVE and owner.take_inline(
                message.get("bytes") or message.get("text")
            ):
                return
            await forward(message)

        ws.app_put = app_put
        if self._read is not None:
            self._read_beneath(self._read, app_put)

    def _read_beneath(self, read: _ReadState, app_put: Callable[[Any], Awaitable[None]]) -> None:
        """Stand in for Hypercorn's ``handle``: small whole messages are taken from the bytes,
        and after them the next bytes are read here; anything else goes to Hypercorn from a
        frame boundary, as it came."""
        wrapper = read.wrapper
        parse = wrapper.handle  # Hypercorn's: h11, its WebSocket stream, wsproto
        sock = self._socket
        ws = self._ws

        def hooked() -> bool:
            return vars(wrapper).get("handle") is handle

        async def read_more() -> bytes | None:
            """The next bytes, or None to leave the reading to Hypercorn (the end of the
            stream, an error, a closed socket, or inline reading stopped)."""
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
            while type(event) is RawData and read.between_messages(ws):
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

        wrapper.handle = handle  # type: ignore[method-assign]
        # Every change of the socket's state now passes refresh(): sends through the lock,
        # and whatever the client's bytes do through Hypercorn's parsers, in ``handle``.
        self._followed = True
        self.refresh()

    def detach(self) -> None:
        """Hypercorn's and wsproto's objects no longer refer to the owner (one reference
        cycle fewer for the collector), messages go the ASGI way, and nothing is written."""
        if self._forward is not None:
            self._ws.app_put = self._forward
            self._forward = None
        if self._read is not None:
            vars(self._read.wrapper).pop("handle", None)
        if self._undo_faults is not None:
            self._undo_faults()
            self._undo_faults = None
        self._followed = False
        self.switch(False)
        self._owner = _NOBODY

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def write_now(self, texts: Sequence[str], framed: Sequence[bytes]) -> bool:
        """See :meth:`SocketPort.write_now`. True also when the socket took part of them: the
        rest is held for :meth:`flush` with the socket reserved. A broken socket takes
        nothing, and the ordinary path then meets the error and closes the connection."""
        if not self.open_and_free and (self._followed or not self.state_allows_writes()):
            return False
        fd = self._fileno()
        if fd < 0:
            return False
        if not self.shares_framing:
            send = self._ws.connection.send
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
        """See :meth:`SocketPort.wrote` (also the end of :meth:`write_now`)."""
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
        self._owner.must_flush()
        return True

    async def flush(self) -> None:
        """Send the rest of a message cut short. Cancelled half-way, the stream is beyond
        repair (half a frame is out): shut the socket down so that both ends learn it."""
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


def _attach_direct(asgi_send: Callable[..., Any]) -> DirectSocket | None:
    """The fast path for a WebSocket served by Hypercorn's trio worker over plain TCP and
    HTTP/1.1, each object checked by type, or None (TLS, HTTP/2, another server)."""
    ws_stream = _ws_stream_of(asgi_send)
    if ws_stream is None or ws_stream.app_put is None:
        return None
    tcp_server = _tcp_server_of(ws_stream)
    if tcp_server is None:
        return None
    stream = tcp_server.stream
    lock = tcp_server.send_lock
    if not isinstance(stream, trio.SocketStream) or type(lock) is not trio.Lock:
        return None  # TLS, or a send lock other than the one this was written for
    if lock.locked() or lock.statistics().tasks_waiting:
        return None
    raw = getattr(stream.socket, "_sock", None)
    if not isinstance(raw, socket.socket):
        return None
    try:
        return DirectSocket(ws_stream, tcp_server, raw)
    except AttributeError:  # wsproto's insides differ: nothing was changed yet
        return None


def _faults_only(asgi_send: Callable[..., Any]) -> OrdinaryPort:
    """The ordinary port, still answering parse faults where wsproto is as tested."""
    ws_stream = _ws_stream_of(asgi_send)
    if ws_stream is None or not isinstance(ws_stream.connection, WsConnection):
        return OrdinaryPort()
    connection = ws_stream.connection
    return OrdinaryPort(lambda owner: _answer_parse_faults(connection, owner))


class _Websocket(Protocol):
    async def send(self, data: str) -> None: ...

    async def receive(self) -> str | bytes | None: ...

    async def close(self, code: int, reason: str = "") -> None: ...


def attach(direct_writes: bool) -> tuple[_Websocket, SocketPort]:
    """The current request's accepted WebSocket, and the port its connection writes through:
    the fast path where :func:`gate` and the connection's own objects allow it, else the
    ordinary one."""
    proxy: object = current_websocket
    quart_websocket = proxy._get_current_object() if isinstance(proxy, LocalProxy) else proxy
    if not isinstance(quart_websocket, LeanWebsocket):
        raise TypeError("the app's websocket_class must be LeanWebsocket")
    asgi_send = quart_websocket.asgi_send
    if asgi_send is None or _versions_gate().path != "direct":
        return quart_websocket, OrdinaryPort()
    if gate(direct_writes).path == "direct":
        direct = _attach_direct(asgi_send)
        if direct is not None:
            return quart_websocket, direct
    return quart_websocket, _faults_only(asgi_send)


# -- Hypercorn's trio worker ----------------------------------------------------------------


class _Waitable(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


async def wait_for_event(event: _Waitable, sleep: Callable[[float], Awaitable[Any]]) -> None:
    """Return once the supervisor has set ``event``: blocked in a worker thread (the
    ``multiprocessing`` Event leaves no other way short of polling), which is left behind,
    a daemon blocked until the process exits, if this is cancelled."""
    await trio.to_thread.run_sync(event.wait, abandon_on_cancel=True)


def patch_hypercorn_worker() -> bool:
    """Have Hypercorn's trio worker wait for its shutdown Event in a thread rather than check
    it ten times a second; False, changing nothing, when ``hypercorn.trio.run`` is not loaded
    or its shutdown check is not Hypercorn's own function (docs/decisions.md)."""
    run = sys.modules.get("hypercorn.trio.run")
    utils = sys.modules.get("hypercorn.utils")
    if run is None or utils is None:
        return False
    current = getattr(run, "check_multiprocess_shutdown_event", None)
    if current is wait_for_event:
        return True
    if current is None or current is not getattr(utils, "check_multiprocess_shutdown_event", None):
        return False
    run.check_multiprocess_shutdown_event = wait_for_event  # type: ignore[attr-defined]
    return True


def hypercorn_workers() -> int | None:
    """How many workers the Hypercorn supervisor that started this process runs; None when
    this process is not a worker started by Hypercorn's supervisor (``wirthforge serve``, an
    embedding program, ``hypercorn --workers 0``).

    Hypercorn's supervisor starts each worker with ``multiprocessing`` and hands it its
    Config as a keyword argument of the process, so the number it starts is read there
    (docs/decisions.md, "One worker unless a broker")."""
    import multiprocessing

    process = multiprocessing.current_process()
    target = getattr(process, "_target", None)
    if getattr(target, "__module__", "").split(".")[0] != "hypercorn":
        return None
    config = (getattr(process, "_kwargs", None) or {}).get("config")
    workers = getattr(config, "workers", None)
    return workers if isinstance(workers, int) else None


def in_hypercorn_worker() -> bool:
    """Whether this process is a worker that Hypercorn's supervisor started: the only place
    where :func:`patch_hypercorn_worker` applies."""
    return hypercorn_workers() is not None
