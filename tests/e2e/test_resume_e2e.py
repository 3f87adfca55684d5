"""Resume at the protocol level, on a real server: what a reconnecting client gets back.

These tests speak the resume protocol by hand (the Python client's own tests use it through
its connection state machine), so every message is checked as the server sends it.
"""

from __future__ import annotations

from typing import Any

import trio

from tests.support.server import CheckedClient, RunningServer, start_server, test_settings
from tests.support.waits import eventually
from wirthforge_trio.sources.demo import DemoSource


async def open_resuming(server: RunningServer, resume: dict[str, Any]) -> Any:
    """Connect to /ws?resume=1 and send ``resume`` as the first message."""
    cm = server.connect_url(server.ws_url + "?resume=1")
    client: CheckedClient = await cm.__aenter__()
    hello = await client.receive()
    assert hello["type"] == "startup_complete", "the handshake comes first, resume or not"
    await client.send({"type": "resume", "payload": resume})
    return cm, client


async def read_tokens(
    client: CheckedClient, session_id: str, tokens: list[str], *, until: int | None = None
) -> bool:
    """Append the session's tokens as they come; stop at ``until`` tokens or completion."""
    with trio.fail_after(30):
        while until is None or len(tokens) < until:
            message = await client.receive()
            if message["type"] == "token_stream" and message["payload"]["sessionId"] == session_id:
                tokens.extend(message["payload"]["tokens"])
                if message["payload"]["isComplete"]:
                    return True
    return False


async def test_resume_returns_exactly_the_missing_tokens(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, test_settings(demo_speed=2.0))
    prompt = "resume me exactly"
    expected = DemoSource(seed=server.settings.demo_seed).text_for(prompt)

    cm, first = await open_resuming(server, {})
    snapshot = await first.receive_type("state_snapshot")
    assert snapshot["payload"]["resumed"] is False
    instance = snapshot["payload"]["serverInstance"]
    async with server.http() as http:
        (session,) = (await http.post("/prompt", json={"prompt": prompt})).json()["sessions"]
    session_id = session["sessionId"]
    tokens: list[str] = []
    await read_tokens(first, session_id, tokens, until=8)
    held = len(tokens)
    await cm.__aexit__(None, None, None)  # gone, with the generation still running

    # The model goes on writing while nobody listens: until it wrote a few tokens more.
    written = server.app.wirthforge.engine.decipher.sessions[session_id].tokens
    await eventually(lambda: len(written) >= held + 3)
    cm, second = await open_resuming(
        server,
        {
            "serverInstance": instance,
            "lastFrame": first.last_frame,
            "sessions": [{"sessionId": session_id, "tokens": held}],
        },
    )
    snapshot = await second.receive()
    assert snapshot["type"] == "state_snapshot", "the snapshot comes right after the handshake"
    assert snapshot["payload"]["resumed"] is True
    (row,) = [s for s in snapshot["payload"]["sessions"] if s["sessionId"] == session_id]
    assert row["resumable"] is True and row["tokens"] >= held
    replay = await second.receive_type("token_stream")
    assert replay["payload"]["sessionId"] == session_id
    assert len(replay["payload"]["tokens"]) == row["tokens"] - held, "exactly the missed ones"
    tokens.extend(replay["payload"]["tokens"])
    if not replay["payload"]["isComplete"]:
        await read_tokens(second, session_id, tokens)
    await cm.__aexit__(None, None, None)
    assert "".join(tokens) == expected, "no gap, no duplicate"
    server.stop.set()


async def test_a_session_started_while_away_is_replayed_whole(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, test_settings(demo_speed=4.0))
    cm, first = await open_resuming(server, {})
    snapshot = await first.receive_type("state_snapshot")
    await first.receive_type("energy_update")
    last_frame = first.last_frame
    await cm.__aexit__(None, None, None)
    prompt = "while you were away"
    async with server.http() as http:
        (session,) = (await http.post("/prompt", json={"prompt": prompt})).json()["sessions"]
    written = server.app.wirthforge.engine.decipher.sessions[session["sessionId"]].tokens
    await eventually(lambda: len(written) >= 3)  # it started while the client was away
    cm, second = await open_resuming(
        server,
        {"serverInstance": snapshot["payload"]["serverInstance"], "lastFrame": last_frame},
    )
    await second.receive_type("state_snapshot")
    tokens: list[str] = []
    await read_tokens(second, session["sessionId"], tokens)
    await cm.__aexit__(None, None, None)
    assert "".join(tokens) == DemoSource(seed=0).text_for(prompt)
    server.stop.set()


