"""The reconnecting client and ``watch``: state table, backoff, and end to end.

End-to-end tests run against the real server (``start_server``) or, where a server must
misbehave on cue (fall silent, replay overlapping tokens, restart), against small scripted
trio-websocket servers. Timing assertions use wide windows: these run on loaded machines.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionRejected,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from tests.support.events import frame, row, snapshot, startup, token_text
from tests.support.server import RunningServer, start_server, test_settings
from tests.support.waits import eventually
from wirthforge_trio.client import (
    TRANSITIONS,
    Backoff,
    Client,
    ClientClosed,
    ConnectionState,
    IllegalTransition,
    NotConnected,
    check_transition,
    connect,
)
from wirthforge_trio.config import SettingsError
from wirthforge_trio.contract.events import (
    EnergyUpdate,
    EnergyUpdatePayload,
    Event,
    Pong,
    StartupComplete,
    StateSnapshot,
    Subscriptions,
    TokenStream,
    TokenStreamPayload,
)
from wirthforge_trio.sources.demo import DemoSource
from wirthforge_trio.watch import event_line, watch

S = ConnectionState
FAST = Backoff(base=0.05, cap=0.2, rng=random.Random(7))


# --- helpers --------------------------------------------------------------------------------


async def next_of(client: Client, kind: type[Event], seconds: float = 5.0) -> Any:
    """The next event of type ``kind`` from the client's stream."""
    with trio.fail_after(seconds):
        async for event in client:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"the stream ended before a {kind.__name__}")


async def drain(client: Client, into: list[Event]) -> None:
    async for event in client:
        into.append(event)


def states_entered(client: Client) -> list[ConnectionState]:
    return [new for _, new in client.transitions]


async def status(server: RunningServer) -> dict[str, Any]:
    async with server.http() as http:
        response = await http.get("/status")
    body: dict[str, Any] = response.json()
    return body


async def prompt(server: RunningServer, text: str, models: list[str] | None = None) -> list[str]:
    body: dict[str, Any] = {"prompt": text}
    if models:
        body["models"] = models
    async with server.http() as http:
        response = await http.post("/prompt", json=body)
    assert response.status_code == 202, response.text
    return [s["sessionId"] for s in response.json()["sessions"]]


