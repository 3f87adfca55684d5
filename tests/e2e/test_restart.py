"""Restart: stopping the server mid-generation closes every client with 1001 and the server
exits within a bound, even with a client that stopped reading; a server restarted on the same
port binds it at the first try and serves at once; a taken default port falls back to 8146
and the command says so.

Already covered elsewhere, not repeated: 1001 to an idle client on stop and on cancelling an
embedded server (test_e2e), 1001 on SIGINT/SIGTERM of the commands (test_commands),
bind_listener's fallback (test_commands), the Python client reconnecting to a restarted
server (test_client), the snapshot of a restarted server (test_resume_e2e).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import Any

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.support.commands import BIN, ROOT
from tests.support.network import free_port, port_is_free
from tests.support.server import CheckedClient, RunningServer, stalled_client, test_settings
from tests.support.waits import eventually
from wirthforge_trio.config import DEFAULT_PORT, FALLBACK_PORT, Settings
from wirthforge_trio.server import SHUTDOWN_DEADLINE, serve
from wirthforge_trio.sources.demo import DemoSource
from wirthforge_trio.web import SHUTDOWN_CLOSE_TIMEOUT, create_app

COUNCIL = ("demo", "demo:b")
CLOSE_BOUND = SHUTDOWN_CLOSE_TIMEOUT + 1.0
"""Clients get their 1001 within the server's close timeout (+1 s of scheduling slack)."""
EXIT_BOUND = SHUTDOWN_CLOSE_TIMEOUT + SHUTDOWN_DEADLINE + 2.0
"""serve() returns within its close timeout and Hypercorn's deadline (+2 s of slack)."""


@attrs.define
class Stoppable:
    """A server in a nursery of its own: ``stop()`` and ``exited`` tell when serve() returned."""

    running: RunningServer
    exited: trio.Event
    stopped_at: float = 0.0
    exited_at: float = 0.0

    def stop(self) -> None:
        self.stopped_at = trio.current_time()
        self.running.stop.set()

    @property
    def exit_seconds(self) -> float:
        return self.exited_at - self.stopped_at


async def start_stoppable(nursery: trio.Nursery, settings: Settings) -> Stoppable:
    app = create_app(settings)
    stop = trio.Event()
    exited = trio.Event()
    holder: dict[str, Stoppable] = {}

    async def run(task_status: trio.TaskStatus[Any]) -> None:
        try:
            await serve(settings, app=app, shutdown_trigger=stop.wait, task_status=task_status)
        finally:
            holder["s"].exited_at = trio.current_time()
            exited.set()

    server = await nursery.start(run)
    stoppable = Stoppable(RunningServer(server.url, app, settings, stop), exited)
    holder["s"] = stoppable
    return stoppable


async def tokens_until_closed(client: CheckedClient) -> tuple[dict[str, list[str]], int | None]:
    """Every token per model until the server closes the connection, and the close code."""
    tokens: dict[str, list[str]] = {}
    try:
        while True:
            message = await client.receive()
            if message["type"] == "token_stream":
                payload = message["payload"]
                tokens.setdefault(payload["modelId"], []).extend(payload["tokens"])
    except ConnectionClosed:
        pass
    assert client.ws.closed is not None
    return tokens, client.ws.closed.code


async def test_stopping_mid_generation_closes_every_client_with_1001(
    nursery: trio.Nursery,
) -> None:
    server = await start_stoppable(nursery, test_settings(models=COUNCIL, demo_speed=1.0))
    prompt = "stop me halfway"
    expected = {
        "demo": DemoSource(seed=0, name="demo").text_for(prompt),
        "demo-b": DemoSource(seed=0, name="demo:b").text_for(prompt),
    }
    results: list[tuple[dict[str, list[str]], int | None, float]] = []

    async def listen(ready: trio.Event) -> None:
        async with server.running.connect() as client:
            await client.receive_type("startup_complete")
            ready.set()
            tokens, code = await tokens_until_closed(client)
            results.append((tokens, code, trio.current_time() - server.stopped_at))

    async with trio.open_nursery() as clients:
        for _ in range(3):
            ready = trio.Event()
            clients.start_soon(listen, ready)
            await ready.wait()
        async with server.running.http() as http:
            response = await http.post("/prompt", json={"prompt": prompt, "models": list(COUNCIL)})
            assert response.status_code == 202
        sessions = server.running.app.wirthforge.engine.decipher.sessions
        ids = [s["sessionId"] for s in response.json()["sessions"]]
        await eventually(lambda: all(len(sessions[i].tokens) >= 3 for i in ids))  # mid-answer
        with trio.fail_after(EXIT_BOUND + 5):
            server.stop()
            await server.exited.wait()
    print(
        f"1001 after {[round(t, 3) for _, _, t in results]} s; "
        f"serve() returned after {server.exit_seconds:.3f} s"
    )
    assert len(results) == 3
    for tokens, code, seconds in results:
        assert code == 1001
        assert seconds <= CLOSE_BOUND
        assert set(tokens) == set(expected), "both models were streaming"
        for model, received in tokens.items():
            text = "".join(received)
            assert 0 < len(text) < len(expected[model]), "cut mid-answer"
            assert expected[model].startswith(text), "what arrived is exact"
    assert server.exit_seconds <= EXIT_BOUND


