"""A real local runtime for the tests: llama.cpp's ``llama-server`` serving
SmolLM2-135M-Instruct (built and cached by ``tests/real_model/build_runtime.py``), started on
free loopback ports, and the wirthforge server in front of it through its OpenAI-compatible
source.

The tests run only when ``WIRTHFORGE_REAL_RUNTIME`` names the cache folder (``nox -s
real-model`` sets it); then a folder without a built runtime fails them, it never skips.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from tests.real_model import build_runtime
from tests.support.network import free_port
from tests.support.server import RunningServer
from wirthforge_trio.config import Settings
from wirthforge_trio.server import serve
from wirthforge_trio.sources.base import ModelSource
from wirthforge_trio.web import create_app

RUNTIME_VARIABLE = "WIRTHFORGE_REAL_RUNTIME"
THREADS = 1
"""One thread per runtime: the machines that run this are small and shared."""
READY_SECONDS = 120.0


def runtime_folder() -> Path | None:
    value = os.environ.get(RUNTIME_VARIABLE, "").strip()
    return Path(value) if value else None


needs_runtime = pytest.mark.skipif(
    runtime_folder() is None,
    reason=f"no real runtime: `nox -s real-model` builds one and sets {RUNTIME_VARIABLE}",
)


@attrs.define
class Llama:
    """One running llama-server."""

    process: trio.Process
    port: int
    alias: str
    log: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def answer(self, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
        """The runtime's own, non-streamed answer to the request the source makes."""
        body = {
            "model": self.alias,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": False,
            **extra,
        }
        async with httpx.AsyncClient(timeout=120) as http:
            response = await http.post(self.base_url + "/chat/completions", json=body)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def stream(self, prompt: str, max_tokens: int, top_logprobs: int) -> list[dict[str, Any]]:
        """The chunks of a streamed answer with logprobs, straight from the runtime."""
        body = {
            "model": self.alias,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": True,
            "logprobs": True,
            "top_logprobs": top_logprobs,
        }
        chunks: list[dict[str, Any]] = []
        async with (
            httpx.AsyncClient(timeout=120) as http,
            http.stream("POST", self.base_url + "/chat/completions", json=body) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                    chunks.append(json.loads(line[6:]))
        return chunks

    async def metric(self, name: str) -> float:
        """One counter of the runtime's Prometheus ``/metrics``."""
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(self.root + "/metrics")).text
        match = re.search(rf"^llamacpp:{name}\s+(\S+)$", text, re.MULTILINE)
        assert match, f"no llamacpp:{name} in /metrics"
        return float(match.group(1))

    async def slots(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=10) as http:
            return (await http.get(self.root + "/slots")).json()  # type: ignore[no-any-return]


async def _deliver_cancel(process: trio.Process) -> None:
    """A stopped process gets SIGCONT first, so that nothing outlives its test."""
    if process.returncode is None:
        try:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        except ProcessLookupError:
            pass  # it has just exited
    await process.wait()


async def start_llama(
    nursery: trio.Nursery, runtime_dir: Path, log_dir: Path, alias: str = "smollm2-135m"
) -> Llama:
    """Start llama-server on a free port and wait until it lists its model."""
    port = free_port()
    log = log_dir / f"llama-{alias}-{port}.log"
    command = [
        str(build_runtime.server_path(runtime_dir)),
        "-m",
        str(build_runtime.model_path(runtime_dir)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--alias",
        alias,
        "-c",
        "4096",
        "-np",
        "2",
        "--no-webui",
        "--temp",
        "0",
        "--seed",
        "42",
        "--threads",
        str(THREADS),
        "--metrics",
        "--slots",
    ]
    sink = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                stdout=sink,
                stderr=sink,
                check=False,
                deliver_cancel=_deliver_cancel,
            )
        )
    finally:
        os.close(sink)  # the runtime holds its own copy
    llama = Llama(process=process, port=port, alias=alias, log=log)
    with trio.move_on_after(READY_SECONDS):
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                if process.returncode is not None:
                    break
                try:
                    if (await http.get(llama.base_url + "/models")).status_code == 200:
                        return llama
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:]
    pytest.fail(f"llama-server did not come up on port {port}:\n{tail}")


async def start_wirthforge(
    nursery: trio.Nursery, settings: Settings, extra_sources: Sequence[ModelSource] = ()
) -> RunningServer:
    """The real server (Hypercorn, trio worker) in front of the runtime(s)."""
    app = create_app(settings, extra_sources=extra_sources)
    stop = trio.Event()
    server = await nursery.start(
        lambda task_status: serve(
            settings, app=app, shutdown_trigger=stop.wait, task_status=task_status
        )
    )
    return RunningServer(url=server.url, app=app, settings=settings, stop=stop)
