"""Several Hypercorn workers behind one socket would split the stream: without a broker they
refuse to start with one line; one worker serves as before. Real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.commands import wait_healthy
from tests.support.network import free_port
from tests.support.paths import ROOT
from wirthforge_trio.config import Settings
from wirthforge_trio.transport.fastpath import hypercorn_workers
from wirthforge_trio.web.application import several_workers_refusal

BIN = Path(sys.executable).parent


def hypercorn(workers: int, port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BIN / "hypercorn"),
            "-k",
            "trio",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "wirthforge_trio.app:app",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def refused(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Hypercorn's status and output once it has stopped by itself (TimeoutExpired if it goes
    on serving); the status is Hypercorn's own (docs/decisions.md)."""
    try:
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    return process.returncode, out, err


def test_two_workers_without_a_broker_refuse_with_one_line() -> None:
    _, out, err = refused(hypercorn(2, free_port()))
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "2 Hypercorn workers" in lines[0]
    assert "WIRTHFORGE_BROKER" in lines[0] and "-w 1" in lines[0]
    assert "Traceback" not in out + err


async def test_one_worker_still_serves() -> None:
    port = free_port()
    process = hypercorn(1, port)
    try:
        await wait_healthy(port)
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"http://127.0.0.1:{port}/prompt", json={"prompt": "hi"})
        assert answer.status_code == 202
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
    assert "refuses" not in err


def test_the_refusal_is_for_several_workers_only() -> None:
    settings = Settings()
    assert several_workers_refusal(None, settings) is None  # wirthforge serve, embedding
    assert several_workers_refusal(1, settings) is None
    assert several_workers_refusal(2, settings) is not None
    assert several_workers_refusal(2, Settings(broker="redis://127.0.0.1:6379")) is None
    assert hypercorn_workers() is None  # pytest's own process was not started by Hypercorn
