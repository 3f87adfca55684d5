"""Energy across the hop: two processes on one Redis, prompts posted to A, a client on B.

For B's frames while A generates (counted by frame number): the share that carries A's
energy (the others found no newer remote energy, and the client keeps the last it got), and
the age of that energy when B's client got it (wall clock at receipt minus the timestamp A
gave the event; whole milliseconds). Needs ``redis-server`` and the ``broker`` extra::

    python -m benchmarks.remote_energy

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
from benchmarks.token_latency import percentile, start_redis

SECONDS = 10.0


def start_server(port: int, broker: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRTHFORGE_")}
    env.update(WIRTHFORGE_LOG_LEVEL="WARNING", WIRTHFORGE_BROKER=broker)
    command = [sys.executable, "-m", "wirthforge_trio.cli", "serve", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_ready(http: httpx.AsyncClient, port: int) -> None:
    for _ in range(100):
        try:
            await http.get(f"http://127.0.0.1:{port}/health")
            return
        except httpx.HTTPError:
            await trio.sleep(0.1)


async def main() -> None:
    redis_port = free_port()
    redis = start_redis(redis_port)
    await trio.sleep(0.3)
    broker = f"redis://127.0.0.1:{redis_port}"
    a_port, b_port = free_port(), free_port()
    servers = [start_server(a_port, broker), start_server(b_port, broker)]
    frames = lit = 0
    ages: list[float] = []
    try:
        async with httpx.AsyncClient() as http:
            for port in (a_port, b_port):
                await wait_ready(http, port)
            async with open_websocket_url(f"ws://127.0.0.1:{b_port}/ws") as ws:
                end = trio.current_time() + SECONDS
                prompts = 0
                while trio.current_time() < end:
                    body = {"prompt": f"prompt {prompts}"}
                    await http.post(f"http://127.0.0.1:{a_port}/prompt", json=body)
                    prompts += 1
                    streaming = False
                    span: list[int] = []
                    while True:
                        message = json.loads(await ws.get_message())
                        kind = message["type"]
                        if kind == "token_stream":
                            streaming = not message["payload"]["isComplete"]
                            if not streaming:
                                break
                        elif kind == "energy_update" and streaming:
                            span.append(message["frameNumber"])
                            if message["payload"]["totalEnergy"] > 0:
                                lit += 1
                                ages.append(time.time_ns() / 1e6 - message["timestamp"])
                    if span:
                        frames += span[-1] - span[0] + 1
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        redis.terminate()
    p50, p99 = percentile(ages, 0.5), percentile(ages, 0.99)
    print(
        f"B's frames during A's generations: {frames}, with A's energy: {lit} "
        f"({100 * lit / max(frames, 1):.1f} %); its age p50 {p50:.2f} p99 {p99:.2f} ms"
    )


if __name__ == "__main__":
    trio.run(main)
