"""A real Chromium (Debian's package, driven by Playwright) and the server it talks to, run as
users run it: ``wirthforge serve`` in a subprocess that can be stopped, frozen (SIGSTOP) and
started again."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx

from .commands import BIN, ROOT
from .waits import wait_until

CHROMIUM = os.environ.get("WIRTHFORGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class ServerProcess:
    """``wirthforge serve`` on a fixed port, which can be stopped, frozen and started again."""

    def __init__(self, port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log = log
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(BIN / "wirthforge"),
                    "serve",
                    "--port",
                    str(self.port),
                    "--model",
                    "demo",
                    "--model",
                    "demo:sage",
                ],
                cwd=ROOT,
                env={
                    **os.environ,
                    "WIRTHFORGE_DEMO_SPEED": "3",
                    "WIRTHFORGE_LOG_LEVEL": "INFO",
                    **self.env,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 20, "the server to answer /health")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
