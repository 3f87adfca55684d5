"""End to end with real local-runtime protocols: the server on Hypercorn, fake Ollama and
OpenAI-compatible servers on loopback (tests/fake_runtimes.py), real WebSocket clients."""

from __future__ import annotations

import math
import socket
from collections import defaultdict
from typing import Any

import pytest
import trio

from tests.support.fake_runtimes import FakeOllama, FakeOpenAI, Script
from tests.support.server import CheckedClient, RunningServer, start_server, test_settings

WORDS = " light moves through the model as it writes each token in turn".split(" ")


def words(n: int) -> list[str]:
    return [(" " if i else "") + WORDS[i % len(WORDS)] for i in range(n)]


def steady(n: int, gap: float, with_top_k: bool = True) -> Script:
    """``n`` tokens, ``gap`` seconds apart, each with a top-3 distribution."""
    tokens = words(n)
    top_k = (
        [[(t, math.log(0.7)), (" the", math.log(0.2)), (" a", math.log(0.1))] for t in tokens]
        if with_top_k
        else None
    )
    return Script(tokens, delays=[gap] * n, top_k=top_k)


async def collect_sessions(
    client: CheckedClient, session_ids: set[str], seconds: float = 30
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Read until every session completed: each session's text, and every other message."""
    texts: dict[str, list[str]] = defaultdict(list)
    done: set[str] = set()
    others: list[dict[str, Any]] = []
    with trio.fail_after(seconds):
        while done != session_ids:
            message = await client.receive()
            if message["type"] == "token_stream":
                payload = message["payload"]
                assert payload["sessionId"] not in done, "tokens after isComplete"
                texts[payload["sessionId"]].extend(payload["tokens"])
                if payload["isComplete"]:
                    done.add(payload["sessionId"])
            else:
                others.append(message)
    return {sid: "".join(t) for sid, t in texts.items()}, others


async def prompt(server: RunningServer, models: list[str], text: str = "hi") -> dict[str, str]:
    """POST /prompt; returns sessionId → modelId."""
    async with server.http() as http:
        response = await http.post("/prompt", json={"prompt": text, "models": models})
    assert response.status_code == 202, response.text
    return {s["sessionId"]: s["modelId"] for s in response.json()["sessions"]}


async def test_ollama_model_streams_exactly_what_the_runtime_sent(nursery: trio.Nursery) -> None:
    script = steady(30, 0.01)
    ollama = FakeOllama({"qwen3:0.6b": script})
    await nursery.start(ollama.serve)
    server = await start_server(
        nursery, test_settings(models=("ollama:qwen3:0.6b",), ollama_url=ollama.base_url)
    )
    async with server.connect() as client:
        hello = await client.receive_type("startup_complete")
        assert hello["payload"]["model"] == "qwen3-0_6b"
        assert "council" not in hello["payload"]["capabilities"]
        sessions = await prompt(server, ["qwen3:0.6b"], "private words")
        texts, others = await collect_sessions(client, set(sessions))
    assert list(texts.values()) == [script.text]
    assert set(sessions.values()) == {"qwen3-0_6b"}
    generate = [r for r in ollama.requests if r.path == "/api/generate"]
    assert generate[-1].body["prompt"] == "private words"  # the runtime gets it, the socket not
    assert not any("private words" in raw for raw in client.raw)
    updates = [m for m in others if m["type"] == "energy_update"]
    assert any(m["payload"]["modelId"] == "qwen3-0_6b" for m in updates)
    async with server.http() as http:
        models = (await http.get("/models")).json()["models"]
        health = (await http.get("/health")).json()
    assert models[0]["modelId"] == "qwen3-0_6b" and models[0]["name"] == "qwen3:0.6b"
    assert models[0]["status"] == "ready" and models[0]["source"] == "ollama"
    assert health["status"] == "ok"
    server.stop.set()


async def test_three_model_council(nursery: trio.Nursery) -> None:
    ollama = FakeOllama({"qwen3:0.6b": steady(60, 0.05), "gemma3:1b": steady(60, 0.05)})
    openai = FakeOpenAI({"tiny": steady(30, 0.1)})
    await nursery.start(ollama.serve)
    await nursery.start(openai.serve)
    server = await start_server(
        nursery,
        test_settings(
            models=("ollama:qwen3:0.6b", "ollama:gemma3:1b", "openai:tiny"),
            ollama_url=ollama.base_url,
            openai_url=openai.base_url,
        ),
    )
    async with server.connect() as client:
        hello = await client.receive_type("startup_complete")
        assert "council" in hello["payload"]["capabilities"]
        sessions = await prompt(server, ["qwen3-0_6b", "gemma3:1b", "openai:tiny"])
        assert sorted(sessions.values()) == ["gemma3-1b", "qwen3-0_6b", "tiny"]
        texts, others = await collect_sessions(client, set(sessions))
    by_model = {sessions[sid]: text for sid, text in texts.items()}
    assert by_model == {
        "qwen3-0_6b": "".join(words(60)),
        "gemma3-1b": "".join(words(60)),
        "tiny": "".join(words(30)),
    }
    energy_models = {m["payload"]["modelId"] for m in others if m["type"] == "energy_update"}
    assert {"qwen3-0_6b", "gemma3-1b", "tiny", "council"} <= energy_models
    fields = [m for m in others if m["type"] == "energy_field"]
    assert any(f["payload"]["fieldType"] == "interference" for f in fields)
    interference = [m for m in others if m["type"] == "interference_event"]
    resonance = [m for m in others if m["type"] == "resonance_event"]
    assert interference, "three models streaming together must interfere"
    assert all(m["channel"] == "council" and "frameNumber" in m for m in interference)
    assert all(len(m["payload"]["models"]) >= 2 for m in interference)
    # The two 20 tokens/s models lock into a fundamental; the 10 tokens/s one is a harmonic.
    assert resonance, "models with locked cadences must resonate"
    kinds = {m["payload"]["resonanceType"] for m in resonance}
    assert "fundamental" in kinds
    rewards = [m["payload"]["title"] for m in others if m["type"] == "reward_event"]
    assert "Council Convened" in rewards and "First Light" in rewards
    assert len(rewards) == len(set(rewards)), "each reward once"
    server.stop.set()


async def test_a_council_of_demo_models_needs_no_runtime(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, test_settings(models=("demo", "demo:bravo")))
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        sessions = await prompt(server, ["demo", "demo-bravo"])
        texts, _ = await collect_sessions(client, set(sessions))
    assert len(set(texts.values())) == 2, "each demo model answers differently"
    server.stop.set()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FAILURES = [
    ("down", None, "MODEL_UNAVAILABLE"),
    ("http_500", Script(words(5), fail_status=500), "MODEL_HTTP_ERROR"),
    ("malformed", Script(words(10), delays=[0.01] * 10, malformed_after=3), "MODEL_PROTOCOL_ERROR"),
    ("stall", Script(words(10), delays=[0.01] * 10, stall_after=3), "MODEL_TIMEOUT"),
    ("drop", Script(words(10), delays=[0.01] * 10, drop_after=3), "MODEL_STREAM_DROPPED"),
    ("missing", "missing", "MODEL_NOT_FOUND"),
]


@pytest.mark.parametrize(("case", "script", "code"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_a_failing_runtime_ends_only_its_own_session(
    nursery: trio.Nursery, case: str, script: Script | str | None, code: str
) -> None:
    good = steady(40, 0.02)
    healthy = FakeOpenAI({"good": good})
    await nursery.start(healthy.serve)
    if script is None:
        ollama_url = f"http://127.0.0.1:{closed_port()}"
        failing = None
    else:
        failing = FakeOllama({} if script == "missing" else {"bad": script})  # type: ignore[dict-item]
        ollama_url = await nursery.start(failing.serve)
    server = await start_server(
        nursery,
        test_settings(
            models=("openai:good", "ollama:bad"),
            ollama_url=ollama_url,
            openai_url=healthy.base_url,
            stall_timeout=0.5,
            first_token_timeout=2.0,
        ),
    )
    if case in ("down", "missing"):
        # Found unusable by its first check: a prompt for it is refused up front (503 naming the
        # runtime), until a re-check finds it back; the others still serve.
        async with server.http() as http:
            with trio.fail_after(20):
                while True:
                    if (await http.get("/health")).json()["models"]["bad"] == "unavailable":
                        break
                    await trio.sleep(0.05)
            refused = await http.post("/prompt", json={"prompt": "x", "models": ["good", "bad"]})
        assert refused.status_code == 503 and ollama_url in refused.json()["error"]
        async with server.connect() as client:
            await client.receive_type("startup_complete")
            sessions = await prompt(server, ["good"])
            texts, _ = await collect_sessions(client, set(sessions))
        assert list(texts.values()) == [good.text]
        server.stop.set()
        return
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        sessions = await prompt(server, ["good", "bad"], "what is secret-7731?")
        texts, others = await collect_sessions(client, set(sessions))
    by_model = {sessions[sid]: text for sid, text in texts.items()}
    assert by_model["good"] == good.text, "the healthy model finishes"
    errors = [m["payload"] for m in others if m["type"] == "error_event"]
    mine = [e for e in errors if e["code"] == code]
    assert mine, f"expected {code}, got {[e['code'] for e in errors]}"
    error = mine[0]
    assert error["component"] == "model" and error["recoverable"] is True
    assert "bad" in error["message"] and len(error["message"]) > 30
    assert "secret-7731" not in str(errors), "the prompt never appears, even if echoed"
    if case == "stall":
        assert failing is not None
        generate = [r for r in failing.requests if r.path == "/api/generate"][-1]
        with trio.fail_after(2):
            await generate.client_closed.wait()  # the stalled stream was hung up on
    server.stop.set()


async def test_cancel_closes_the_runtime_stream(nursery: trio.Nursery) -> None:
    ollama = FakeOllama({"slow": steady(200, 0.05)})
    await nursery.start(ollama.serve)
    server = await start_server(
        nursery, test_settings(models=("ollama:slow",), ollama_url=ollama.base_url)
    )
    async with server.connect() as client, server.http() as http:
        await client.receive_type("startup_complete")
        (session_id,) = await prompt(server, ["slow"])
        await client.receive_type("token_stream")
        response = await http.delete(f"/prompt/{session_id}")
        assert response.status_code == 202
        texts, _ = await collect_sessions(client, {session_id}, seconds=5)
        generate = [r for r in ollama.requests if r.path == "/api/generate"][-1]
        with trio.fail_after(2):
            await generate.client_closed.wait()
        assert not generate.completed
        assert len(texts[session_id]) < len(steady(200, 0).text)
        again = await http.delete(f"/prompt/{session_id}")
        assert again.status_code == 409
        unknown = await http.delete("/prompt/s-nope")
        assert unknown.status_code == 404 and unknown.json()["field"] == "sessionId"
    server.stop.set()


async def test_model_lifecycle_events_for_subscribed_clients(nursery: trio.Nursery) -> None:
    port = closed_port()
    server = await start_server(
        nursery,
        test_settings(
            models=("demo", "ollama:late"),
            ollama_url=f"http://127.0.0.1:{port}",
            model_check_interval=0.2,
        ),
    )
    async with server.connect() as client, server.http() as http:
        await client.receive_type("startup_complete")
        with trio.fail_after(5):
            while True:  # polling a real HTTP endpoint: there is no event to wait on
                if (await http.get("/health")).json()["status"] == "degraded":
                    break
                await trio.sleep(0.05)
        await client.send({"type": "subscribe", "payload": {"channels": ["models"]}})
        ack = await client.receive_type("subscriptions")
        assert "models" in ack["payload"]["channels"]
        current = {}
        while len(current) < 2:
            status = await client.receive_type("model_status")
            current[status["payload"]["modelId"]] = status["payload"]["status"]
        assert current == {"demo": "ready", "late": "unavailable"}
        # The runtime comes up on that port: the model becomes ready, and clients hear of it.
        ollama = FakeOllama({"late": steady(3, 0.01)})
        await nursery.start(ollama.serve, port)
        ready = await client.receive_until(
            lambda m: m["type"] == "model_status" and m["payload"]["status"] == "ready"
        )
        assert ready["payload"]["modelId"] == "late"
        assert (await http.get("/health")).json()["status"] == "ok"
    server.stop.set()


async def test_model_status_is_not_sent_to_clients_that_did_not_ask(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(
        nursery,
        test_settings(
            models=("demo", "ollama:gone"),
            ollama_url=f"http://127.0.0.1:{closed_port()}",
            model_check_interval=0.1,
        ),
    )
    async with server.connect() as client:
        with trio.move_on_after(1.0):
            while True:
                message = await client.receive()
                assert message["type"] != "model_status"
    server.stop.set()


async def test_rewards_reach_every_connected_client_exactly_once(nursery: trio.Nursery) -> None:
    ollama = FakeOllama({"fast": steady(120, 0.002, with_top_k=False)})
    await nursery.start(ollama.serve)
    server = await start_server(
        nursery, test_settings(models=("ollama:fast",), ollama_url=ollama.base_url)
    )
    async with server.connect() as a, server.connect() as b:
        await a.receive_type("startup_complete")
        await b.receive_type("startup_complete")
        sessions = await prompt(server, ["fast"])
        results = []
        for client in (a, b):
            _, others = await collect_sessions(client, set(sessions))
            # Rewards of the completion come in the same frame as the last batch or just after.
            with trio.move_on_after(0.5):
                while True:
                    others.append(await client.receive())
            results.append([m["payload"]["title"] for m in others if m["type"] == "reward_event"])
    for titles in results:
        assert sorted(titles) == sorted(["100 tokens", "Level 2", "First Light"]), titles
    server.stop.set()