def closed_url() -> str:
    """A URL on a loopback port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws"


async def restart_on(nursery: trio.Nursery, port: int) -> RunningServer:
    """A new server on ``port``, once the old one has let go of it."""
    with trio.fail_after(8):
        while True:
            try:
                return await start_server(nursery, test_settings(port=port))
            except SettingsError:
                await trio.sleep(0.1)


# Scripted servers: each connection runs ``script(index, ws)``.

Script = Callable[[int, WebSocketConnection], Awaitable[None]]


@attrs.define
class FakeServer:
    script: Script
    port: int = 0
    opened_at: list[float] = attrs.field(factory=list)
    first_messages: list[dict[str, Any]] = attrs.field(factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self, nursery: trio.Nursery) -> FakeServer:
        server = await nursery.start(serve_websocket, self._handle, "127.0.0.1", 0, None)
        self.port = server.port
        return self

    async def _handle(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        index = len(self.opened_at)
        self.opened_at.append(trio.current_time())
        await self.script(index, ws)

    async def read_resume(self, ws: WebSocketConnection) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await ws.get_message())
        self.first_messages.append(message)
        assert message["type"] == "resume"
        payload: dict[str, Any] = message["payload"]
        return payload


def tokens_of(events: list[Event], sid: str) -> str:
    return "".join(
        "".join(e.payload.tokens)
        for e in events
        if isinstance(e, TokenStream) and e.payload.session_id == sid
    )


# --- state table and backoff ----------------------------------------------------------------


LEGAL = [
    (S.DISCONNECTED, S.CONNECTING),
    (S.CONNECTING, S.CONNECTED),
    (S.CONNECTING, S.RECONNECTING),
    (S.CONNECTED, S.RECONNECTING),
    (S.RECONNECTING, S.CONNECTING),
] + [(state, S.CLOSED) for state in S if state is not S.CLOSED]


@pytest.mark.parametrize(("old", "new"), LEGAL, ids=lambda s: s.name)
def test_legal_transitions_pass(old: ConnectionState, new: ConnectionState) -> None:
    check_transition(old, new)


def test_the_table_holds_exactly_the_legal_transitions() -> None:
    table = {(old, new) for old, targets in TRANSITIONS.items() for new in targets}
    assert table == set(LEGAL)
    assert set(TRANSITIONS) == set(S)


def test_every_other_transition_is_refused() -> None:
    illegal = [(a, b) for a in S for b in S if (a, b) not in set(LEGAL)]
    assert (S.CLOSED, S.CONNECTING) in illegal and (S.DISCONNECTED, S.CONNECTED) in illegal
    for old, new in illegal:
        with pytest.raises(IllegalTransition, match=f"{old.name} -> {new.name}"):
            check_transition(old, new)


def test_closed_is_final() -> None:
    assert TRANSITIONS[S.CLOSED] == frozenset()
    for new in S:
        with pytest.raises(IllegalTransition):
            check_transition(S.CLOSED, new)


def test_backoff_samples_stay_within_full_jitter_bounds() -> None:
    backoff = Backoff(rng=random.Random(1234))
    for attempt in range(16):
        ceiling = min(backoff.cap, backoff.base * 2**attempt)
        assert backoff.ceiling(attempt) == ceiling
        samples = [backoff.delay(attempt) for _ in range(400)]
        assert all(0.0 <= d <= ceiling for d in samples), attempt
        # Full jitter spreads over the whole range, not near its top only.
        assert min(samples) < 0.1 * ceiling and max(samples) > 0.9 * ceiling


def test_backoff_first_retry_is_at_most_base_and_never_over_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(99))
    assert all(backoff.delay(0) <= 0.5 for _ in range(1000))
    assert all(backoff.delay(n) <= 4.0 for n in range(64) for _ in range(50))
    assert backoff.ceiling(10_000) == 4.0, "huge attempt counts do not overflow"


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = Backoff(rng=random.Random(5))
    second = Backoff(rng=random.Random(5))
    assert [first.delay(n) for n in range(10)] == [second.delay(n) for n in range(10)]
    with pytest.raises(ValueError):
        first.delay(-1)


def test_bad_arguments_are_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="ws://"):
        Client("http://127.0.0.1/ws")
    with pytest.raises(ValueError, match="unknown channel"):
        Client("ws://127.0.0.1/ws", channels=["energy", "nope"])


def test_event_line_is_compact_and_only_says_what_was_sent() -> None:
    event = TokenStream(
        timestamp=1,
        payload=TokenStreamPayload(
            tokens=("a", " b"), is_complete=True, session_id="s", model_id="m"
        ),
    )
    assert event_line(event) == "token_stream model=m session=s tokens=['a', ' b'] complete"
    update = EnergyUpdate(
        timestamp=1,
        frame_number=7,
        payload=EnergyUpdatePayload(
            total_energy=0, delta_energy=0, tokens_generated=0, processing_time=0, model_id="m"
        ),
    )
    assert event_line(update) == "energy_update frame=7 model=m"
    assert event_line(Pong(timestamp=1, payload={"x": 1})) == "pong"


# --- against the real server ----------------------------------------------------------------


async def test_connects_and_yields_typed_events(server: RunningServer) -> None:
    async with connect(server.ws_url, backoff=FAST) as client:
        first = await next_of(client, Event)
        assert isinstance(first, StartupComplete)
        snap = await next_of(client, StateSnapshot)
        assert snap.payload.resumed is False and snap.payload.server_instance
        update = await next_of(client, EnergyUpdate)
        assert update.payload.model_id == "demo"
        assert client.state is S.CONNECTED
        assert client.server_instance == snap.payload.server_instance
        assert client.last_frame is not None and client.last_frame >= update.frame_number
        assert client.transitions == [(S.DISCONNECTED, S.CONNECTING), (S.CONNECTING, S.CONNECTED)]
    assert client.transitions[-1] == (S.CONNECTED, S.CLOSED)


async def test_heartbeats_are_answered(server: RunningServer) -> None:
    events: list[Event] = []
    async with connect(server.ws_url, backoff=FAST) as client, trio.open_nursery() as nursery:
        nursery.start_soon(drain, client, events)

        async def a_heartbeat_was_answered() -> bool:
            clients = (await status(server))["clients"]
            return any(c["heartbeatRoundTrip"]["samples"] > 0 for c in clients)

        await eventually(a_heartbeat_was_answered, 10, "the server to time a heartbeat answer")
        assert len((await status(server))["clients"]) == 1
        nursery.cancel_scope.cancel()


async def test_ping_measures_a_round_trip(server: RunningServer) -> None:
    events: list[Event] = []
    async with connect(server.ws_url, backoff=FAST) as client, trio.open_nursery() as nursery:
        with pytest.raises(NotConnected):
            await client.ping()  # not connected yet
        nursery.start_soon(drain, client, events)
        with trio.fail_after(5):
            await client.wait_state(S.CONNECTED)
        rtt = await client.ping()
        assert 0.0 < rtt < 5000.0
        assert await client.ping({"probe": [1, 2], "note": "x"}) > 0.0
        await eventually(lambda: sum(isinstance(e, Pong) for e in events) >= 2)
        payloads = [e.payload for e in events if isinstance(e, Pong)]
        assert {"probe": [1, 2], "note": "x"} in payloads
        nursery.cancel_scope.cancel()


async def test_channels_are_restored_through_resume(server: RunningServer) -> None:
    async with connect(server.ws_url, channels=["experience"], backoff=FAST) as client:
        snap = await next_of(client, StateSnapshot)
        assert set(snap.payload.channels) == {"experience", "system"}
        with trio.move_on_after(1.0):
            async for event in client:
                assert not isinstance(event, EnergyUpdate), "energy was not asked for"


async def test_subscribe_and_unsubscribe_channels(server: RunningServer) -> None:
    async with connect(server.ws_url, backoff=FAST) as client:
        await next_of(client, EnergyUpdate)
        with pytest.raises(ValueError, match="system"):
            await client.unsubscribe(["system"])
        with pytest.raises(ValueError, match="unknown channel"):
            await client.subscribe(["bogus"])
        await client.unsubscribe(["energy"])
        reply = await next_of(client, Subscriptions)
        assert "energy" not in reply.payload.channels
        assert client.channels == {"experience", "council", "reward", "system"}
        with trio.move_on_after(0.7):
            async for event in client:
                assert not isinstance(event, EnergyUpdate)
        await client.subscribe(["energy"])
        assert "energy" in (await next_of(client, Subscriptions)).payload.channels
        await next_of(client, EnergyUpdate)


async def test_subscriptions_survive_a_reconnect(server: RunningServer) -> None:
    async with connect(server.ws_url, backoff=FAST) as client:
        await next_of(client, EnergyUpdate)
        await client.unsubscribe(["energy"])
        await client.subscribe(["models"])
        await next_of(client, Subscriptions)
        client.abort()
        snap = await next_of(client, StateSnapshot)
        assert "energy" not in snap.payload.channels and "models" in snap.payload.channels
        assert client.reconnects == 1
        with trio.move_on_after(0.7):
            async for event in client:
                assert not isinstance(event, EnergyUpdate)


async def test_without_resume_the_subscriptions_are_sent_as_messages(server: RunningServer) -> None:
    async with connect(server.ws_url, resume=False, channels=["system"], backoff=FAST) as client:
        reply = await next_of(client, Subscriptions)
        assert reply.payload.channels == ("system",)
        with trio.move_on_after(0.7):
            async for event in client:
                assert not isinstance(event, EnergyUpdate | StateSnapshot)


async def test_subscribing_to_a_model_filters_the_others(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, test_settings(models=("demo", "demo:bravo")))
    async with server.http() as http:
        ids = [m["modelId"] for m in (await http.get("/models")).json()["models"]]
    other = next(m for m in ids if m != "demo")
    async with connect(server.ws_url, backoff=FAST) as client:
        await next_of(client, EnergyUpdate)
        await client.subscribe(models=[other])
        reply = await next_of(client, Subscriptions)
        assert reply.payload.models == (other,)
        assert client.models == frozenset({other})
        sessions = await prompt(server, "two models, one watched", ["demo", other])
        seen: set[str] = set()
        with trio.move_on_after(2.0):
            async for event in client:
                model_id = getattr(getattr(event, "payload", None), "model_id", None)
                if model_id is not None:
                    seen.add(model_id)
        assert "demo" not in seen, "the filtered-out model must not arrive"
        assert other in seen
        assert len(sessions) == 2 and all(s in sessions for s in client.sessions)
    server.stop.set()


async def test_aclose_is_a_normal_close_and_never_reconnects(server: RunningServer) -> None:
    async with connect(server.ws_url, backoff=FAST) as client:
        await next_of(client, EnergyUpdate)
        await client.aclose()
        assert client.state is S.CLOSED
        async for _ in client:  # what was buffered, then the end
            pass
        await trio.sleep(0.3)  # the scenario: time for a reconnect that must not come
        assert S.RECONNECTING not in states_entered(client)
        assert client.attempts == 1
        with pytest.raises(ClientClosed):
            await client.wait_state(S.CONNECTED)
    await eventually(lambda: len(server.app.wirthforge.hub) == 0)


async def test_leaving_the_block_closes_the_connection(server: RunningServer) -> None:
    async with connect(server.ws_url, backoff=FAST) as client:
        await next_of(client, EnergyUpdate)
        assert len(server.app.wirthforge.hub) == 1
    assert client.state is S.CLOSED
    assert client.transitions[-1] == (S.CONNECTED, S.CLOSED)
    await eventually(lambda: len(server.app.wirthforge.hub) == 0)


async def test_server_shutdown_makes_the_client_retry(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, test_settings())
    async with connect(running.ws_url, backoff=FAST) as client:
        await next_of(client, EnergyUpdate)
        running.stop.set()
        with trio.fail_after(5):
            await client.wait_state(S.RECONNECTING)
        assert client.close_code == 1001
        await eventually(lambda: client.attempts >= 4, seconds=6)
        assert client.state is not S.CLOSED
        assert client.reconnects == 0


async def test_abort_reconnects_and_resumes_without_gap_or_duplicate(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, test_settings(demo_speed=2.0))
    text = "resume me after a cut (marker-91c2)"
    expected = DemoSource(seed=0).text_for(text)
    events: list[Event] = []
    async with connect(server.ws_url, backoff=FAST) as client:
        await next_of(client, StateSnapshot)
        (sid,) = await prompt(server, text)
        with trio.fail_after(8):
            async for event in client:
                events.append(event)
                if sid in client.sessions and len(client.sessions[sid].tokens) >= 3:
                    break
        client.abort()
        with trio.fail_after(15):
            async for event in client:
                events.append(event)
                if client.sessions[sid].complete:
                    break
        snapshots = [e for e in events if isinstance(e, StateSnapshot)]
        assert len(snapshots) == 1 and snapshots[0].payload.resumed is True
        assert client.reconnects == 1 and client.close_code == 1006
        assert client.sessions[sid].text == expected
        assert tokens_of(events, sid) == expected, "the delivered events repeat nothing"
        assert client.lost_sessions == []
        assert (S.CONNECTED, S.RECONNECTING) in client.transitions
    server.stop.set()


async def test_a_restarted_server_reports_sessions_lost(nursery: trio.Nursery) -> None:
    first = await start_server(nursery, test_settings(demo_speed=1.0))
    port = int(first.url.rsplit(":", 1)[1])
    async with connect(first.ws_url, backoff=FAST) as client:
        await next_of(client, StateSnapshot)
        old_instance = client.server_instance
        (sid,) = await prompt(first, "a session the restart will lose")
        await eventually(lambda: sid in client.sessions and bool(client.sessions[sid].tokens))
        first.stop.set()
        with trio.fail_after(5):
            await client.wait_state(S.RECONNECTING)
        second = await restart_on(nursery, port)
        with trio.fail_after(8):
            while True:  # (a reconnect may still reach the old server while it shuts down)
                snap = await next_of(client, StateSnapshot)
                if snap.payload.server_instance != old_instance:
                    break
        assert snap.payload.resumed is False and snap.payload.reason
        assert client.server_instance not in (None, old_instance)
        assert client.lost_sessions == [sid] and sid not in client.sessions
        second.stop.set()


async def test_a_reader_that_does_not_read_is_not_a_dead_server(server: RunningServer) -> None:
    async with connect(server.ws_url, buffer=4, watchdog=0.5, backoff=FAST) as client:
        with trio.fail_after(5):
            await client.wait_state(S.CONNECTED)
        await trio.sleep(2.0)  # the buffer is full after a few frames; nobody reads
        assert client.state is S.CONNECTED
        assert S.RECONNECTING not in states_entered(client)
        for _ in range(20):
            await next_of(client, Event)
        assert client.attempts == 1


# --- against scripted servers ---------------------------------------------------------------


async def test_watchdog_reconnects_when_the_server_falls_silent(nursery: trio.Nursery) -> None:
    async def silent(index: int, ws: WebSocketConnection) -> None:
        await ws.send_message(startup())
        await trio.sleep_forever()

    fake = await FakeServer(silent).start(nursery)
    async with connect(fake.url, watchdog=1.0, backoff=FAST) as client:
        await next_of(client, StartupComplete)
        await eventually(lambda: len(fake.opened_at) >= 2, seconds=8)
        gap = fake.opened_at[1] - fake.opened_at[0]
        assert 0.9 <= gap <= 6.0, gap
        assert client.close_code == 1006
        assert (S.CONNECTED, S.RECONNECTING) in client.transitions
        await next_of(client, StartupComplete)  # the second connection's handshake


async def test_close_1000_from_the_server_ends_the_client(nursery: trio.Nursery) -> None:
    async def goodbye(index: int, ws: WebSocketConnection) -> None:
        await ws.send_message(startup())
        await ws.aclose(1000, "bye")

    fake = await FakeServer(goodbye).start(nursery)
    async with connect(fake.url, backoff=FAST) as client:
        received = [event async for event in client]
        assert [type(e) for e in received] == [StartupComplete]
        assert client.state is S.CLOSED and client.close_code == 1000
        assert client.attempts == 1 and S.RECONNECTING not in states_entered(client)
    assert len(fake.opened_at) == 1


async def test_gives_up_after_max_attempts() -> None:
    async with connect(closed_url(), backoff=FAST, max_attempts=3) as client:
        with trio.fail_after(5):
            await client.wait_state(S.CLOSED)
    assert client.attempts == 3 and client.last_error is not None
    assert states_entered(client).count(S.RECONNECTING) == 2


async def test_the_shell_sleeps_exactly_the_backoff_between_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a virtual clock: each attempt starts when the core's delay has passed, no sooner
    and no later, and the delays follow the seeded backoff (a refused loopback connect takes
    no virtual time)."""
    twin = Backoff(base=1.0, cap=8.0, rng=random.Random(21))
    started: list[float] = []
    retries = []

    async def record(client: Client) -> None:
        with pytest.raises(ClientClosed):  # after the last attempt, waiting for a retry
            while True:
                await client.wait_state(S.CONNECTING)
                started.append(trio.current_time())
                await client.wait_state(S.RECONNECTING)
                retries.append(client.retry)

    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(21))
    async with connect(closed_url(), backoff=backoff, max_attempts=6) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(record, client)
            with trio.fail_after(120):
                await client.wait_state(S.CLOSED)
    expected = [twin.delay(n) for n in range(5)]
    assert [r.delay for r in retries if r is not None] == expected
    assert all(r is not None and r.failure.kind == "refused" for r in retries)
    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    assert gaps == pytest.approx(expected, abs=1e-6)
    assert client.attempts == 6 and sum(expected) > 1.0


