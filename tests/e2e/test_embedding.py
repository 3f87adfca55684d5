"""The embedding example in docs/ runs as documented, and the embedding API holds its promises."""

from __future__ import annotations

import subprocess
import sys

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

import wirthforge_trio
from tests.support.commands import ROOT
from tests.support.waits import eventually
from wirthforge_trio.contract.events import ErrorEvent, ErrorPayload


def test_the_documented_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "embed_server.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "echo said: Hello from a model of my own." in result.stdout
    assert "reward: Embedded and running" in result.stdout
    assert result.stdout.rstrip().endswith("stopped")
    assert "Traceback" not in result.stderr


async def test_running_publishes_and_leaving_it_closes_clients_with_1001() -> None:
    settings = wirthforge_trio.Settings(port=0, log_level="WARNING")
    received: list[str] = []
    codes: list[int] = []

    async def listen(url: str, ready: trio.Event) -> None:
        async with open_websocket_url(url) as ws:
            await ws.get_message()  # startup_complete
            ready.set()
            try:
                while True:
                    received.append(str(await ws.get_message()))
            except ConnectionClosed:
                assert ws.closed is not None
                codes.append(ws.closed.code)

    async with trio.open_nursery() as outer:
        async with wirthforge_trio.running(settings) as server:
            assert server.address[1] > 0 and server.ws_url.endswith("/ws")
            ready = trio.Event()
            outer.start_soon(listen, server.ws_url, ready)
            await ready.wait()
            server.publish(
                ErrorEvent(
                    timestamp=1,
                    payload=ErrorPayload(
                        severity="info", code="APP_NOTICE", message="hello", component="ui"
                    ),
                )
            )
            await eventually(
                lambda: any("APP_NOTICE" in text for text in received),
                what="the published event to reach the client",
            )
        # Leaving the block shut the server down under the connected client.
    assert codes == [1001]
