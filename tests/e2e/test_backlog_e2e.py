"""Stalled clients against a real server: the unread backlog is bounded and closed with 4413,
a frozen socket is cut off by the kernel's send timeout, and others are not slowed.

The stalled clients are raw sockets with a tiny receive buffer that never read after the
handshake, as a frozen browser tab or a SIGSTOPped process would.
"""

from __future__ import annotations

import json
import logging
import os

import trio

from tests.support.server import RunningServer, stalled_client, start_server, test_settings
from wirthforge_trio.contract.close_codes import CLOSE_SLOW_CONSUMER
from wirthforge_trio.transport.mailbox import Mailbox


async def stalled(port: int) -> trio.SocketStream:
    """A client that completes the handshake, then never reads again."""
    stream = await stalled_client(port, receive_buffer=1024)
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream


async def open_connections(server: RunningServer) -> int:
    async with server.http() as http:
        return int((await http.get("/status")).json()["connections"])


async def wait_connections(server: RunningServer, count: int, seconds: float) -> None:
    with trio.fail_after(seconds):
        while True:
            if await open_connections(server) == count:
                return
            await trio.sleep(0.1)


def masked_text_frame(text: str) -> bytes:
    """A client's WebSocket text frame (clients must mask)."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    elif n < 65536:
        header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
    return header + mask + masked


async def test_a_stalled_client_is_cut_off_with_a_bounded_backlog_and_others_keep_everything(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(
        nursery, test_settings(max_backlog_bytes=2048, send_timeout=3.0, demo_speed=2.0)
    )
    # Each stalled client asks for 5 MB of pongs (more than the kernel's largest send buffer,
    # 4 MB here) and reads none: its path fills at once, as a frozen tab's.
    ping = masked_text_frame(json.dumps({"type": "ping", "payload": {"pad": "x" * 50_000}}))

    async def send_pings(stream: trio.SocketStream) -> None:
        with trio.move_on_after(20):
            try:
                await stream.send_all(ping * 100)
            except trio.BrokenResourceError:  # the server cut it off already: as intended
                return

    seen_too_slow: set[str] = set()
    worst_backlog = 0

    async def watch_status(task_status: trio.TaskStatus[None]) -> None:
        nonlocal worst_backlog
        async with server.http() as http:
            while True:
                for client in (await http.get("/status")).json()["clients"]:
                    worst_backlog = max(worst_backlog, client["queuedBytes"])
                    if client["tooSlow"]:
                        seen_too_slow.add(client["connectionId"])
                task_status.started()  # polling, warm: the stalled clients may come
                task_status = trio.TASK_STATUS_IGNORED
                await trio.sleep(0.05)

    closed_too_slow: list[str] = []

    class TooSlowCloses(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "closing with 4413" in record.getMessage():
                closed_too_slow.append(str(record.args[0]))  # type: ignore[index]

    handler = TooSlowCloses()
    logging.getLogger("wirthforge_trio.transport").addHandler(handler)
    clients: list[trio.SocketStream] = []
    try:
        async with server.connect() as normal, trio.open_nursery() as watchers:
            await watchers.start(watch_status)
            await normal.receive_type("startup_complete")
            clients.extend([await stalled(server.port) for _ in range(3)])
            async with trio.open_nursery() as senders:
                for stream in clients:
                    senders.start_soon(send_pings, stream)
            async with server.http() as http:
                response = await http.post("/prompt", json={"prompt": "a long answer please"})
            (session,) = response.json()["sessions"]
            tokens: list[str] = []
            frames = 0
            started = trio.current_time()
            with trio.fail_after(60):
                while True:
                    message = await normal.receive()
                    if message["type"] == "energy_update":
                        frames += 1
                    elif message["type"] == "heartbeat":
                        sequence = message["payload"]["sequence"]
                        await normal.send(
                            {"type": "heartbeat_response", "payload": {"sequence": sequence}}
                        )
                    elif (
                        message["type"] == "token_stream"
                        and message["payload"]["sessionId"] == session["sessionId"]
                    ):
                        tokens.extend(message["payload"]["tokens"])
                        if message["payload"]["isComplete"]:
                            break
            elapsed = trio.current_time() - started
            # The stalled ones exceeded their 2 KiB backlog: dropped, marked, then cut off by
            # the kernel's send timeout; the normal client is still here with everything.
            await wait_connections(server, 1, 30)
            watchers.cancel_scope.cancel()
        # Each of the three was closed for its backlog (the log says so for each; /status,
        # polled, saw the mark on those it caught before the kernel cut them off).
        assert sorted(set(closed_too_slow)) == sorted(closed_too_slow)
        assert len(closed_too_slow) == 3
        assert seen_too_slow <= set(closed_too_slow) and seen_too_slow
        # Bounded by the limit plus one message (a 50 kB pong here).
        assert worst_backlog <= 2048 + 51_000
        assert len(tokens) > 20
        assert frames >= 55 * elapsed - 5, f"{frames} frames in {elapsed:.1f} s"
    finally:
        logging.getLogger("wirthforge_trio.transport").removeHandler(handler)
        for stream in clients:
            await stream.aclose()


async def test_a_frozen_socket_is_cut_off_by_the_send_timeout(nursery: trio.Nursery) -> None:
    """No lossless traffic at all (nobody generates): only frames fill the socket. The backlog
    rule never fires, yet the kernel's send timeout ends the connection."""
    server = await start_server(nursery, test_settings(send_timeout=1.0))
    port = int(server.url.rsplit(":", 1)[1])
    stream = await stalled(port)
    try:
        await wait_connections(server, 1, 5)
        # Frames (~300 bytes at 60 Hz) fill the small buffers within seconds; after that the
        # peer's zero window holds the writer until TCP_USER_TIMEOUT aborts the socket.
        await wait_connections(server, 0, 90)
    finally:
        await stream.aclose()


def test_the_backlog_counts_merged_batches_and_is_dropped_whole() -> None:
    from wirthforge_trio.contract.codec import encode
    from wirthforge_trio.contract.events import TokenStream, TokenStreamPayload

    def batch(tokens: tuple[str, ...]) -> TokenStream:
        return TokenStream(
            timestamp=1,
            payload=TokenStreamPayload(
                tokens=tokens, is_complete=False, session_id="s", model_id="demo"
            ),
        )

    mailbox = Mailbox()
    first, second = batch(("a",)), batch(("b", "c"))
    mailbox.put_tokens(first, encode(first))
    mailbox.put_tokens(second, encode(second))
    mailbox.put("x" * 100)
    assert mailbox.queued == 2
    assert mailbox.queued_bytes == len(encode(first)) + len(encode(second)) + 100
    mailbox.take_lossless()
    assert mailbox.queued_bytes == 100
    assert mailbox.drop_lossless() == 1
    assert mailbox.queued_bytes == 0 and mailbox.take_lossless() is None
    assert CLOSE_SLOW_CONSUMER == 4413
