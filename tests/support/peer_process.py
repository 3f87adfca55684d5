"""WebSocket clients in a process of their own: a peer that tests freeze (SIGSTOP) or kill
(SIGKILL) mid-stream, or readers whose frame rate is measured outside the server's process.
Only trio and trio-websocket are imported, to start fast.

``python tests/support/peer_process.py WS_URL``: one client that reads every message and answers
every heartbeat (so the server's liveness watchdog is armed, as for a browser). Once live it
prints ``{"connectionId": "c-...", "localPort": 12345}`` (the id from the first heartbeat, the
port of its end of the TCP connection); when the server closes it, ``{"closed": CODE}``. It
runs until it is killed or closed.

``python tests/support/peer_process.py WS_URL --readers N --sessions S``: N clients; once every one
has its startup_complete it prints ``{"ready": N}``; each then reads until S sessions have
completed and the process prints ``{"results": [...]}``, per client: its connectionId, the
distinct energy frames it received and over how many seconds, each model's full text, and a
sample of the raw messages (one in 50) for the test to schema-check.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

SAMPLE_EVERY = 50


def say(message: dict[str, object]) -> None:
    print(json.dumps(message), flush=True)


async def answer_heartbeats(url: str) -> None:
    announced = False
    async with open_websocket_url(url) as ws:
        try:
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] != "heartbeat":
                    continue
                payload = message["payload"]
                await ws.send_message(
                    json.dumps(
                        {"type": "heartbeat_response", "payload": {"sequence": payload["sequence"]}}
                    )
                )
                if not announced:
                    announced = True
                    say({"connectionId": payload["connectionId"], "localPort": ws.local.port})
        except ConnectionClosed as closed:
            say({"closed": closed.reason.code})


async def read_sessions(
    url: str, sessions: int, ready: trio.MemorySendChannel[None], results: list[dict[str, Any]]
) -> None:
    async with open_websocket_url(url) as ws:
        first = json.loads(await ws.get_message())
        assert first["type"] == "startup_complete", first
        await ready.send(None)
        result: dict[str, Any] = {"connectionId": None, "sample": []}
        texts: dict[str, list[str]] = {}
        frames: set[int] = set()
        done = 0
        started = time.monotonic()
        n = 0
        while done < sessions:
            raw = await ws.get_message()
            n += 1
            if n % SAMPLE_EVERY == 0 and len(result["sample"]) < 200:
                result["sample"].append(raw)
            message = json.loads(raw)
            kind = message["type"]
            if kind == "energy_update":
                frames.add(message["frameNumber"])
            elif kind == "heartbeat":
                result["connectionId"] = message["payload"]["connectionId"]
            elif kind == "token_stream":
                payload = message["payload"]
                texts.setdefault(payload["modelId"], []).extend(payload["tokens"])
                done += payload["isComplete"]
        result["seconds"] = time.monotonic() - started
        result["frames"] = len(frames)
        result["texts"] = {model: "".join(tokens) for model, tokens in texts.items()}
        results.append(result)


async def readers(url: str, count: int, sessions: int) -> None:
    results: list[dict[str, Any]] = []
    send, receive = trio.open_memory_channel[None](count)
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(read_sessions, url, sessions, send, results)
        for _ in range(count):
            await receive.receive()
        say({"ready": count})
    say({"results": results})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--readers", type=int, default=0)
    parser.add_argument("--sessions", type=int, default=1)
    args = parser.parse_args()
    if args.readers:
        trio.run(readers, args.url, args.readers, args.sessions)
    else:
        trio.run(answer_heartbeats, args.url)


if __name__ == "__main__":
    main()
