"""Messages written straight to the socket (transport/fastpath.py, its bytes framed by
protocol/rfc6455.py): the same bytes a client would get through ASGI, the path engaged under
Hypercorn's trio worker on tested releases only, and a write that the socket cuts short
finished before anything else goes out, so no two messages interleave."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import logging
import random
import socket
import string
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from tests.support.checks import check_message
from tests.support.instruments import StepCounter
from tests.support.server import (
    ORDINARY_PATH_FORCED,
    RunningServer,
    needs_fast_path,
    start_server,
    test_settings,
)
from tests.support.waits import eventually
from wirthforge_trio.protocol.rfc6455 import leading_texts, text_frame
from wirthforge_trio.transport import fastpath
from wirthforge_trio.transport.fastpath import DirectSocket


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 1023, 1024, 65535, 65536, 70000])
@pytest.mark.parametrize("char", ["x", "é"])
def test_a_text_frame_is_what_wsproto_would_send(size: int, char: str) -> None:
    """Byte lengths on both sides of every boundary: the second byte's, the table of headers
    (1 KiB), the 16-bit length's; in one and two bytes a character."""
    text = (char * size).encode()[:size].decode(errors="ignore")
    server = Connection(ConnectionType.SERVER)
    assert text_frame(text.encode()) == server.send(TextMessage(data=text))


# What a client may send: small texts (the parsed kind), and everything that must be left
# to wsproto: longer texts, binary, control frames, a message in fragments.
client_events = st.lists(
    st.one_of(
        st.text(max_size=40).map(lambda t: [TextMessage(data=t)]),
        st.text(min_size=126, max_size=200).map(lambda t: [TextMessage(data=t)]),
        st.binary(max_size=20).map(lambda b: [BytesMessage(data=b)]),
        st.binary(max_size=10).map(lambda b: [Ping(payload=b)]),
        st.tuples(st.text(max_size=10), st.text(max_size=10)).map(
            lambda p: [
                TextMessage(data=p[0], message_finished=False),
                TextMessage(data=p[1], message_finished=True),
            ]
        ),
    ),
    max_size=8,
)


def wsproto_reads(data: bytes) -> list[tuple[str, object]]:
    """Every message a server would see in ``data``, by wsproto (pieces joined)."""
    server = Connection(ConnectionType.SERVER)
    server.receive_data(data)
    seen: list[tuple[str, object]] = []
    partial: list[Any] = []
    for event in server.events():
        if isinstance(event, Message):
            partial.append(event.data)
            if event.message_finished:
                kind = "text" if isinstance(event, TextMessage) else "bytes"
                seen.append((kind, "".join(partial) if kind == "text" else b"".join(partial)))
                partial = []
        elif isinstance(event, Ping):
            seen.append(("ping", event.payload))
        else:
            assert not isinstance(event, CloseConnection), event
    return seen


@given(client_events, st.integers(min_value=0, max_value=10_000))
def test_client_messages_parsed_from_the_bytes_are_what_wsproto_reads(
    groups: list[list[Event]], cut: int
) -> None:
    """The small text frames at the start are taken, the rest is left from a frame boundary:
    together, what wsproto reads from the whole; and of bytes cut anywhere, only frames that
    are all there (random masks, as a client's wsproto chooses them)."""
    client = Connection(ConnectionType.CLIENT)
    data = b"".join(client.send(event) for group in groups for event in group)
    texts, used = leading_texts(data)
    assert [("text", t) for t in texts] + wsproto_reads(data[used:]) == wsproto_reads(data)
    cut = min(cut, len(data))
    cut_texts, cut_used = leading_texts(data[:cut])
    assert cut_used <= used and cut_texts == texts[: len(cut_texts)]
    assert wsproto_reads(data[:cut_used]) == [("text", t) for t in cut_texts]