@pytest.mark.parametrize(("status", "final"), [(401, True), (403, True), (404, True), (503, False)])
async def test_a_refusal_that_retrying_cannot_change_ends_the_client(
    nursery: trio.Nursery, status: int, final: bool
) -> None:
    """A handshake refused with 4xx (a missing or wrong token, a wrong path) would be refused
    again: the client stops at once and says why; 503 (the server is full) and 5xx are
    retried as any failure is."""
    refused: list[float] = []

    async def refuse(request: WebSocketRequest) -> None:
        refused.append(trio.current_time())
        await request.reject(status, body=b'{"error": "not you"}')

    server = await nursery.start(serve_websocket, refuse, "127.0.0.1", 0, None)
    url = f"ws://127.0.0.1:{server.port}/ws"
    async with connect(url, backoff=FAST, max_attempts=None if final else 3) as client:
        with trio.fail_after(5):
            await client.wait_state(S.CLOSED)
    assert isinstance(client.last_error, ConnectionRejected)
    assert client.last_error.status_code == status
    assert len(refused) == client.attempts == (1 if final else 3)
    assert (S.RECONNECTING in states_entered(client)) is not final


async def test_resume_reports_what_is_held_and_trims_overlap(nursery: trio.Nursery) -> None:
    fake: FakeServer

    async def script(index: int, ws: WebSocketConnection) -> None:
        await ws.send_message(startup())
        resume = await fake.read_resume(ws)
        if index == 0:
            assert "serverInstance" not in resume and "lastFrame" not in resume
            assert resume.get("sessions", []) == []
            await ws.send_message(snapshot("A", resumed=False))
            await ws.send_message(frame(42))
            await ws.send_message(token_text("s1", ["a", "b"]))
            await ws.aclose(1001, "going away")
            return
        assert resume["serverInstance"] == "A" and resume["lastFrame"] == 42
        assert [(s["sessionId"], s["tokens"]) for s in resume["sessions"]] == [("s1", 2)]
        rows = (row("s1", 4), row("s2", 2), row("s3", 5))
        await ws.send_message(snapshot("A", resumed=True, sessions=rows, timestamp=10))
        # An overlapping replay (server said 4 published, sends 3: starts at 1, we hold 2).
        await ws.send_message(token_text("s1", ["b", "c", "d"], timestamp=10))
        await ws.send_message(token_text("s2", ["x", "y"], timestamp=10))  # started while away
        await ws.send_message(token_text("s3", ["z"], timestamp=12))  # live, after 5 tokens
        await ws.send_message(token_text("s1", ["e"], complete=True, timestamp=12))
        await ws.aclose(1000)

    fake = await FakeServer(script).start(nursery)
    async with connect(fake.url, backoff=FAST) as client:
        events = [event async for event in client]
    assert client.attempts == 2 and client.reconnects == 1
    assert client.sessions["s1"].text == "abcde" and client.sessions["s1"].complete
    assert tokens_of(events, "s1") == "abcde"
    assert client.sessions["s2"].text == "xy" and client.sessions["s2"].offset == 0
    assert client.sessions["s3"].offset == 5 and client.sessions["s3"].count == 6
    assert client.lost_sessions == []


