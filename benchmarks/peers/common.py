"""What both peers share: the wirthforge server's JSON shapes and its drift-free frame clock.

The shapes were captured from a running ``hypercorn -k trio wirthforge_trio.app:app`` (idle,
default demo model) and are kept below as ``CAPTURED``; the builders produce the same fields in
the same order, compact, within a few bytes of the same size, with the frame number, sequence
and timestamps filled in. ``tests/system/test_bench.py`` checks the shapes against the live
server's.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import orjson

RATE: Final = 60.0
PERIOD_NS: Final = 1e9 / RATE

CAPTURED: Final = {
    "startup_complete": (
        '{"type":"startup_complete","channel":"system","timestamp":1795653956868,"payload":'
        '{"model":"demo","tier":"Low-Tier","version":"0.1.0","frameRate":60,'
        '"capabilities":["visualization"]}}'
    ),
    "energy_update": (
        '{"type":"energy_update","channel":"energy","timestamp":1795653956874,"frameNumber":154,'
        '"payload":{"totalEnergy":0.0,"deltaEnergy":0.0,"tokensGenerated":0,'
        '"processingTime":0.0302,"modelId":"demo"}}'
    ),
    "heartbeat": (
        '{"type":"heartbeat","channel":"system","timestamp":1795653957870,"payload":'
        '{"sequence":0,"serverTime":1795653957870,"frameRate":59.99,'
        '"connectionId":"c-d40ea4e47b54"}}'
    ),
    "pong": (
        '{"type":"pong","channel":"system","timestamp":1795653959376,"payload":'
        '{"t":123456789,"x":"abc"}}'
    ),
}
"""Messages read from the wirthforge server (sizes: 183, 196, 167 and 96 bytes)."""


def wall_ms() -> int:
    """Unix epoch milliseconds, as the contract's timestamps are."""
    return time.time_ns() // 1_000_000


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def new_connection_id() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def startup_complete() -> str:
    return _dumps(
        {
            "type": "startup_complete",
            "channel": "system",
            "timestamp": wall_ms(),
            "payload": {
                "model": "demo",
                "tier": "Low-Tier",
                "version": "0.1.0",
                "frameRate": 60,
                "capabilities": ["visualization"],
            },
        }
    )


def energy_update(frame_number: int, processing_ms: float) -> str:
    """The idle frame of the default model, as the wirthforge server sends it."""
    return _dumps(
        {
            "type": "energy_update",
            "channel": "energy",
            "timestamp": wall_ms(),
            "frameNumber": frame_number,
            "payload": {
                "totalEnergy": 0.0,
                "deltaEnergy": 0.0,
                "tokensGenerated": 0,
                "processingTime": round(processing_ms, 4),
                "modelId": "demo",
            },
        }
    )


def heartbeat(sequence: int, connection_id: str, frame_rate: float) -> str:
    now = wall_ms()
    return _dumps(
        {
            "type": "heartbeat",
            "channel": "system",
            "timestamp": now,
            "payload": {
                "sequence": sequence,
                "serverTime": now,
                "frameRate": round(frame_rate, 2),
                "connectionId": connection_id,
            },
        }
    )


def pong(payload: Any) -> str:
    """The answer to a ``ping``: its payload back, untouched."""
    return _dumps({"type": "pong", "channel": "system", "timestamp": wall_ms(), "payload": payload})


def client_message(text: str | bytes) -> tuple[str, Any]:
    """``(type, payload)`` of a client message; ``("", None)`` for anything unreadable."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "", None
    if not isinstance(message, dict):
        return "", None
    kind = message.get("type")
    return (kind if isinstance(kind, str) else ""), message.get("payload", {})


class FrameClock:
    """The wirthforge server's clock on asyncio: frame n is due at origin + n / rate.

    Computed from the origin, never from the previous tick, so sleep errors do not add up; a
    tick so late that later ones are due skips them (frames are state: no catch-up burst).
    """

    def __init__(self, rate: float = RATE) -> None:
        self.rate = rate
        self.period_ns = 1e9 / rate
        self.origin_ns: int | None = None
        self.frame_number = -1
        self.skipped = 0
        self._recent: deque[int] = deque(maxlen=int(rate) + 1)

    @property
    def measured_rate(self) -> float:
        recent = self._recent
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) * 1e9 / (recent[-1] - recent[0])

    async def run(self, on_tick: Callable[[int], None]) -> None:
        origin = self.origin_ns = time.monotonic_ns()
        period = self.period_ns
        n = 0
        while True:
            due = origin + int(n * period)
            delay = due - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
                # uvloop's timers have whole-millisecond resolution and can fire up to a
                # millisecond early: never send a frame before it is due (Trio never wakes
                # early either); the rest is slept in whole milliseconds, so no busy-waiting.
                for _ in range(5):
                    left = due - time.monotonic_ns()
                    if left <= 0:
                        break
                    await asyncio.sleep(math.ceil(left / 1e6) / 1e3)
            now = time.monotonic_ns()
            behind = int((now - due) // period)
            if behind > 0:
                self.skipped += behind
                n += behind
            self.frame_number = n
            self._recent.append(now)
            on_tick(n)
            n += 1

    def status(self, connections: int) -> dict[str, Any]:
        """The part of the wirthforge server's ``GET /status`` the benchmark reads."""
        return {
            "connections": connections,
            "frameRate": round(self.measured_rate, 2),
            "frameNumber": self.frame_number,
            "framesSkipped": self.skipped,
            "clock": {"rate": self.rate, "originMonotonicNs": self.origin_ns},
        }
