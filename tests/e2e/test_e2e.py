"""End to end: a real Hypercorn server on loopback, real WebSocket and HTTP clients."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from tests.support.logs import records_logged
from tests.support.server import RunningServer, stalled_client, start_server, test_settings
from wirthforge_trio import __version__
from wirthforge_trio.sources.demo import DemoSource


async def test_handshake_is_startup_complete(server: RunningServer) -> None:
    async with server.connect() as client:
        first = await client.receive()
    assert first["type"] == "startup_complete"
    assert first["channel"] == "system"
    payload = first["payload"]
    assert payload["model"] == "demo"
    assert payload["version"] == __version__
    assert payload["frameRate"] == 60
    assert payload["tier"] in ("Low-Tier", "Mid-Tier", "High-Tier")
    assert payload["capabilities"] == ["visualization"]


async def test_frames_at_60_hz_and_heartbeats(server: RunningServer) -> None:
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        first = await client.receive_type("energy_update")
        frames = 0
        heartbeats: list[dict[str, Any]] = []
        start = trio.current_time()
        while trio.current_time() - start < 3.0:
            message = await client.receive()
            if message["type"] == "energy_update":
                frames += 1
            elif message["type"] == "heartbeat":
                heartbeats.append(message["payload"])
        elapsed = trio.current_time() - start
        frame_span = client.last_frame - first["frameNumber"]
    rate = frames / elapsed
    assert 55 <= rate <= 65, f"{rate:.1f} frames/s"
    assert 55 <= frame_span / elapsed <= 65
    assert 2 <= len(heartbeats) <= 4
    sequences = [h["sequence"] for h in heartbeats]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert all(h["connectionId"].startswith("c-") for h in heartbeats)
    assert all(50 <= h["frameRate"] <= 70 for h in heartbeats)


async def test_an_idle_server_builds_its_frames_at_rest(server: RunningServer) -> None:
    """Nothing generating: the frames come from the short path (``framesAtRest`` counts
    them) and are the default model's energy_update, one per frame, as always."""
    async with server.connect() as client, server.http() as http:
        await client.receive_type("startup_complete")
        before = (await http.get("/status")).json()["framesAtRest"]
        updates = [await client.receive_type("energy_update") for _ in range(30)]
        after = (await http.get("/status")).json()["framesAtRest"]
    assert after - before >= 25
    numbers = [u["frameNumber"] for u in updates]
    assert numbers == sorted(numbers) and numbers[-1] - numbers[0] >= 29
    for update in updates:
        assert update["channel"] == "energy"
        assert update["payload"]["modelId"] == "demo"
        assert update["payload"]["tokensGenerated"] == 0
        assert update["payload"]["deltaEnergy"] == 0.0
        assert 0 <= update["payload"]["processingTime"] <= 16.67


async def test_prompt_streams_the_full_demo_text(server: RunningServer) -> None:
    prompt = "Describe the glow of a local model (unique-marker-7f3a)"
    expected = DemoSource(seed=server.settings.demo_seed).text_for(prompt)
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        async with server.http() as http:
            response = await http.post("/prompt", json={"prompt": prompt})
        assert response.status_code == 202
        (session,) = response.json()["sessions"]
        assert session["modelId"] == "demo"
        tokens: list[str] = []
        batches = 0
        busy_frames = 0
        with trio.fail_after(30):
            while True:
                message = await client.receive()
                if message["type"] == "energy_update" and message["payload"]["tokensGenerated"]:
                    busy_frames += 1
                if message["type"] != "token_stream":
                    continue
                payload = message["payload"]
                assert payload["sessionId"] == session["sessionId"]
                assert payload["energyCost"] == pytest.approx(0.1 * len(payload["tokens"]))
                tokens.extend(payload["tokens"])
                batches += 1
                if payload["isComplete"]:
                    break
    assert "".join(tokens) == expected
    assert batches > 5, "tokens arrive frame by frame, not in one block"
    assert busy_frames > 5
    assert not any("unique-marker-7f3a" in raw for raw in client.raw), "prompt on the socket"


async def test_two_clients_get_the_same_tokens(server: RunningServer) -> None:
    prompt = "two listeners"
    expected = DemoSource(seed=server.settings.demo_seed).text_for(prompt)
    async with server.connect() as a, server.connect() as b:
        await a.receive_type("startup_complete")
        await b.receive_type("startup_complete")
        async with server.http() as http:
            assert (await http.post("/prompt", json={"prompt": prompt})).status_code == 202
        texts = []
        for client in (a, b):
            tokens: list[str] = []
            while True:
                message = await client.receive_type("token_stream", seconds=30)
                tokens.extend(message["payload"]["tokens"])
                if message["payload"]["isComplete"]:
                    break
            texts.append("".join(tokens))
    assert texts == [expected, expected]


