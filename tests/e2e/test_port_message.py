"""A second ``wirthforge serve`` says that the default port was taken and which one it uses;
a third says both are in use, in a sentence that reads well (issue 23, C5). Real processes."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import trio

from tests.support.commands import BIN, ROOT, wait_healthy
from tests.support.network import port_is_free
from wirthforge_trio.config import DEFAULT_PORT, FALLBACK_PORT

ENV = {k: v for k, v in os.environ.items() if not k.startswith("WIRTHFORGE_")}


def serve() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "wirthforge"), "serve"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        out, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


async def test_a_second_server_says_the_default_port_was_taken() -> None:
    if not (port_is_free(DEFAULT_PORT) and port_is_free(FALLBACK_PORT)):
        pytest.skip(f"port {DEFAULT_PORT} or {FALLBACK_PORT} is in use on this machine")
    first = serve()
    second: subprocess.Popen[str] | None = None
    try:
        await wait_healthy(DEFAULT_PORT)
        second = serve()
        await wait_healthy(FALLBACK_PORT)
        with trio.fail_after(30):
            third = await trio.run_process(
                [str(BIN / "wirthforge"), "serve"],
                cwd=ROOT,
                env=ENV,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    finally:
        first_out = stop(first)
        second_out = stop(second) if second is not None else ""
    assert "taken" not in first_out, first_out
    lines = second_out.splitlines()
    assert f"port {DEFAULT_PORT} is taken (another wirthforge?); using {FALLBACK_PORT} instead" in (
        lines
    ), second_out
    assert any(f"ws://127.0.0.1:{FALLBACK_PORT}/ws" in line for line in lines), second_out
    error = third.stderr.decode()
    assert third.returncode != 0
    assert (
        f"ports {DEFAULT_PORT} and {FALLBACK_PORT} on 127.0.0.1 are both in use "
        "(another wirthforge?); choose a free one with --port or WIRTHFORGE_PORT"
    ) in error, error
    assert "Traceback" not in error, error
