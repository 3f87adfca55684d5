"""Peer: the same stream on FastAPI + uvicorn, written the way FastAPI users write it.

    uvicorn benchmarks.peers.fastapi_peer:app --host 127.0.0.1 --port 8200 --log-level warning

(uvicorn[standard]: uvloop, httptools and the `websockets` sans-I/O protocol). One asyncio task
runs the drift-free 60 Hz clock, encodes each frame once and offers it to every connection's
size-1 slot (latest wins); each connection has a sender task that drains its slot after its
lossless messages (startup_complete, pongs) and its heartbeat, a heartbeat task (every 1 s) and
the endpoint itself reading client messages. This mirrors the wirthforge server's design with
the idiomatic asyncio parts: uvicorn's ``send`` waits while the transport is paused, so a stalled
client blocks only its own sender and loses stale frames, never the others' time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

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


class Client:
    """One connection's mailbox: lossless messages, the latest heartbeat, the latest frame."""

    __slots__ = ("frame", "heartbeat", "id", "lossless", "wake", "websocket")

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.id = new_connection_id()
        self.lossless: deque[str] = deque()
        self.heartbeat: str | None = None
        self.frame: str | None = None
        self.wake = asyncio.Event()

    async def sender(self) -> None:
        websocket = self.websocket
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.lossless:
                await websocket.send_text(self.lossless.popleft())
            if self.heartbeat is not None:
                text, self.heartbeat = self.heartbeat, None
                await websocket.send_text(text)
            if self.frame is not None:
                text, self.frame = self.frame, None
                await websocket.send_text(text)

    async def heartbeats(self) -> None:
        sequence = 0
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            self.heartbeat = heartbeat(sequence, self.id, clock.measured_rate)
            sequence += 1
            self.wake.set()


clock = FrameClock()
clients: set[Client] = set()


def on_tick(frame_number: int) -> None:
    started = time.perf_counter()
    if not clients:
        return
    text = energy_update(frame_number, (time.perf_counter() - started) * 1000.0)
    for client in clients:
        client.frame = text
        client.wake.set()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    ticker = asyncio.create_task(clock.run(on_tick))
    try:
        yield
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


app = FastAPI(lifespan=lifespan)


@app.get("/status")
async def status() -> dict[str, object]:
    return clock.status(len(clients))


@app.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    client = Client(websocket)
    client.lossless.append(startup_complete())
    client.wake.set()
    clients.add(client)
    tasks = [asyncio.create_task(client.sender()), asyncio.create_task(client.heartbeats())]
    try:
        while True:
            kind, payload = client_message(await websocket.receive_text())
            if kind == "ping":
                client.lossless.append(pong(payload))
                client.wake.set()
            # heartbeat_response: nothing to do (this peer keeps no liveness deadline)
    except WebSocketDisconnect:
        pass
    finally:
        clients.discard(client)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