async def test_a_restarted_server_says_so_and_reports_the_lost_session(
    nursery: trio.Nursery,
) -> None:
    first_server = await start_server(nursery, test_settings())
    cm, client = await open_resuming(first_server, {})
    old_instance = (await client.receive_type("state_snapshot"))["payload"]["serverInstance"]
    await cm.__aexit__(None, None, None)
    first_server.stop.set()

    second_server = await start_server(nursery, test_settings())
    cm, client = await open_resuming(
        second_server,
        {
            "serverInstance": old_instance,
            "lastFrame": 1234,
            "sessions": [{"sessionId": "s-from-before", "tokens": 12}],
        },
    )
    snapshot = await client.receive_type("state_snapshot")
    payload = snapshot["payload"]
    assert payload["resumed"] is False
    assert payload["serverInstance"] != old_instance
    assert "restarted" in payload["reason"]
    (lost,) = [s for s in payload["sessions"] if s["sessionId"] == "s-from-before"]
    assert lost["resumable"] is False and lost["status"] == "unknown"
    # Nothing is replayed to a client of another instance: the next messages are live.
    with trio.move_on_after(0.5):
        while True:
            assert (await client.receive())["type"] != "token_stream"
    await cm.__aexit__(None, None, None)
    second_server.stop.set()


async def test_retention_is_bounded_and_the_snapshot_says_what_is_gone(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(nursery, test_settings(demo_speed=8.0, retention_sessions=1))
    cm, client = await open_resuming(server, {})
    instance = (await client.receive_type("state_snapshot"))["payload"]["serverInstance"]
    ids = []
    async with server.http() as http:
        for prompt in ("first", "second"):
            (session,) = (await http.post("/prompt", json={"prompt": prompt})).json()["sessions"]
            ids.append(session["sessionId"])
            await read_tokens(client, session["sessionId"], [])
    await trio.sleep(0.1)
    await cm.__aexit__(None, None, None)
    cm, client = await open_resuming(
        server,
        {
            "serverInstance": instance,
            "sessions": [{"sessionId": i, "tokens": 1, "complete": False} for i in ids],
        },
    )
    snapshot = (await client.receive_type("state_snapshot"))["payload"]
    rows = {s["sessionId"]: s for s in snapshot["sessions"]}
    assert rows[ids[0]]["resumable"] is False and "retention" in rows[ids[0]]["reason"]
    assert rows[ids[1]]["resumable"] is True and rows[ids[1]]["status"] == "complete"
    assert snapshot["retentionSessions"] == 1
    replay = await client.receive_type("token_stream")
    assert replay["payload"]["sessionId"] == ids[1] and replay["payload"]["isComplete"]
    await cm.__aexit__(None, None, None)
    server.stop.set()


async def test_subscriptions_survive_a_reconnect(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, test_settings(models=("demo", "demo:bravo")))
    cm, client = await open_resuming(server, {"channels": ["experience"], "models": ["demo-bravo"]})
    snapshot = (await client.receive_type("state_snapshot"))["payload"]
    assert snapshot["channels"] == ["experience", "system"]
    assert snapshot["subscribedModels"] == ["demo-bravo"]
    async with server.http() as http:
        response = await http.post(
            "/prompt", json={"prompt": "x", "models": ["demo", "demo:bravo"]}
        )
        sessions = {s["modelId"]: s["sessionId"] for s in response.json()["sessions"]}
    seen_models = set()
    with trio.fail_after(30):
        while True:
            message = await client.receive()
            assert message["channel"] in ("experience", "system"), message["type"]
            if message["type"] == "token_stream":
                seen_models.add(message["payload"]["modelId"])
                if message["payload"]["isComplete"]:
                    assert message["payload"]["sessionId"] == sessions["demo-bravo"]
                    break
    assert seen_models == {"demo-bravo"}
    await cm.__aexit__(None, None, None)
    server.stop.set()


async def test_a_resuming_connection_that_stays_silent_goes_live(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, test_settings(resume_wait=0.3))
    cm = server.connect_url(server.ws_url + "?resume=1")
    client: CheckedClient = await cm.__aenter__()
    await client.receive_type("startup_complete")
    frame = await client.receive_type("energy_update", seconds=3)
    assert frame["frameNumber"] >= 0
    await cm.__aexit__(None, None, None)
    server.stop.set()