async def test_a_new_server_instance_drops_unresumable_sessions(nursery: trio.Nursery) -> None:
    fake: FakeServer

    async def script(index: int, ws: WebSocketConnection) -> None:
        await ws.send_message(startup())
        resume = await fake.read_resume(ws)
        if index == 0:
            await ws.send_message(snapshot("A", resumed=False))
            await ws.send_message(frame(900))
            await ws.send_message(token_text("s1", ["half"]))
            await ws.send_message(token_text("s9", ["done"], complete=True))
            await ws.aclose(1001)
            return
        assert [s["sessionId"] for s in resume["sessions"]] == ["s1"], "complete ones are not held"
        lost = row("s1", 0, status="unknown", resumable=False)
        await ws.send_message(
            snapshot("B", resumed=False, sessions=(lost,), reason="server restarted")
        )
        await ws.send_message(frame(3))
        await ws.aclose(1000)

    fake = await FakeServer(script).start(nursery)
    async with connect(fake.url, backoff=FAST) as client:
        [event async for event in client]
    assert client.lost_sessions == ["s1"] and "s1" not in client.sessions
    assert client.sessions["s9"].text == "done"
    assert client.server_instance == "B" and client.last_frame == 3


# --- watch ----------------------------------------------------------------------------------


async def test_watch_prints_one_line_per_event(server: RunningServer) -> None:
    out = io.StringIO()
    code = await watch(server.ws_url, summary=False, out=out, seconds=1.5)
    lines = out.getvalue().splitlines()
    assert code == 0
    assert lines[0] == "startup_complete"
    assert lines[1] == "state_snapshot"
    assert sum(line.startswith("energy_update frame=") for line in lines) > 20