async def test_origin_allowlist(server: RunningServer) -> None:
    with pytest.raises(ConnectionRejected) as refused:
        async with open_websocket_url(
            server.ws_url, extra_headers=[(b"Origin", b"http://evil.example")]
        ):
            pass  # pragma: no cover - the handshake must fail
    assert refused.value.status_code == 403
    assert b"evil.example" in (refused.value.body or b"")
    for origin in (b"http://localhost:5173", b"http://127.0.0.1:9999", b"http://[::1]:3000"):
        async with server.connect(extra_headers=[(b"Origin", origin)]) as client:
            assert (await client.receive())["type"] == "startup_complete"


@pytest.mark.parametrize(
    ("sent", "code"),
    [
        ("this is not json", "INVALID_JSON"),
        ("[1, 2, 3]", "INVALID_MESSAGE"),
        ('{"payload": {}}', "INVALID_MESSAGE"),
        ('{"type": "launch_missiles"}', "UNKNOWN_MESSAGE_TYPE"),
        ('{"type": "ping", "payload": 3}', "INVALID_FIELD"),
        ('{"type": "heartbeat_response", "payload": {"sequence": "one"}}', "INVALID_FIELD"),
        ('{"type": "subscribe", "payload": {"channels": ["nope"]}}', "UNKNOWN_CHANNEL"),
    ],
)
async def test_bad_client_messages_get_error_events(
    server: RunningServer, sent: str, code: str
) -> None:
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        await client.send(sent)
        error = await client.receive_type("error_event")
        assert error["payload"]["code"] == code
        assert error["payload"]["component"] == "websocket"
        assert error["payload"]["recoverable"] is True
        assert len(error["payload"]["message"]) > 10
        # The stream goes on, and the connection still answers.
        await client.receive_type("energy_update")
        await client.send({"type": "ping", "payload": {"n": 1}})
        pong = await client.receive_type("pong")
        assert pong["payload"] == {"n": 1}


async def test_ping_pong_and_subscriptions(server: RunningServer) -> None:
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        await client.send({"type": "ping", "payload": {"t": 12.5, "tag": "rtt"}})
        pong = await client.receive_type("pong")
        assert pong["payload"] == {"t": 12.5, "tag": "rtt"}
        await client.send({"type": "unsubscribe", "payload": {"channels": ["energy"]}})
        ack = await client.receive_type("subscriptions")
        assert "energy" not in ack["payload"]["channels"]
        # No energy frames for a while (heartbeats still arrive).
        with trio.move_on_after(1.5):
            while True:
                message = await client.receive()
                assert message["channel"] != "energy"
        await client.send({"type": "subscribe", "payload": {"channels": ["energy"]}})
        await client.receive_type("energy_update")


async def test_oversized_message_closes_with_1009(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, test_settings(max_message_bytes=1024))
    async with running.connect() as client:
        await client.receive_type("startup_complete")
        await client.send({"type": "ping", "payload": {"pad": "x" * 2000}})
        error = await client.receive_type("error_event")
        assert error["payload"]["code"] == "MESSAGE_TOO_LARGE"
        with pytest.raises(ConnectionClosed):
            while True:
                await client.receive()
        assert client.ws.closed is not None and client.ws.closed.code == 1009
    running.stop.set()


async def test_heartbeat_timeout_closes_the_connection(nursery: trio.Nursery) -> None:
    running = await start_server(
        nursery, test_settings(heartbeat_interval=0.2, heartbeat_timeout=0.7)
    )
    async with running.connect() as client:
        await client.receive_type("startup_complete")
        beat = await client.receive_type("heartbeat")
        await client.send(
            {"type": "heartbeat_response", "payload": {"sequence": beat["payload"]["sequence"]}}
        )
        started = trio.current_time()
        error = await client.receive_type("error_event", seconds=3)
        assert error["payload"]["code"] == "HEARTBEAT_TIMEOUT"
        assert trio.current_time() - started >= 0.5
        with pytest.raises(ConnectionClosed):
            while True:
                await client.receive()
        assert client.ws.closed is not None and client.ws.closed.code == 4408
    running.stop.set()


async def test_answering_heartbeats_keeps_the_connection(nursery: trio.Nursery) -> None:
    running = await start_server(
        nursery, test_settings(heartbeat_interval=0.2, heartbeat_timeout=0.7)
    )
    async with running.connect() as client:
        await client.receive_type("startup_complete")
        with trio.move_on_after(2.0):
            while True:
                beat = await client.receive_type("heartbeat")
                await client.send(
                    {
                        "type": "heartbeat_response",
                        "payload": {"sequence": beat["payload"]["sequence"]},
                    }
                )
        async with running.http() as http:
            status = (await http.get("/status")).json()
        (entry,) = status["clients"]
        assert entry["heartbeatRoundTrip"]["samples"] >= 5
        assert entry["heartbeatRoundTrip"]["medianMs"] > 0
    running.stop.set()