def test_frames_a_full_parser_must_judge_are_left_to_it() -> None:
    client = Connection(ConnectionType.CLIENT)
    good = client.send(TextMessage(data="ok"))
    bad_utf8 = bytes((0x81, 0x82, 0, 0, 0, 0)) + b"\xc3\x28"  # wsproto closes with 1007
    unmasked = bytes((0x81, 0x02)) + b"ok"  # a protocol error from a client
    with_rsv1 = bytes((0xC1,)) + good[1:]  # compressed, with no extension agreed
    for rest in (bad_utf8, unmasked, with_rsv1):
        assert leading_texts(good + rest + good) == (["ok"], len(good))
    assert leading_texts(good, limit=1) == ([], 0)  # over the server's message size limit


class RawClient:
    """A WebSocket client over a plain socket, parsed by wsproto: every byte the server sends
    must belong to a well-formed frame, and nothing is decoded on the client's terms."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.texts: list[dict[str, Any]] = []
        self.pongs = 0
        self._partial = ""

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        receive_buffer: int | None = None,
        deflate: bool = False,
        target: str = "/ws",
    ) -> RawClient:
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        client = cls(trio.SocketStream(sock))
        # Without extensions the server frames once for every such client; with
        # permessage-deflate (what browsers offer) it compresses for each.
        extensions = [PerMessageDeflate()] if deflate else []
        request = Request(host="127.0.0.1", target=target, extensions=extensions)
        await client.stream.send_all(client.ws.send(request))
        with trio.fail_after(5):
            accepted = False
            while not accepted:
                events = client._feed(await client._read())
                accepted = any(isinstance(e, AcceptConnection) for e in events)
        return client

    async def _read(self) -> bytes:
        data = await self.stream.receive_some(65536)
        assert data, "the server closed the connection"
        return data

    def _feed(self, data: bytes) -> list[Any]:
        self.ws.receive_data(data)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, Message):
                assert isinstance(event, TextMessage)
                self._partial += event.data  # wsproto hands a large message over in pieces
                if event.message_finished:
                    self.texts.append(check_message(self._partial))
                    self._partial = ""
            elif isinstance(event, Pong):
                self.pongs += 1
        return events

    async def read_to_end(self) -> list[Any]:
        """Every event until the server ends the TCP stream (within 5 s)."""
        events: list[Any] = []
        with trio.fail_after(5):
            while data := await self.stream.receive_some(65536):
                events.extend(self._feed(data))
        return events

    async def read_for(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            while True:
                self._feed(await self._read())

    async def send_text(self, message: dict[str, Any]) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=json.dumps(message))))

    async def send_ping(self) -> None:
        await self.stream.send_all(self.ws.send(Ping(payload=b"p")))

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [m for m in self.texts if m["type"] == type_]


@pytest.fixture(autouse=True)
def switch_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """On every direct write of every test here: where the socket's state is followed, the
    one-attribute switch says what the full look at the state says."""
    write_now = DirectSocket.write_now
    checked = [0]

    def checking(self: DirectSocket, texts: Any, framed: Any) -> bool:
        if self._followed:
            assert self.open_and_free == self.state_allows_writes()
            checked[0] += 1
        return write_now(self, texts, framed)

    monkeypatch.setattr(DirectSocket, "write_now", checking)
    yield checked


def connections(server: RunningServer) -> list[Any]:
    return list(server.app.wirthforge.hub)


@asynccontextmanager
async def switch_watched(server: RunningServer) -> AsyncIterator[list[int]]:
    """Between every two task steps while the block runs: where a connection's socket state
    is followed, the switch agrees with the full look at the state (how often it was
    checked is counted)."""
    seen = [0]

    async def watch() -> None:
        while True:
            for connection in connections(server):
                direct = connection.port
                if isinstance(direct, DirectSocket) and direct._followed:
                    assert direct.open_and_free == direct.state_allows_writes()
                    seen[0] += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        yield seen
        nursery.cancel_scope.cancel()


@needs_fast_path
async def test_frames_go_out_directly_framed_once_or_per_deflate_connection(
    server: RunningServer,
) -> None:
    raw = await RawClient.open(server.port)
    deflating = await RawClient.open(server.port, deflate=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.read_for, 0.5)
        nursery.start_soon(deflating.read_for, 0.5)
    for client in (raw, deflating):
        frames = [m["frameNumber"] for m in client.of_type("energy_update")]
        assert len(frames) >= 20 and frames == sorted(set(frames))
    by_sharing = {c.port.shares_framing: c for c in connections(server)}
    assert set(by_sharing) == {True, False}
    assert all(c.messages_written_at_once > 0 for c in by_sharing.values())
    # The hub writes the frames shared by all straight to the socket (the frame lane); the
    # deflating connection's go through its own framing.
    assert by_sharing[True].lane_messages >= 20 and by_sharing[False].lane_messages == 0
    # Client messages are parsed from the bytes only where no extension has a say.
    assert by_sharing[True].port._read is not None and by_sharing[False].port._read is None
    async with server.http() as http:
        clients = (await http.get("/status")).json()["clients"]
    assert len(clients) == 2 and all(c["directWrites"] > 0 for c in clients)
    for client in (raw, deflating):
        await client.stream.aclose()


@needs_fast_path
async def test_the_frame_lane_is_open_only_to_clients_that_take_every_frame_whole(
    server: RunningServer, lanes_checked: list[int]
) -> None:
    """A client subscribed to everything gets each frame from the hub with one look and one
    write (its lane); narrowing its subscriptions closes the lane (its frames are checked
    message by message again), and widening them opens it again. Frames keep their order
    throughout, and the lane agrees with the full look at the state on every frame
    (``lanes_checked``)."""
    raw = await RawClient.open(server.port)
    await raw.read_for(0.3)
    (connection,) = connections(server)
    assert connection.frame_lane is not None and connection.lane_messages > 0
    await raw.send_text({"type": "unsubscribe", "payload": {"channels": ["council"]}})
    await eventually(lambda: connection.frame_lane is None)
    through_lane, checked = connection.lane_messages, connection.port.messages_written
    await raw.read_for(0.3)
    assert connection.lane_messages == through_lane
    assert connection.port.messages_written >= checked + 10  # written, message by message
    await raw.send_text({"type": "subscribe", "payload": {"channels": ["council"]}})
    await eventually(lambda: connection.frame_lane is not None)
    await raw.read_for(0.3)
    assert connection.lane_messages >= through_lane + 10
    frames = [m["frameNumber"] for m in raw.of_type("energy_update")]
    assert len(frames) >= 40 and frames == sorted(set(frames))
    assert lanes_checked[0] >= 20
    connection.request_close(1000, "done")
    assert connection.frame_lane is None  # at once: nothing may follow the close frame
    await raw.stream.aclose()


@needs_fast_path
async def test_with_nobody_behind_only_the_clock_runs_for_frames_and_heartbeats(
    server: RunningServer,
) -> None:
    """Three clients that keep up: for each tick the clock's task writes the frame, and each
    heartbeat that is due, to every socket itself. No connection's task wakes for them (one
    step per tick in all, however many clients), and no task polls in between."""
    clients = [await RawClient.open(server.port) for _ in range(3)]
    clock = server.app.wirthforge.engine.clock
    counter = StepCounter()
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(client.read_for, 2.0, name="test client")
        await trio.sleep(0.3)  # past the handshakes
        received = [len(c.texts) for c in clients]
        ticks = clock.ticks
        trio.lowlevel.add_instrument(counter)
        try:
            await trio.sleep(1.2)  # a heartbeat for each client, at least
        finally:
            trio.lowlevel.remove_instrument(counter)
        ticks = clock.ticks - ticks
        got = [c.texts[n:] for c, n in zip(clients, received, strict=True)]
    assert ticks >= 30
    for messages in got:  # every tick's frame reached every client (give or take the edges)
        assert sum(m["type"] == "energy_update" for m in messages) >= ticks - 3
        assert sum(m["type"] == "heartbeat" for m in messages) >= 1
    server_side = {
        name: n
        for name, n in counter.steps.items()
        if name != "test client" and "test_" not in name
    }
    (clock_task,) = [name for name in server_side if name.endswith("FrameClock.run")]
    assert set(server_side) == {clock_task}
    # One step a tick; a late tick may take a second one to find its expiry (timer.py), a
    # task that polled would take many.
    assert server_side[clock_task] <= 1.5 * ticks + 3


async def test_with_direct_writes_off_every_message_takes_the_writer(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(nursery, test_settings(direct_writes=False))
    raw = await RawClient.open(server.port)
    await send_together(raw, pings(0, 5))
    await raw.read_for(0.5)
    assert len(raw.of_type("energy_update")) >= 20
    assert [p["payload"]["i"] for p in raw.of_type("pong")] == list(range(5))
    assert [c.port.path for c in connections(server)] == ["asgi"]
    async with server.http() as http:
        status = (await http.get("/status")).json()
    client = status["clients"][0]
    assert status["sendPath"] == "asgi" and "WIRTHFORGE_DIRECT_WRITES=0" in status["sendPathReason"]
    assert client["sendPath"] == "asgi"
    assert client["directWrites"] is None and client["receivedInline"] is None
    await raw.stream.aclose()
    server.stop.set()


@needs_fast_path
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "permessage-deflate"])
async def test_a_write_cut_short_is_finished_before_anything_else(
    server: RunningServer, deflate: bool
) -> None:
    """A client that stops reading while large replies are due: the socket takes part of one,
    and until its writer has sent the rest, frames wait in the slot and Hypercorn's own
    pongs wait for the socket. When the client reads again, every byte parses as whole
    frames, the replies arrive once each and in order, and the frames in order."""
    raw = await RawClient.open(server.port, receive_buffer=4096, deflate=deflate)
    await raw.read_for(0.2)
    before = len(raw.texts)
    # Incompressible, so that with deflate too the reply is larger than both buffers.
    blob = "".join(random.Random(6).choices(string.ascii_letters + string.digits, k=60_000))
    (connection,) = connections(server)
    assert connection.port.shares_framing is not deflate
    # A reply larger than both sockets' buffers, alone: the socket takes part of it.
    async with switch_watched(server) as seen:
        await cut_short_then_read(raw, connection, blob)
    assert seen[0] > 0 or deflate
    pongs = raw.of_type("pong")
    assert [p["payload"]["i"] for p in pongs] == list(range(8))
    assert all(p["payload"]["blob"] == blob for p in pongs)
    assert raw.pongs == 7
    frames = [m["frameNumber"] for m in raw.of_type("energy_update")[before:]]
    assert frames == sorted(set(frames)) and len(frames) > 30
    assert not connection.port.pending
    # Followed where Hypercorn's parsers are (not with deflate), and free again.
    assert connection.port.open_and_free is not deflate
    await raw.stream.aclose()


async def cut_short_then_read(raw: RawClient, connection: Any, blob: str) -> None:
    await raw.send_text({"type": "ping", "payload": {"i": 0, "blob": blob}})
    await eventually(lambda: connection.port.writes_cut_short > 0)
    assert connection.port.pending
    assert not connection.port.open_and_free  # the socket is reserved for the rest
    assert connection.frame_lane is None  # and so the hub leaves the frames in the slot
    for i in range(1, 8):  # more replies, and pings that Hypercorn answers itself
        await raw.send_text({"type": "ping", "payload": {"i": i, "blob": blob}})
        await raw.send_ping()
        await trio.sleep(0.05)
    await raw.read_for(2.0)


def pings(first: int, count: int) -> list[dict[str, Any]]:
    return [{"type": "ping", "payload": {"i": i}} for i in range(first, first + count)]


async def send_together(client: RawClient, messages: list[dict[str, Any]]) -> None:
    """Several messages in one write: Hypercorn reads them from one segment, back to back."""
    data = b"".join(client.ws.send(TextMessage(data=json.dumps(m))) for m in messages)
    await client.stream.send_all(data)


@needs_fast_path
async def test_client_messages_are_handled_as_read_and_answered_in_order(
    server: RunningServer,
) -> None:
    raw = await RawClient.open(server.port)
    await raw.read_for(0.1)
    (connection,) = connections(server)
    await send_together(raw, pings(0, 30))
    await raw.send_text({"type": "unsubscribe", "payload": {"channels": ["energy"]}})
    await send_together(raw, pings(30, 30))
    await raw.read_for(0.5)
    assert [p["payload"]["i"] for p in raw.of_type("pong")] == list(range(60))
    assert connection.received_inline == 61
    before = len(raw.of_type("energy_update"))
    await raw.read_for(0.2)
    assert len(raw.of_type("energy_update")) == before  # the unsubscribe took effect in turn
    async with server.http() as http:
        assert (await http.get("/status")).json()["clients"][0]["receivedInline"] == 61
    await raw.stream.aclose()


@needs_fast_path
async def test_messages_read_before_the_reader_is_live_keep_their_place(
    server: RunningServer,
) -> None:
    """A resuming client's first message is awaited by the connection's reader; whatever
    arrives with it goes the ordinary way, and later messages are handled as read only once
    the reader has taken those: the answers come in the order of the questions."""
    raw = await RawClient.open(server.port, target="/ws?resume=1")
    await send_together(raw, [{"type": "resume", "payload": {"sessions": []}}, *pings(0, 20)])
    await send_together(raw, pings(20, 20))
    await raw.read_for(0.3)
    await send_together(raw, pings(40, 20))
    await raw.read_for(0.3)
    assert [p["payload"]["i"] for p in raw.of_type("pong")] == list(range(60))
    (connection,) = connections(server)
    assert 20 <= connection.received_inline < 61
    await raw.stream.aclose()


@needs_fast_path
async def test_messages_read_beneath_hypercorn_keep_their_order_with_the_rest(
    server: RunningServer,
) -> None:
    """Small messages are parsed from the bytes read; a control frame, a long message, a
    message in fragments or a frame split across two reads goes through Hypercorn's parsers.
    Either way, the answers come once each and in the order of the questions."""
    raw = await RawClient.open(server.port)
    await raw.read_for(0.1)
    (connection,) = connections(server)
    send = raw.ws.send
    pad = "x" * 200
    data = b"".join(
        [
            *(send(TextMessage(data=json.dumps(m))) for m in pings(0, 3)),
            send(Ping(payload=b"p")),
            send(TextMessage(data=json.dumps({"type": "ping", "payload": {"i": 3, "pad": pad}}))),
            *(send(TextMessage(data=json.dumps(m))) for m in pings(4, 2)),
            send(TextMessage(data='{"type": "ping", ', message_finished=False)),
            send(TextMessage(data='"payload": {"i": 6}}', message_finished=True)),
            *(send(TextMessage(data=json.dumps(m))) for m in pings(7, 3)),
        ]
    )
    split = send(TextMessage(data=json.dumps(pings(10, 1)[0])))
    await raw.stream.send_all(data + split[:5])
    await trio.sleep(0.05)
    await raw.stream.send_all(split[5:])
    await trio.sleep(0.1)
    await send_together(raw, pings(11, 5))
    await raw.read_for(0.5)
    assert [p["payload"]["i"] for p in raw.of_type("pong")] == list(range(16))
    assert raw.pongs == 1
    assert connection.received_inline == 16
    # From the ping frame on, the first write went through wsproto, and so did the end of
    # the split frame; once wsproto held nothing more, the last five were parsed again.
    assert connection.port.messages_read == 3 + 5
    async with server.http() as http:
        client = (await http.get("/status")).json()["clients"][0]
    assert client["directReads"] == connection.port.messages_read
    await raw.stream.aclose()


@needs_fast_path
async def test_after_whole_messages_the_next_bytes_are_read_beneath_hypercorn(
    server: RunningServer,
) -> None:
    """Messages one write at a time: once a read held only whole small messages, the next is
    made beneath Hypercorn's read loop. A control frame goes back to Hypercorn and the reading
    resumes after it; with Hypercorn's read timeout in force every read stays Hypercorn's; a
    close frame is Hypercorn's to answer."""
    raw = await RawClient.open(server.port)
    await raw.read_for(0.1)
    (connection,) = connections(server)
    direct = connection.port

    async def one_by_one(first: int, count: int) -> None:
        for message in pings(first, count):
            await raw.send_text(message)
            await raw.read_for(0.02)

    await one_by_one(0, 10)
    assert direct.socket_reads >= 9
    await raw.send_ping()
    await raw.read_for(0.05)  # (a message in the same read as the ping would follow it)
    await one_by_one(10, 10)
    reads = direct.socket_reads
    assert reads >= 18
    direct._read.reads_here = False  # as with Hypercorn's --read-timeout
    await one_by_one(20, 5)
    assert direct.socket_reads <= reads + 1  # the read already waiting, then Hypercorn's
    reads = direct.socket_reads
    direct._read.reads_here = True
    await one_by_one(25, 5)
    assert direct.socket_reads > reads
    assert [p["payload"]["i"] for p in raw.of_type("pong")] == list(range(30))
    assert raw.pongs == 1
    assert direct.messages_read == 30
    assert direct.open_and_free
    await raw.stream.send_all(raw.ws.send(CloseConnection(code=1000, reason="done")))
    with trio.fail_after(5):
        while not any(isinstance(e, CloseConnection) for e in raw._feed(await raw._read())):
            pass
    assert not direct.open_and_free  # closed: no frame goes out after the close
    await eventually(lambda: not connections(server))
    await raw.stream.aclose()


