"""Slow and stalled consumers: clients that never read must cost the others nothing, the
server's memory must stay bounded, and a stalled client whose unread lossless events pass a
bounded backlog is closed with a documented code and resumes without loss.

The five readers run in a process of their own (tests/support/peer_process.py) and return one raw
message in 50 for this test to schema-check: five clients validating ~300 messages a second
each with jsonschema would measure the test's CPU rather than the server's (every message
type is fully checked by the other end-to-end tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import attrs
import psutil
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from tests.support.checks import check_message
from tests.support.commands import PEER_PROCESS
from tests.support.server import RunningServer, stalled_client, start_server, test_settings
from wirthforge_trio.contract.close_codes import CLOSE_SLOW_CONSUMER
from wirthforge_trio.contract.events import RewardEvent, RewardPayload
from wirthforge_trio.sources.demo import DemoSource

PEER = PEER_PROCESS
SOAK = os.environ.get("WIRTHFORGE_SOAK") == "1"
COUNCIL = ("demo", "demo:b")
COUNCIL_IDS = {"demo": "demo", "demo:b": "demo-b"}
MEMORY_BOUND = 48 * 2**20
"""RSS the server process may gain while 20 clients stall through a council generation
(measured: 0-6 MiB)."""
STALLED_QUEUE_BOUND = 100
"""Lossless messages one stalled client may have waiting after a council generation
(measured: 38-58: its token batches merged, council and reward events)."""


def port_of(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


class Lines:
    """JSON lines from a process's stdout, as they come."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.stdout = process.stdout
        self.buffer = b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = await self.stdout.receive_some(65536)
            assert chunk, "the reader process exited"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]


async def test_twenty_stalled_clients_cost_five_readers_nothing(nursery: trio.Nursery) -> None:
    """The five readers run in a process of their own, as real clients do: in the server's
    process their parsing would compete with the server for the GIL."""
    server = await start_server(nursery, test_settings(models=COUNCIL, demo_speed=2.0))
    process = psutil.Process()
    rss_before = process.memory_info().rss
    stalled = [await stalled_client(port_of(server)) for _ in range(20)]
    prompt = "many listeners, some of them asleep"
    expected = {
        COUNCIL_IDS[name]: DemoSource(seed=0, name=name).text_for(prompt) for name in COUNCIL
    }
    readers = await trio.lowlevel.open_process(
        [sys.executable, str(PEER), server.ws_url, "--readers", "5", "--sessions", "2"],
        stdout=subprocess.PIPE,
    )
    try:
        lines = Lines(readers)
        with trio.fail_after(60):
            assert await lines.next() == {"ready": 5}
            async with server.http() as http:
                response = await http.post(
                    "/prompt", json={"prompt": prompt, "models": list(COUNCIL)}
                )
                assert response.status_code == 202, response.text
            results = (await lines.next())["results"]
            rss_growth = process.memory_info().rss - rss_before
            async with server.http() as http:
                status = (await http.get("/status")).json()
    finally:
        if readers.returncode is None:
            readers.kill()
        await readers.wait()
        for stream in stalled:
            await stream.aclose()
    rates = [round(r["frames"] / r["seconds"], 1) for r in results]
    reader_ids = {r["connectionId"] for r in results}
    stalled_rows = [c for c in status["clients"] if c["connectionId"] not in reader_ids]
    print(
        f"readers: {rates} frames/s; stalled queues {sorted(c['queued'] for c in stalled_rows)}; "
        f"RSS +{rss_growth / 2**20:.1f} MiB; server frame rate {status['frameRate']}"
    )
    assert len(results) == 5
    for result in results:
        for raw in result["sample"]:
            check_message(raw)
        assert result["texts"] == expected, "every reader gets the full text of every model"
    # Relative to what the server produced meanwhile: a shared machine's load slows both
    # alike, while a stalled client that cost the readers would show as a gap between them.
    assert min(rates) >= 0.9 * status["frameRate"], f"readers got {rates} frames/s"
    assert status["frameRate"] >= 45, "the stalled clients held up the frame clock"
    assert len(stalled_rows) == 20, "the stalled clients are still connected"
    assert all(c["framesReplaced"] > 0 for c in stalled_rows), "their frame slots replace"
    assert max(c["queued"] for c in stalled_rows) <= STALLED_QUEUE_BOUND
    assert rss_growth < MEMORY_BOUND, f"RSS grew by {rss_growth / 2**20:.1f} MiB"
    server.stop.set()


