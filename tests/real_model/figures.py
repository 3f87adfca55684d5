"""The real-runtime figures of docs/benchmarks/real-runtime.md: time to first token and
tokens/s at a WebSocket client of the wirthforge server, against the same request sent
straight to llama-server, and energy frames/s at the client during generation.

    python tests/real_model/build_runtime.py            # once (cached)
    .venv/bin/python -m tests.real_model.figures --runs 5

Runs alternate (server, direct, server, ...) after one warm-up of each, so that both see the
runtime's prompt cache the same way; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.support.real_runtime import Llama, start_llama, start_wirthforge
from wirthforge_trio.config import Settings

from . import build_runtime

PROMPT = "Write a long story about a lighthouse keeper and the sea, in many chapters."
TOP_LOGPROBS = 10  # what the OpenAI-compatible source asks for


async def through_server(url: str, ws_url: str, max_tokens: int) -> dict[str, float]:
    """One prompt through the wirthforge server, timed at a WebSocket client."""
    from trio_websocket import open_websocket_url

    async with open_websocket_url(ws_url) as ws, httpx.AsyncClient(base_url=url) as http:
        while json.loads(await ws.get_message())["type"] != "startup_complete":
            pass
        sent = time.perf_counter()
        response = await http.post("/prompt", json={"prompt": PROMPT, "maxTokens": max_tokens})
        response.raise_for_status()
        first = last = 0.0
        tokens = frames = frames_during = 0
        while True:
            message = json.loads(await ws.get_message())
            now = time.perf_counter()
            if message["type"] == "energy_update":
                frames += 1
                frames_during += bool(first)
            elif message["type"] == "token_stream":
                if message["payload"]["tokens"]:
                    first = first or now
                    last = now
                    tokens += len(message["payload"]["tokens"])
                if message["payload"]["isComplete"]:
                    break
    return {
        "ttft_ms": (first - sent) * 1000,
        "tokens": tokens,
        "tokens_per_s": (tokens - 1) / (last - first),
        "frames_per_s": frames_during / (last - first),
    }


async def direct(llama: Llama, max_tokens: int) -> dict[str, float]:
    """The same request, streamed straight from llama-server."""
    body = {
        "model": llama.alias,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
        "max_tokens": max_tokens,
    }
    first = last = 0.0
    tokens = 0
    async with httpx.AsyncClient(timeout=120) as http:
        sent = time.perf_counter()
        async with http.stream("POST", llama.base_url + "/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line[6:].strip() == "[DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices", []):
                    entries = (choice.get("logprobs") or {}).get("content") or []
                    if entries:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        tokens += len(entries)
    return {
        "ttft_ms": (first - sent) * 1000,
        "tokens": tokens,
        "tokens_per_s": (tokens - 1) / (last - first),
    }


async def measure(runs: int, max_tokens: int) -> dict[str, Any]:
    folder = build_runtime.ensure()
    with tempfile.TemporaryDirectory() as logs:
        async with trio.open_nursery() as nursery:
            llama = await start_llama(nursery, folder, Path(logs))
            settings = Settings(
                port=0,
                models=(f"openai:{llama.alias}",),
                openai_url=llama.base_url,
                log_level="WARNING",
                max_tokens=max_tokens,
            )
            server = await start_wirthforge(nursery, settings)
            await through_server(server.url, server.ws_url, max_tokens)  # warm-up
            await direct(llama, max_tokens)
            served, alone = [], []
            for _ in range(runs):
                served.append(await through_server(server.url, server.ws_url, max_tokens))
                alone.append(await direct(llama, max_tokens))
            server.stop.set()
            nursery.cancel_scope.cancel()

    def median(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 1)

    return {
        "runs": runs,
        "max_tokens": max_tokens,
        "server": {k: median(served, k) for k in served[0]},
        "direct": {k: median(alone, k) for k in alone[0]},
        "all": {"server": served, "direct": alone},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    result = trio.run(measure, args.runs, args.max_tokens)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