async def test_shutdown_sends_1001(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, test_settings())
    async with running.connect() as client:
        await client.receive_type("energy_update")
        running.stop.set()
        with trio.fail_after(5), pytest.raises(ConnectionClosed):
            while True:
                await client.receive()
        assert client.ws.closed is not None and client.ws.closed.code == 1001


async def test_cancelling_an_embedded_server_sends_1001() -> None:
    async with trio.open_nursery() as outer:
        inner_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[RunningServer]) -> None:
            with inner_scope:
                async with trio.open_nursery() as nursery:
                    task_status.started(await start_server(nursery, test_settings()))

        running = await outer.start(run_server)
        async with running.connect() as client:
            await client.receive_type("energy_update")
            inner_scope.cancel()
            with trio.fail_after(5), pytest.raises(ConnectionClosed):
                while True:
                    await client.receive()
            assert client.ws.closed is not None and client.ws.closed.code == 1001


async def test_http_endpoints_and_bad_prompt_bodies(server: RunningServer) -> None:
    async with server.http() as http:
        health = await http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        status = (await http.get("/status")).json()
        for key in ("connections", "frameRate", "framesReplaced", "overruns", "clients"):
            assert key in status
        cases: list[tuple[Any, int, str | None]] = [
            (b"not json at all", 400, None),
            (b"[1, 2]", 400, None),
            (json.dumps({}).encode(), 422, "prompt"),
            (json.dumps({"prompt": ""}).encode(), 422, "prompt"),
            (json.dumps({"prompt": 5}).encode(), 422, "prompt"),
            (json.dumps({"prompt": "hi", "models": "demo"}).encode(), 422, "models"),
            (json.dumps({"prompt": "hi", "models": ["gpt-9"]}).encode(), 422, "models"),
            (json.dumps({"prompt": "hi", "temperature": 2}).encode(), 422, "temperature"),
        ]
        for body, code, field in cases:
            response = await http.post(
                "/prompt", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == code, body
            error = response.json()
            assert error["error"]
            assert error.get("field") == field
        ok = await http.post("/prompt", json={"prompt": "hello", "models": ["demo"]})
        assert ok.status_code == 202


async def test_a_client_that_never_reads_does_not_slow_others(server: RunningServer) -> None:
    """The stalled client's socket buffers fill; its slot replaces frames; the other is fine."""
    stalled_stream = await stalled_client(server.port)
    prompt = "keep talking while one client sleeps"
    expected = DemoSource(seed=server.settings.demo_seed).text_for(prompt)
    async with server.connect() as client, server.http() as http:
        await client.receive_type("startup_complete")
        assert (await http.post("/prompt", json={"prompt": prompt})).status_code == 202
        tokens: list[str] = []
        numbers: list[int] = []
        with trio.fail_after(30):
            while True:
                message = await client.receive()
                if message["type"] == "energy_update":
                    numbers.append(message["frameNumber"])
                elif message["type"] == "token_stream":
                    tokens.extend(message["payload"]["tokens"])
                    if message["payload"]["isComplete"]:
                        break
        status = (await http.get("/status")).json()
    await stalled_stream.aclose()
    assert "".join(tokens) == expected
    # Relative to the frames the clock made meanwhile (a loaded machine slows both alike):
    # the reader misses almost none of them beside the stalled client.
    made = numbers[-1] - numbers[0] + 1
    assert len(numbers) >= 0.9 * made, f"{len(numbers)} of {made} frames beside a stalled client"
    assert status["connections"] == 2
    assert 45 <= status["frameRate"] <= 65
    stalled = max(status["clients"], key=lambda c: c["framesReplaced"])
    assert stalled["framesReplaced"] > 0, status
    assert stalled["queued"] <= 2, "the stalled client's queue holds merged batches only"


async def test_logs_hold_no_prompt_or_token_text(nursery: trio.Nursery) -> None:
    with records_logged(logging.DEBUG) as logged:
        running = await start_server(nursery, test_settings(log_level="DEBUG"))
        prompt = "secret-prompt-4c1d tell me about my private files"
        source = DemoSource(seed=running.settings.demo_seed)
        tokens = source.tokens_for(prompt)
        async with running.connect() as client, running.http() as http:
            await client.receive_type("startup_complete")
            assert (await http.post("/prompt", json={"prompt": prompt})).status_code == 202
            await client.receive_until(
                lambda m: m["type"] == "token_stream" and m["payload"]["isComplete"], seconds=30
            )
        running.stop.set()
    records = [r.getMessage() for r in logged]
    errors = [
        f"{r.name}: {r.getMessage()} {r.exc_info}" for r in logged if r.levelno >= logging.ERROR
    ]
    log_text = "\n".join(records)
    assert errors == [], "a normal session logs no errors"
    assert "connection c-" in log_text and "frame" in log_text, "DEBUG logging was on"
    assert "secret-prompt-4c1d" not in log_text
    for i in range(len(tokens) - 2):
        assert "".join(tokens[i : i + 3]) not in log_text, "token text in the logs"
