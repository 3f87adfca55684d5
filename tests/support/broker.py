"""A real Redis and real server processes for the broker's end-to-end tests.

Redis is Debian's ``redis-server``, started on a free loopback port with nothing written to
disk. Without it these tests fail (never skip): CI installs it (``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from tests.support.network import free_port

DEADLINE = 20.0
"""Seconds anything in these tests may take on a busy machine (never a measured time)."""


@attrs.define
class Redis:
    """A ``redis-server`` that a test may stop and start again on the same port."""

    port: int
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: `apt-get install redis-server` (the broker's "
                "tests need a real Redis; .ci/run installs it)"
            )
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def command(self, *args: str) -> bytes:
        """One command through ``redis-cli`` (as someone else's program would write)."""
        cli = shutil.which("redis-cli")
        assert cli is not None, "redis-cli comes with redis-server"
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        return subprocess.run(
            [cli, "-p", str(self.port), *auth, *args], check=True, capture_output=True
        ).stdout


@attrs.define
class ServerProcess:
    """``wirthforge serve`` in its own process, its output in a file."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.kill()


def launch(broker: str, log_path: Path, **env: str) -> ServerProcess:
    port = free_port()
    environment = {
        **os.environ,
        "WIRTHFORGE_BROKER": broker,
        "WIRTHFORGE_DEMO_SPEED": "3",
        "WIRTHFORGE_LOG_LEVEL": "INFO",
        **env,
    }
    out = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "wirthforge_trio.cli", "serve", "--port", str(port)],
        env=environment,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    return ServerProcess(port, process, log_path)


APP = "wirthforge_trio.app:app"


def launch_hypercorn(broker: str, log_path: Path, *, workers: int) -> ServerProcess:
    """``hypercorn -k trio -w N wirthforge_trio.app:app`` on one free port."""
    port = free_port()
    hypercorn = Path(sys.executable).parent / "hypercorn"
    out = log_path.open("wb")
    process = subprocess.Popen(
        [
            str(hypercorn),
            "-k",
            "trio",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "wirthforge_trio.app:app",
        ],
        env={**os.environ, "WIRTHFORGE_BROKER": broker, "WIRTHFORGE_DEMO_SPEED": "3"},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    return ServerProcess(port, process, log_path)


async def health(server: ServerProcess) -> dict[str, Any] | None:
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            reply: dict[str, Any] = (await http.get(f"{server.url}/health")).json()
            return reply
    except httpx.HTTPError:
        return None


async def wait_for_health(server: ServerProcess, status: str = "ok") -> dict[str, Any]:
    """Poll /health until it says ``status`` (or fail with the server's output)."""
    with trio.move_on_after(DEADLINE):
        while True:
            reply = await health(server)
            if reply is not None and reply["status"] == status:
                return reply
            if server.process.poll() is not None:
                break
            await trio.sleep(0.1)
    raise AssertionError(f"/health never said {status!r}; output:\n{server.output()[-3000:]}")
