"""The commands users type, run as real subprocesses from the project's root with the
virtualenv's scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from .paths import ROOT

BIN = Path(sys.executable).parent
PEER_PROCESS = Path(__file__).with_name("peer_process.py")
"""WebSocket clients in a process of their own (see that file's docstring)."""


def start(args: list[str], **env: str) -> subprocess.Popen[str]:
    """``args`` in a subprocess, its output and errors in one text pipe."""
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def wait_healthy(port: int) -> None:
    """Until the server on ``port`` answers ``/health`` with 200 (20 s at most)."""
    async with httpx.AsyncClient() as http:
        with trio.fail_after(20):
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