@pytest.mark.skipif(not SOAK, reason="soak only (WIRTHFORGE_SOAK=1)")
async def test_soak_stalled_clients_through_many_generations(nursery: trio.Nursery) -> None:
    """30 council generations back to back beside 20 stalled clients: the readers keep their
    rate and every text; the server's memory levels off (the stalled clients' backlogs are
    bounded, and past the limit they are closed)."""
    generations = 30
    server = await start_server(nursery, test_settings(models=COUNCIL, demo_speed=2.0))
    process = psutil.Process()
    stalled = [await stalled_client(port_of(server)) for _ in range(20)]
    readers = await trio.lowlevel.open_process(
        [
            sys.executable,
            str(PEER),
            server.ws_url,
            "--readers",
            "5",
            "--sessions",
            str(2 * generations),
        ],
        stdout=subprocess.PIPE,
    )
    rss: list[int] = []
    try:
        lines = Lines(readers)
        assert await lines.next() == {"ready": 5}
        engine = server.app.wirthforge.engine
        with trio.fail_after(600):
            for n in range(generations):
                sessions = engine.submit(f"soak {n}", ["demo", "demo-b"])
                while True:  # polled: a session has no completion event
                    if all(s.status != "streaming" for s in sessions):
                        break
                    await trio.sleep(0.1)
                rss.append(process.memory_info().rss)
            results = (await lines.next())["results"]
    finally:
        if readers.returncode is None:
            readers.kill()
        await readers.wait()
        for stream in stalled:
            await stream.aclose()
    rates = [round(r["frames"] / r["seconds"], 1) for r in results]
    print(
        f"soak: readers {rates} frames/s over {generations} generations; RSS "
        f"{rss[0] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB "
        f"(second half +{(rss[-1] - rss[len(rss) // 2]) / 2**20:.1f} MiB)"
    )
    assert min(rates) >= 55
    assert all(len(r["texts"]) == 2 for r in results)
    assert rss[-1] - rss[len(rss) // 2] < MEMORY_BOUND / 2, "memory levels off"
    server.stop.set()


# -- past the bounded backlog: closed with a documented code, resumed without loss -----------------

SMALL_BACKLOG = 64 * 1024
REWARDS = 2000
"""~1.3 MB of lossless events: past the default 1 MiB backlog and the socket buffers
(~160 KB with a 4 KiB receive buffer)."""


async def open_small_buffer_client(
    nursery: trio.Nursery, server: RunningServer, path: str
) -> WebSocketConnection:
    """A trio-websocket client whose socket takes in little: it stalls as soon as its code
    stops calling get_message (trio-websocket then stops reading the socket)."""
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port_of(server)))
    return await wrap_client_stream(nursery, trio.SocketStream(sock), "127.0.0.1", path)


@attrs.define
class StalledRun:
    """What a client that stalled mid-generation had when the server closed it."""

    expected: str
    instance: str = ""
    session_id: str = ""
    held: list[str] = attrs.field(factory=list)
    rewards: list[str] = attrs.field(factory=list)
    titles: list[str] = attrs.field(factory=list)
    last_frame: int = -1
    queued_while_stalled: list[int] = attrs.field(factory=list)
    close_code: int | None = None

    def take(self, message: dict[str, Any]) -> None:
        if "frameNumber" in message and message["channel"] == "energy":
            self.last_frame = max(self.last_frame, message["frameNumber"])
        elif message["type"] == "token_stream":
            if message["payload"]["sessionId"] == self.session_id:
                self.held.extend(message["payload"]["tokens"])
        elif message["type"] == "reward_event" and message["payload"]["title"].startswith("r-"):
            self.rewards.append(message["payload"]["title"])


PROMPT = "a slow reader, then a resume"