async def test_stopping_with_a_stalled_client_still_exits_in_time(nursery: trio.Nursery) -> None:
    """A client that never reads cannot take its close frame; the server must not wait on it
    beyond its shutdown deadline (its writer is parked in Hypercorn's shielded send)."""
    server = await start_stoppable(
        nursery, test_settings(models=COUNCIL, demo_speed=1.0, send_timeout=60.0)
    )
    port = int(server.running.url.rsplit(":", 1)[1])
    stalled = await stalled_client(port)

    async def stalled_backs_up() -> bool:
        async with server.running.http() as http:
            clients = (await http.get("/status")).json()["clients"]
        return any(c["queuedBytes"] > 1000 for c in clients)  # a reader's queue stays short

    try:
        async with server.running.connect() as client:
            await client.receive_type("startup_complete")
            server.running.app.wirthforge.engine.submit(
                "fill the stalled buffers", ["demo", "demo-b"]
            )
            await eventually(stalled_backs_up, 15)  # its buffers are full: its messages queue
            server.stop()
            _, code = await tokens_until_closed(client)
            with trio.move_on_after(EXIT_BOUND + 1):
                await server.exited.wait()
            assert server.exited.is_set(), f"serve() still running {EXIT_BOUND + 1:g} s after stop"
    finally:
        await stalled.aclose()  # (which lets a stuck server finish)
    print(f"with a stalled client, serve() returned after {server.exit_seconds:.2f} s")
    assert code == 1001, "the reading client still gets its 1001"
    assert server.exit_seconds <= EXIT_BOUND


async def test_a_restarted_server_binds_the_same_port_at_once_and_serves(
    nursery: trio.Nursery,
) -> None:
    port = free_port()
    first = await start_stoppable(nursery, test_settings(port=port, demo_speed=1.0))
    async with first.running.connect() as client:
        await client.receive_type("startup_complete")
        first.running.app.wirthforge.engine.submit("interrupted")
        await client.receive_type("token_stream")
        first.stop()
        _, code = await tokens_until_closed(client)
    assert code == 1001
    with trio.fail_after(EXIT_BOUND + 5):
        await first.exited.wait()

    # No retry loop: the port is free the moment serve() has returned (SO_REUSEADDR, and the
    # old listener is closed).
    started = trio.current_time()
    second = await start_stoppable(nursery, test_settings(port=port, demo_speed=4.0))
    prompt = "right after the restart"
    async with second.running.connect() as client, second.running.http() as http:
        await client.receive_type("startup_complete")
        assert (await http.get("/health")).json()["status"] == "ok"
        assert (await http.post("/prompt", json={"prompt": prompt})).status_code == 202
        first_token = await client.receive_type("token_stream")
        ready_after = trio.current_time() - started
        tokens = list(first_token["payload"]["tokens"])
        while not first_token["payload"]["isComplete"]:
            first_token = await client.receive_type("token_stream", seconds=20)
            tokens.extend(first_token["payload"]["tokens"])
    print(
        f"restart: old server exited {first.exit_seconds:.2f} s after stop; new server bound "
        f"port {port} and streamed its first token {ready_after:.2f} s after starting"
    )
    assert "".join(tokens) == DemoSource(seed=0).text_for(prompt)
    second.stop()
    with trio.fail_after(EXIT_BOUND + 5):
        await second.exited.wait()


async def test_a_taken_default_port_falls_back_to_8146_and_the_output_says_so() -> None:
    if not port_is_free(FALLBACK_PORT):
        pytest.skip(f"port {FALLBACK_PORT} is in use on this machine")
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        blocker.bind(("127.0.0.1", DEFAULT_PORT))
    except OSError:
        blocker.close()
        pytest.skip(f"port {DEFAULT_PORT} is in use on this machine")
    blocker.listen()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRTHFORGE_")}
    output = bytearray()
    try:
        process = await trio.lowlevel.open_process(
            [str(BIN / "wirthforge"), "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            async with trio.open_nursery() as nursery:

                async def collect() -> None:
                    assert process.stdout is not None
                    while chunk := await process.stdout.receive_some(4096):
                        output.extend(chunk)

                nursery.start_soon(collect)
                with trio.fail_after(20):
                    while True:  # until the server listens on the fallback port
                        try:
                            stream = await trio.open_tcp_stream("127.0.0.1", FALLBACK_PORT)
                        except OSError:
                            assert process.returncode is None, "the server exited"
                            await trio.sleep(0.1)
                            continue
                        await stream.aclose()
                        break
                process.send_signal(signal.SIGINT)
                with trio.fail_after(15):
                    await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
    finally:
        blocker.close()
    text = output.decode(errors="replace")
    print(f"fallback: {text.strip()}")
    assert process.returncode == 0, text
    assert f"ws://127.0.0.1:{FALLBACK_PORT}/ws" in text, text
    assert "Traceback" not in text
