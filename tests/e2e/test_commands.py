"""The commands users type: `wirthforge serve|schema`, `hypercorn -k trio ...`, and the mistake
of plain `hypercorn ...` (asyncio worker). Each runs as a real subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from functools import partial

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.support.checks import check_message
from tests.support.commands import BIN, ROOT, start, wait_healthy
from tests.support.network import free_port
from tests.support.server import RunningServer
from wirthforge_trio.config import SettingsError
from wirthforge_trio.server import bind_listener


async def stop_and_expect_1001(process: subprocess.Popen[str], port: int, sig: int) -> str:
    """Connect, signal the server, and check the client is told 1001 before the exit."""
    async with open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
        first = check_message(await ws.get_message())
        assert first["type"] == "startup_complete"
        process.send_signal(sig)
        with trio.fail_after(10), pytest.raises(ConnectionClosed):
            while True:
                check_message(await ws.get_message())
        assert ws.closed is not None and ws.closed.code == 1001
    output, _ = process.communicate(timeout=15)
    return output


async def test_wirthforge_serve_starts_and_stops_cleanly() -> None:
    port = free_port()
    process = start([str(BIN / "wirthforge"), "serve", "--port", str(port)])
    try:
        await wait_healthy(port)
        output = await stop_and_expect_1001(process, port, signal.SIGINT)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert f"ws://127.0.0.1:{port}/ws" in output
    assert "Traceback" not in output


async def test_ctrl_c_while_the_server_starts_is_an_ordinary_stop() -> None:
    """SIGINT as soon as the engine says it is ready, before the port listens: status 0 and
    no traceback (the signal receiver is open before anything starts; decisions.md)."""
    port = free_port()
    process = await trio.lowlevel.open_process(
        [str(BIN / "wirthforge"), "serve", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = bytearray()
    try:
        assert process.stdout is not None
        with trio.fail_after(20):
            while b"is ready" not in output:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"the server exited before it was ready: {output.decode()}"
                output.extend(chunk)
            process.send_signal(signal.SIGINT)
            while chunk := await process.stdout.receive_some(4096):
                output.extend(chunk)
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "Traceback" not in text, text


async def test_hypercorn_trio_worker_reads_the_environment() -> None:
    port = free_port()
    process = start(
        [
            str(BIN / "hypercorn"),
            "-k",
            "trio",
            "-b",
            f"127.0.0.1:{port}",
            "wirthforge_trio.app:app",
        ],
        WIRTHFORGE_TIER="High-Tier",
    )
    try:
        await wait_healthy(port)
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
            first = check_message(await ws.get_message())
        assert first["payload"]["tier"] == "High-Tier"
        output = await stop_and_expect_1001(process, port, signal.SIGTERM)
    finally:
        process.kill()
    assert "Traceback" not in output


def test_plain_hypercorn_explains_it_needs_the_trio_worker() -> None:
    port = free_port()
    process = start([str(BIN / "hypercorn"), "-b", f"127.0.0.1:{port}", "wirthforge_trio.app:app"])
    try:
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert "-k trio" in output
    assert "Traceback" not in output


def test_bad_configuration_is_a_message_not_a_traceback() -> None:
    result = subprocess.run(
        [str(BIN / "wirthforge"), "serve", "--model", "gpt-9"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "gpt-9" in result.stderr and "--model" in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run(
        [str(BIN / "hypercorn"), "-k", "trio", "wirthforge_trio.app:app"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        env={**os.environ, "WIRTHFORGE_HEARTBEAT_TIMEOUT": "soon"},
    )
    assert "WIRTHFORGE_HEARTBEAT_TIMEOUT" in result.stderr
    assert "Traceback" not in result.stderr


def test_schema_check_command_passes_on_the_checkout() -> None:
    result = subprocess.run(
        [str(BIN / "wirthforge"), "schema", "--check"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_default_port_falls_back_to_8146_and_explicit_port_explains() -> None:
    try:
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 8145))
    except OSError:
        pytest.skip("port 8145 is in use on this machine")
    with blocker:
        blocker.listen()
        try:
            fallback = bind_listener("127.0.0.1", 8145, explicit_port=False)
        except SettingsError:
            pytest.skip("port 8146 is in use on this machine")
        with fallback:
            assert fallback.getsockname()[1] == 8146
        with pytest.raises(SettingsError, match="--port"):
            bind_listener("127.0.0.1", 8145, explicit_port=True)


async def test_wirthforge_watch_prints_a_summary() -> None:
    port = free_port()
    process = start([str(BIN / "wirthforge"), "serve", "--port", str(port)])
    try:
        await wait_healthy(port)
        with trio.fail_after(30):
            result = await trio.run_process(
                [
                    str(BIN / "wirthforge"),
                    "watch",
                    "--url",
                    f"ws://127.0.0.1:{port}/ws",
                    "--summary",
                    "--seconds",
                    "2.5",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)
    assert result.returncode == 0, result.stderr
    assert b"frames/s" in result.stdout and b"state=connected" in result.stdout


# --- wirthforge watch: what a person at the terminal sees ------------------------------------


class Lines:
    """Lines of a subprocess's pipe, read as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.seen: list[str] = []

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise AssertionError(f"the pipe ended; lines so far: {self.seen}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.seen.append(line.decode())
        return self.seen[-1]

    async def rest(self) -> str:
        """Everything left, up to the end of the pipe."""
        chunks = [self.buffer]
        while chunk := await self.stream.receive_some():
            chunks.append(bytes(chunk))
        return b"".join(chunks).decode()


async def start_watch(nursery: trio.Nursery, url: str) -> trio.Process:
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            [str(BIN / "wirthforge"), "watch", "--url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
            cwd=ROOT,
        )
    )
    return process


async def interrupt(process: trio.Process) -> tuple[int, str]:
    """Ctrl+C: SIGINT, then the exit status and whatever was printed after it."""
    assert process.stdout is not None and process.stderr is not None
    process.send_signal(signal.SIGINT)
    with trio.fail_after(20):
        out, err = Lines(process.stdout), Lines(process.stderr)
        printed = await out.rest() + await err.rest()
        return await process.wait(), printed


async def test_ctrl_c_ends_wirthforge_watch_quietly_with_status_130(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    process = await start_watch(nursery, server.ws_url)
    assert process.stdout is not None
    with trio.fail_after(30):
        assert await Lines(process.stdout).next() == "startup_complete"
    status, printed = await interrupt(process)
    assert status == 130, printed
    assert "Traceback" not in printed and "KeyboardInterrupt" not in printed


async def test_wirthforge_watch_without_a_server_says_it_connects_and_why_it_retries(
    nursery: trio.Nursery,
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nobody listens: each attempt is refused
    process = await start_watch(nursery, url)
    assert process.stderr is not None
    err = Lines(process.stderr)
    with trio.fail_after(30):  # the default backoff: the second retry comes within 3 s
        first = await err.next()
        retries = [await err.next(), await err.next()]
    assert first == f"wirthforge watch: connecting to {url}"
    for line in retries:
        assert line.startswith("wirthforge watch: connection refused"), err.seen
        assert "; retrying in " in line and line.endswith(" s"), line
    status, printed = await interrupt(process)
    assert status == 130 and "Traceback" not in printed, printed
