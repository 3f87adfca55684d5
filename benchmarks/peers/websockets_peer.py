"""Peer: the same stream on the `websockets` library's own asyncio server, with ``broadcast()``.

    python -m benchmarks.peers.websockets_peer --port 8201

The frame clock encodes each frame once and hands it to ``broadcast()``, which writes it to
every connection's transport synchronously: no task per client for frames, the library's
recommended fan-out. ``broadcast()`` has no backpressure (a client that stops reading would
buffer every frame until the keepalive ping times it out), so connections whose write buffer
is over the library's own high-water mark (32 KiB) are left out of the tick: a stalled client
loses frames instead of growing memory, the nearest equivalent of a latest-wins slot. Each
connection's handler task reads client messages (``ping`` → ``pong``; ``heartbeat_response``
ignored) and a heartbeat task per connection sends a ``heartbeat`` every second.
``GET /status`` is answered over plain HTTP by the ``process_request`` hook.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from http import HTTPStatus

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from benchmarks.peers.common import (
    FrameClock,
    client_message,
    energy_update,
    heartbeat,
    new_connection_id,
    pong,
    startup_complete,
)

HEARTBEAT_INTERVAL = 1.0
WRITE_LIMIT = 32 * 1024
"""The library's default ``write_limit``: above it, ``send()`` would wait for the buffer."""

clock = FrameClock()
connections: set[ServerConnection] = set()


def on_tick(frame_number: int) -> None:
    started = time.perf_counter()
    if not connections:
        return
    text = energy_update(frame_number, (time.perf_counter() - started) * 1000.0)
    broadcast([c for c in connections if c.transport.get_write_buffer_size() <= WRITE_LIMIT], text)


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    if request.path != "/status":
        return None  # go on with the WebSocket handshake
    body = orjson.dumps(clock.status(len(connections)))
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)


async def heartbeats(websocket: ServerConnection, connection_id: str) -> None:
    sequence = 0
    while True:
        await asyncio.sleep(HEARTBEAT_INTERVAL)
        await websocket.send(heartbeat(sequence, connection_id, clock.measured_rate))
        sequence += 1


async def handler(websocket: ServerConnection) -> None:
    await websocket.send(startup_complete())
    connections.add(websocket)
    beats = asyncio.create_task(heartbeats(websocket, new_connection_id()))
    try:
        async for message in websocket:
            kind, payload = client_message(message)
            if kind == "ping":
                await websocket.send(pong(payload))
    finally:
        connections.discard(websocket)
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await beats


async def serve_forever(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    ticker = asyncio.create_task(clock.run(on_tick))
    async with serve(handler, host, port, process_request=process_request):
        await stop
    ticker.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8201)
    args = parser.parse_args(argv)
    asyncio.run(serve_forever(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
