"""The Python client across real network cuts: a proxy kills the TCP connection mid-generation
(client side or server side), refuses reconnects for a while, and the text must come out
exact, with no duplicated token."""

from __future__ import annotations

import os

import pytest
import trio

from tests.support.proxy import TcpProxy
from tests.support.server import start_server, test_settings
from tests.support.waits import eventually
from wirthforge_trio.client import Backoff, ConnectionState, connect
from wirthforge_trio.contract.events import TokenStream
from wirthforge_trio.sources.demo import DemoSource

FAST = Backoff(base=0.05, cap=0.3)


@pytest.mark.parametrize(
    ("side", "outage"), [("client", 0.1), ("server", 0.1), ("client", 3.0), ("server", 3.0)]
)
async def test_a_cut_mid_generation_loses_nothing(
    nursery: trio.Nursery, side: str, outage: float
) -> None:
    server = await start_server(nursery, test_settings(demo_speed=1.0))
    port = int(server.url.rsplit(":", 1)[1])
    proxy = TcpProxy(target_port=port)
    await nursery.start(proxy.serve)
    prompt = f"cut on the {side} side for {outage} s"
    expected = DemoSource(seed=0).text_for(prompt)
    delivered: list[str] = []
    async with connect(f"ws://127.0.0.1:{proxy.port}/ws", backoff=FAST) as client:
        await client.wait_state(ConnectionState.CONNECTED)
        async with server.http() as http:
            (session,) = (await http.post("/prompt", json={"prompt": prompt})).json()["sessions"]
        cut = False
        with trio.fail_after(60):
            async for event in client:
                if (
                    isinstance(event, TokenStream)
                    and event.payload.session_id == session["sessionId"]
                ):
                    delivered.extend(event.payload.tokens)
                    if not cut and len(delivered) >= 6:
                        cut = proxy.cut(side, down_for=outage) > 0  # type: ignore[arg-type]
                    if event.payload.is_complete:
                        break
        assert cut, "the connection was cut mid-generation"
        assert client.reconnects >= 1
        assert client.sessions[session["sessionId"]].text == expected
    assert "".join(delivered) == expected, "events handed out: no gap, no duplicate"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(c) for n in task.child_nurseries for c in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_200_connect_resume_cycles_leak_nothing(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, test_settings())
    url = server.ws_url
    hub = server.app.wirthforge.hub

    async def cycle() -> None:
        async with connect(url, backoff=FAST) as client:
            async for event in client:
                if event.TYPE == "state_snapshot":
                    break

    for _ in range(20):  # warm up caches and lazily created objects
        await cycle()
    await eventually(lambda: len(hub) == 0, what="the warm-up connections to leave the hub")
    fds, tasks = _open_fds(), _tasks()
    for _ in range(200):
        await cycle()
    with trio.fail_after(5):
        await hub.close_all(1000, "done")  # returns once every connection has gone
    # Their sockets and tasks end just after: a leak is what is still there after 5 s.
    await eventually(lambda: _open_fds() <= fds + 3, what="open file descriptors to shrink back")
    await eventually(lambda: _tasks() <= tasks + 3, what="tasks to shrink back")