@needs_fast_path
async def test_a_client_gone_while_read_beneath_hypercorn_is_noticed_at_once(
    server: RunningServer,
) -> None:
    """The end of the stream found beneath Hypercorn's read loop is left for Hypercorn to
    read: the connection ends as it always did, and a new one is served as usual."""
    raw = await RawClient.open(server.port)
    await raw.read_for(0.1)
    (connection,) = connections(server)
    for message in pings(0, 3):
        await raw.send_text(message)
        await raw.read_for(0.02)
    assert connection.port.socket_reads >= 2
    async with switch_watched(server) as seen:
        await raw.stream.aclose()  # no close frame
        await eventually(lambda: not connections(server))
    assert seen[0] > 0
    again = await RawClient.open(server.port)
    await again.send_text(pings(0, 1)[0])
    await again.read_for(0.2)
    assert len(again.of_type("pong")) == 1
    await again.stream.aclose()


@needs_fast_path
async def test_a_close_from_the_server_turns_the_direct_switch_off_first(
    server: RunningServer,
) -> None:
    """The connection closes (here: the server stops): once its close frame is on its way,
    the direct switch is off, and nothing follows the close frame on the wire."""
    raw = await RawClient.open(server.port)
    await raw.read_for(0.1)
    (connection,) = connections(server)
    assert connection.port.open_and_free
    async with switch_watched(server) as seen:
        server.stop.set()
        events = await raw.read_to_end()
    assert seen[0] > 0
    assert not connection.port.open_and_free
    kinds = [type(e) for e in events]
    assert CloseConnection in kinds
    assert kinds.index(CloseConnection) == len(kinds) - 1  # the close came last
    await raw.stream.aclose()