async def test_watch_summary_prints_a_line_per_second(server: RunningServer) -> None:
    out = io.StringIO()
    code = await watch(server.ws_url, summary=True, out=out, seconds=2.6)
    lines = out.getvalue().splitlines()
    assert code == 0
    assert 1 <= len(lines) <= 3
    assert all("frames/s=" in line and "state=" in line for line in lines)
    assert any("rtt=" in line and "rtt=-" not in line for line in lines)


async def test_watch_returns_1_when_nothing_answers() -> None:
    out = io.StringIO()
    assert await watch(closed_url(), summary=False, out=out, seconds=0.5) == 1
    assert out.getvalue() == ""


async def test_watch_says_why_each_retry_happens_one_line_per_attempt(
    nursery: trio.Nursery,
) -> None:
    async def failing(index: int, ws: WebSocketConnection) -> None:
        await ws.send_message(startup())
        await ws.aclose(1011, "oops")

    fake = await FakeServer(failing).start(nursery)
    out, err = io.StringIO(), io.StringIO()
    assert await watch(fake.url, summary=False, out=out, err=err, seconds=3.5) == 0
    lines = err.getvalue().splitlines()
    assert lines[0] == f"wirthforge watch: connecting to {fake.url}"
    retries = lines[1:]
    assert retries and all(
        line.startswith("wirthforge watch: closed with code 1011: oops; retrying in ")
        for line in retries
    ), lines
    # One line per ended connection: the last one may still be open at the deadline.
    assert len(fake.opened_at) - 1 <= len(retries) <= len(fake.opened_at)
    assert out.getvalue().splitlines().count("startup_complete") == len(fake.opened_at)


async def test_watch_says_when_a_silent_server_timed_out(nursery: trio.Nursery) -> None:
    async def silent(index: int, ws: WebSocketConnection) -> None:
        await ws.send_message(startup())
        await trio.sleep_forever()

    fake = await FakeServer(silent).start(nursery)
    err = io.StringIO()
    await watch(fake.url, summary=False, out=io.StringIO(), err=err, seconds=3.0)
    lines = err.getvalue().splitlines()
    assert any(
        line.startswith("wirthforge watch: timeout: no message for 2.0 s; retrying in ")
        for line in lines
    ), lines