async def stall_past_the_backlog(nursery: trio.Nursery, server: RunningServer) -> StalledRun:
    """A resumable client reads a few tokens, stops reading while ~1.3 MB of lossless events
    are published, then reads again until the server's close."""
    run = StalledRun(expected=DemoSource(seed=0).text_for(PROMPT))
    ws = await open_small_buffer_client(nursery, server, "/ws?resume=1")
    assert check_message(await ws.get_message())["type"] == "startup_complete"
    await ws.send_message(json.dumps({"type": "resume", "payload": {}}))
    snapshot = check_message(await ws.get_message())
    assert snapshot["type"] == "state_snapshot"
    run.instance = snapshot["payload"]["serverInstance"]
    async with server.http() as http:
        (session,) = (await http.post("/prompt", json={"prompt": PROMPT})).json()["sessions"]
    run.session_id = session["sessionId"]
    with trio.fail_after(20):
        while len(run.held) < 5:
            run.take(json.loads(await ws.get_message()))

    # The client stops reading; lossless events pile up far past any reasonable backlog.
    engine = server.app.wirthforge.engine
    run.titles = [f"r-{i}" for i in range(REWARDS)]
    for start in range(0, REWARDS, 100):
        for title in run.titles[start : start + 100]:
            reward = RewardPayload(
                reward_type="feedback", title=title, points=1, description="x" * 480
            )
            engine.publish(RewardEvent(timestamp=1, payload=reward))
        await trio.sleep(0.02)  # each batch goes out with the next frame
    async with server.http() as http:
        status = (await http.get("/status")).json()
    run.queued_while_stalled = [c["queued"] for c in status["clients"]]

    # It reads again: what was in flight, then the close.
    with trio.fail_after(20):
        try:
            while True:
                run.take(check_message(await ws.get_message()))
        except ConnectionClosed:
            pass
    assert ws.closed is not None
    run.close_code = ws.closed.code
    return run


async def test_a_stalled_client_past_its_backlog_is_closed_with_the_documented_code(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(
        nursery,
        test_settings(demo_speed=1.0, max_backlog_bytes=SMALL_BACKLOG),
    )
    process = psutil.Process()
    rss_before = process.memory_info().rss
    run = await stall_past_the_backlog(nursery, server)
    rss_growth = process.memory_info().rss - rss_before
    print(
        f"stalled client: queue {run.queued_while_stalled} after {REWARDS} rewards (~1.3 MB), "
        f"closed with {run.close_code}, RSS +{rss_growth / 2**20:.1f} MiB"
    )
    assert run.close_code == CLOSE_SLOW_CONSUMER
    assert all(q <= 10 for q in run.queued_while_stalled), "past the backlog, nothing is queued"
    assert run.expected.startswith("".join(run.held)), "what it got before the close is exact"
    server.stop.set()


async def test_a_client_closed_for_its_backlog_resumes_without_loss(
    nursery: trio.Nursery,
) -> None:
    """With the default backlog limit and every missed event retained, the resume must bring
    back every token and every reward the stalled client did not get."""
    server = await start_server(
        nursery, test_settings(demo_speed=1.0, retention_events=REWARDS + 100)
    )
    run = await stall_past_the_backlog(nursery, server)
    assert run.close_code == CLOSE_SLOW_CONSUMER
    held_before = len(run.held)
    async with server.connect_url(server.ws_url + "?resume=1") as client:
        await client.receive_type("startup_complete")
        resume = {
            "serverInstance": run.instance,
            "lastFrame": run.last_frame,
            "sessions": [{"sessionId": run.session_id, "tokens": held_before}],
        }
        await client.send({"type": "resume", "payload": resume})
        snapshot = await client.receive_type("state_snapshot")
        assert snapshot["payload"]["resumed"] is True
        with trio.fail_after(30):
            while True:
                message = await client.receive()
                run.take(message)
                payload = message["payload"]
                if (
                    message["type"] == "token_stream"
                    and payload["sessionId"] == run.session_id
                    and payload["isComplete"]
                ):
                    break
    assert "".join(run.held) == run.expected, "no token lost, none repeated"
    assert set(run.rewards) == set(run.titles), "every lossless event, before or on resume"
    server.stop.set()