@needs_fast_path
async def test_after_the_clients_close_no_frame_follows_the_servers(
    server: RunningServer, switch_checked: list[int], lanes_checked: list[int]
) -> None:
    """The client closes while frames flow: Hypercorn answers with its close, and no frame
    (written directly by the frame clock) follows that close on the wire."""
    async with switch_watched(server) as seen:
        for _ in range(3):
            raw = await RawClient.open(server.port)
            await raw.read_for(0.05)
            await raw.stream.send_all(raw.ws.send(CloseConnection(code=1000, reason="bye")))
            kinds = [type(e) for e in await raw.read_to_end()]
            assert kinds[-1] is CloseConnection and kinds.count(CloseConnection) == 1
            await raw.stream.aclose()
            await eventually(lambda: not connections(server))
    assert switch_checked[0] + lanes_checked[0] > 3  # frames were written, the switch checked
    assert seen[0] > 100


@needs_fast_path
async def test_invalid_utf8_is_answered_with_a_close_frame_naming_it(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A text frame that is not UTF-8 is not parsed from the bytes: it goes to wsproto, and
    the connection is failed as RFC 6455 asks, with a close frame (1007 and the reason)
    rather than a bare end of the TCP stream; the messages before it are answered first."""
    raw = await RawClient.open(server.port)
    await raw.read_for(0.1)
    (connection,) = connections(server)
    wsproto_connection = connection.port._ws.connection
    assert "events" in vars(wsproto_connection)  # answering parse faults
    bad = bytes((0x81, 0x82, 1, 2, 3, 4)) + bytes((0xC3 ^ 1, 0x28 ^ 2))
    await raw.stream.send_all(
        b"".join(raw.ws.send(TextMessage(data=json.dumps(m))) for m in pings(0, 2)) + bad
    )
    closes = [e for e in await raw.read_to_end() if isinstance(e, CloseConnection)]
    assert [p["payload"]["i"] for p in raw.of_type("pong")] == [0, 1]
    assert connection.port.messages_read == 2
    assert [c.code for c in closes] == [1007]
    assert "utf-8" in (closes[0].reason or "").lower()
    await raw.stream.aclose()
    await eventually(lambda: not connections(server))
    assert connection.close_code == 1007
    assert "events" not in vars(wsproto_connection)  # no longer refers to the connection
    assert any(
        "cannot be parsed" in r.getMessage() and connection.id in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (bytes((0x81, 0x02)) + b"hi", "mask"),  # a client frame must be masked
        (bytes((0xC1, 0x82, 0, 0, 0, 0)) + b"hi", "reserved"),  # RSV1 without an extension
        (bytes((0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0)) + b"p" * 126, "control"),  # too long
    ],
)
async def test_protocol_errors_are_answered_with_a_close_frame(
    server: RunningServer, frame: bytes, words: str
) -> None:
    """Frames RFC 6455 forbids a client to send fail the connection with 1002 and the
    reason in a close frame, whichever of them it is."""
    raw = await RawClient.open(server.port)
    await raw.read_for(0.1)
    (connection,) = connections(server)
    await raw.stream.send_all(frame)
    closes = [e for e in await raw.read_to_end() if isinstance(e, CloseConnection)]
    assert [c.code for c in closes] == [1002]
    assert words in (closes[0].reason or "").lower()
    await raw.stream.aclose()
    await eventually(lambda: not connections(server))
    assert connection.close_code == 1002


@needs_fast_path
async def test_no_write_reaches_a_closed_socket(server: RunningServer) -> None:
    """Once the server's socket is closed its descriptor number may be another socket's: a
    direct write then takes nothing, whatever the switch says, and the frames go the
    ordinary way (which meets the closed socket and ends the connection)."""
    raw = await RawClient.open(server.port)
    await raw.read_for(0.1)
    (connection,) = connections(server)
    direct = connection.port
    written = direct.messages_written
    number = direct._socket.fileno()
    direct._socket.close()
    other, peer = socket.socketpair()  # takes the lowest free number: most likely that one
    with other, peer:
        assert direct.open_and_free  # nothing told the switch
        assert not direct.write_now(("{}",), ())
        assert direct.messages_written == written
        if other.fileno() == number:
            peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                peer.recv(100)
    await eventually(lambda: not connections(server))
    await raw.stream.aclose()


# -- the seam and its gate ------------------------------------------------------------------

PACKAGE = Path(fastpath.__file__).resolve().parents[1]
INSIDES = ("hypercorn", "wsproto", "h11", "quart", "quart_trio", "werkzeug")
"""Libraries whose insides only the seam may know."""
PUBLIC_IMPORTS = {
    "quart",
    "quart_trio",
    "hypercorn.config",
    "hypercorn.trio",
    "werkzeug.exceptions",
    "werkzeug.routing",
}
"""Their public modules, which any layer may import."""
FOREIGN_PRIVATE_NAMES = {
    "_create_websocket_from_scope",
    "_disconnected",
    "_events",
    "_frame_decoder",
    "_get_current_object",
    "_kwargs",
    "_message_decoder",
    "_proto",
    "_send",
    "_sock",
    "_state",
    "_stream",
    "_target",
}
"""Private names of those libraries' and Trio's objects (and of the process Hypercorn's
supervisor starts) that the fast path uses, and trio-websocket's stream."""


def _imported_modules(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_only_the_seam_knows_the_insides_of_the_libraries() -> None:
    """No module but transport/fastpath.py imports an internal module of Hypercorn, wsproto
    or Quart, or touches a private name the fast path uses."""
    seam = PACKAGE / "transport" / "fastpath.py"
    offenders: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == seam:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for module in _imported_modules(tree):
            if module.split(".")[0] in INSIDES and module not in PUBLIC_IMPORTS:
                offenders.append(f"{path.relative_to(PACKAGE)} imports {module}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in FOREIGN_PRIVATE_NAMES
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                offenders.append(f"{path.relative_to(PACKAGE)} touches .{node.attr}")
    assert offenders == []
    seam_tree = ast.parse(seam.read_text(encoding="utf-8"))
    assert {"hypercorn.trio.tcp_server", "wsproto.frame_protocol"} <= _imported_modules(seam_tree)


def test_the_rfc6455_module_imports_nothing_but_the_standard_library() -> None:
    tree = ast.parse((PACKAGE / "protocol" / "rfc6455.py").read_text(encoding="utf-8"))
    assert _imported_modules(tree) <= {"__future__", "typing"}


def test_the_installed_releases_are_tested_ones_and_open_the_gate() -> None:
    """Guard against a silent switch-off: this environment's releases are in the table
    (a new release must be tested and added), and the setting alone can close the gate."""
    for name, tested in fastpath.TESTED.items():
        assert importlib.metadata.version(name) in tested, name
    assert fastpath.gate(True).path == "direct"
    off = fastpath.gate(False)
    assert off.path == "asgi" and "WIRTHFORGE_DIRECT_WRITES=0" in off.reason


@pytest.fixture
def untested_hypercorn(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process sees a Hypercorn release that is not in the table."""
    real = importlib.metadata.version

    def version(name: str) -> str:
        return "0.0.1" if name == "hypercorn" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    fastpath._versions_gate.cache_clear()
    yield
    monkeypatch.undo()
    fastpath._versions_gate.cache_clear()


async def test_an_untested_release_gets_the_ordinary_path_and_says_why(
    nursery: trio.Nursery, untested_hypercorn: None, caplog: pytest.LogCaptureFixture
) -> None:
    """With a release not in the table, every connection is served through ASGI: the same
    messages, in order, nothing written or read beneath the server's layers; the log says
    why once at start, and /status says which path and why."""
    caplog.set_level(logging.INFO, logger="wirthforge_trio")
    gate = fastpath.gate(True)
    assert gate.path == "asgi" and "hypercorn 0.0.1" in gate.reason
    # Direct writes asked for (also in the run that forces the ordinary path): the release
    # alone closes the gate.
    server = await start_server(nursery, test_settings(log_level="INFO", direct_writes=True))
    raw = await RawClient.open(server.port)
    await send_together(raw, pings(0, 5))
    await raw.read_for(0.5)
    frames = [m["frameNumber"] for m in raw.of_type("energy_update")]
    assert len(frames) >= 20 and frames == sorted(set(frames))
    assert [p["payload"]["i"] for p in raw.of_type("pong")] == list(range(5))
    (connection,) = connections(server)
    assert connection.port.path == "asgi" and connection.received_inline == 0
    assert connection.frame_lane is None
    async with server.http() as http:
        status = (await http.get("/status")).json()
    assert status["sendPath"] == "asgi" and "hypercorn 0.0.1" in status["sendPathReason"]
    assert status["clients"][0]["directWrites"] is None
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("send path")]
    assert len(said) == 1 and "asgi" in said[0] and "hypercorn 0.0.1" in said[0]
    await raw.stream.aclose()
    server.stop.set()


async def test_status_names_the_send_path(server: RunningServer) -> None:
    raw = await RawClient.open(server.port)
    await raw.read_for(0.1)
    async with server.http() as http:
        status = (await http.get("/status")).json()
    expected = "asgi" if ORDINARY_PATH_FORCED else "direct"
    assert status["sendPath"] == expected and status["sendPathReason"]
    assert [c["sendPath"] for c in status["clients"]] == [expected]
    await raw.stream.aclose()
