"""Frame delivery latency and ping round trip against a running server, from another process.

    wirthforge serve --port 8199 &
    python benchmarks/frame_latency.py --url ws://127.0.0.1:8199/ws --clients 10 --seconds 10

Latency = the client's wall clock at receipt minus the frame's `timestamp` (set when the frame
is built), so it includes encoding, fan-out, the send and the client's parse. Millisecond
resolution (the contract's timestamps are integer ms). Several clients share this one process,
so its own scheduling adds to the figures: read them as an upper bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import trio
from trio_websocket import open_websocket_url


async def client(url: str, seconds: float, latencies: list[float], frames: list[int]) -> None:
    async with open_websocket_url(url) as ws:
        count = 0
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            message = json.loads(await ws.get_message())
            if message["type"] == "energy_update":
                latencies.append(time.time() * 1000 - message["timestamp"])
                count += 1
        frames.append(count)


async def pings(url: str, n: int) -> list[float]:
    rtts = []
    async with open_websocket_url(url) as ws:
        for i in range(n):
            sent = time.perf_counter()
            await ws.send_message(json.dumps({"type": "ping", "payload": {"i": i}}))
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "pong" and message["payload"]["i"] == i:
                    break
            rtts.append((time.perf_counter() - sent) * 1000)
            await trio.sleep(0.01)
    return rtts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="ws://127.0.0.1:8145/ws")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    latencies: list[float] = []
    frames: list[int] = []
    async with trio.open_nursery() as nursery:
        for _ in range(args.clients):
            nursery.start_soon(client, args.url, args.seconds, latencies, frames)
    rtts = await pings(args.url, 200)
    print(
        f"clients={args.clients} seconds={args.seconds:g} "
        f"frames/s per client={statistics.mean(frames) / args.seconds:.1f} "
        f"latency ms p50={pct(latencies, 0.5):.1f} p99={pct(latencies, 0.99):.1f} "
        f"ping rtt ms p50={pct(rtts, 0.5):.2f} p99={pct(rtts, 0.99):.2f}"
    )


if __name__ == "__main__":
    trio.run(main)
