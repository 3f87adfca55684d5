"""Token latency with and without a Redis broker: one process, one client, alternated.

Latency is the wall clock at receipt minus the token_stream's envelope timestamp (taken
when its frame was built; whole milliseconds, so every figure carries up to 1 ms of
truncation, the same on both sides). Needs ``redis-server`` and the ``broker`` extra::

    python -m benchmarks.token_latency

Figures: docs/benchmarks/broker.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import trio
from trio_websocket import open_websocket_url

from benchmarks.procs import free_port

SECONDS = 8.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_server(port: int, broker: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRTHFORGE_")}
    env.update(WIRTHFORGE_LOG_LEVEL="WARNING", WIRTHFORGE_DEMO_SPEED="4")
    if broker is not None:
        env["WIRTHFORGE_BROKER"] = broker
    command = [sys.executable, "-m", "wirthforge_trio.cli", "serve", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_redis(port: int) -> subprocess.Popen[bytes]:
    command = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


async def measure(broker: str | None) -> list[float]:
    """Prompts one after the other for :data:`SECONDS`; each token batch's latency (ms)."""
    port = free_port()
    server = start_server(port, broker)
    latencies: list[float] = []
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                try:
                    await http.get(f"http://127.0.0.1:{port}/health")
                    break
                except httpx.HTTPError:
                    await trio.sleep(0.1)
            async with open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
                end = trio.current_time() + SECONDS
                prompts = 0
                while trio.current_time() < end:
                    body = {"prompt": f"prompt {prompts}"}
                    await http.post(f"http://127.0.0.1:{port}/prompt", json=body)
                    prompts += 1
                    while True:
                        message = json.loads(await ws.get_message())
                        if message["type"] == "token_stream":
                            latencies.append(time.time_ns() / 1e6 - message["timestamp"])
                            if message["payload"]["isComplete"]:
                                break
    finally:
        server.terminate()
        server.wait()
    return latencies


async def main() -> None:
    redis_port = free_port()
    redis = start_redis(redis_port)
    await trio.sleep(0.3)
    found: dict[str, list[float]] = {"alone": [], "broker": []}
    try:
        for name in ("alone", "broker", "alone", "broker"):
            broker = f"redis://127.0.0.1:{redis_port}" if name == "broker" else None
            found[name] += await measure(broker)
    finally:
        redis.terminate()
    for name, values in found.items():
        p50, p90, p99 = (percentile(values, q) for q in (0.5, 0.9, 0.99))
        print(f"{name}: {len(values)} batches, p50 {p50:.2f} p90 {p90:.2f} p99 {p99:.2f} ms")


if __name__ == "__main__":
    trio.run(main)
