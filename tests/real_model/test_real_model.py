"""End to end against a real model: llama.cpp's server with SmolLM2-135M-Instruct, greedy
(``--temp 0 --seed 42``), behind the wirthforge server's OpenAI-compatible source, with a
real WebSocket client. Run with ``nox -s real-model``."""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.real_runtime import Llama, needs_runtime, start_llama, start_wirthforge
from tests.support.server import CheckedClient, RunningServer, test_settings
from tests.support.waits import eventually
from wirthforge_trio.engine import energy, runtime
from wirthforge_trio.sources.openai import OpenAISource

pytestmark = [pytest.mark.real_model, needs_runtime]

PROMPT = "Name three colours of a rainbow."
LONG_PROMPT = "Write a long story about a lighthouse keeper and the sea, in many chapters."


async def post(server: RunningServer, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    async with server.http() as http:
        response = await http.post("/prompt", json=body)
    assert response.status_code == status, response.text
    return response.json()  # type: ignore[no-any-return]


async def read_sessions(
    client: CheckedClient, session_ids: set[str], seconds: float = 120
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Until every session completed: each one's text, and every message seen."""
    texts: dict[str, list[str]] = {sid: [] for sid in session_ids}
    done: set[str] = set()
    seen: list[dict[str, Any]] = []
    with trio.fail_after(seconds):
        while done != session_ids:
            message = await client.receive()
            seen.append(message)
            if message["type"] == "token_stream" and message["payload"]["sessionId"] in texts:
                texts[message["payload"]["sessionId"]].extend(message["payload"]["tokens"])
                if message["payload"]["isComplete"]:
                    done.add(message["payload"]["sessionId"])
    return {sid: "".join(t) for sid, t in texts.items()}, seen


async def health(server: RunningServer) -> dict[str, Any]:
    async with server.http() as http:
        return (await http.get("/health")).json()  # type: ignore[no-any-return]


def settings_for(llama: Llama, **overrides: Any) -> Any:
    return test_settings(models=(f"openai:{llama.alias}",), openai_url=llama.base_url, **overrides)


async def test_the_text_on_the_socket_is_the_runtimes_own_answer(
    nursery: trio.Nursery, llama: Llama
) -> None:
    server = await start_wirthforge(nursery, settings_for(llama))
    predicted = await llama.metric("tokens_predicted_total")  # counted as each answer ends
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        (session,) = (await post(server, {"prompt": PROMPT, "maxTokens": 48}))["sessions"]
        texts, seen = await read_sessions(client, {session["sessionId"]})

    async def counted() -> bool:
        return await llama.metric("tokens_predicted_total") > predicted

    await eventually(counted, 30.0, what="the runtime's count of the answer")
    assert await llama.metric("tokens_predicted_total") - predicted == 48, "it got the bound"
    own = await llama.answer(PROMPT, 48)
    expected = own["choices"][0]["message"]["content"]
    assert expected.strip(), "the runtime answered something"
    assert texts[session["sessionId"]] == expected
    # The bound reached the runtime: it stopped at 48 tokens, one per token on the socket.
    assert own["choices"][0]["finish_reason"] == "length"
    assert own["usage"]["completion_tokens"] == 48
    tokens = [t for m in seen if m["type"] == "token_stream" for t in m["payload"]["tokens"]]
    assert len(tokens) == 48
    server.stop.set()


async def test_a_council_of_two_real_runtimes(
    nursery: trio.Nursery, runtime_dir: Path, tmp_path: Path
) -> None:
    first = await start_llama(nursery, runtime_dir, tmp_path, alias="smollm2-a")
    second = await start_llama(nursery, runtime_dir, tmp_path, alias="smollm2-b")
    server = await start_wirthforge(
        nursery,
        settings_for(first),
        extra_sources=[OpenAISource(second.alias, second.base_url)],
    )
    before = [await one.metric("tokens_predicted_total") for one in (first, second)]
    async with server.connect() as client:
        hello = await client.receive_type("startup_complete")
        assert "council" in hello["payload"]["capabilities"]
        body = {"prompt": PROMPT, "models": ["smollm2-a", "smollm2-b"], "maxTokens": 32}
        reply = await post(server, body)
        sessions = {s["sessionId"]: s["modelId"] for s in reply["sessions"]}
        assert sorted(sessions.values()) == ["smollm2-a", "smollm2-b"]
        texts, seen = await read_sessions(client, set(sessions))
    expected = (await first.answer(PROMPT, 32))["choices"][0]["message"]["content"]
    assert set(texts.values()) == {expected}, "both runtimes, greedy, give the runtime's answer"
    after = [await one.metric("tokens_predicted_total") for one in (first, second)]
    assert after[0] > before[0] and after[1] > before[1], "each runtime process generated"
    assert not [m for m in seen if m["type"] == "error_event"]
    server.stop.set()


async def test_a_runtime_killed_mid_answer_ends_the_session_and_turns_unavailable(
    nursery: trio.Nursery, llama: Llama
) -> None:
    server = await start_wirthforge(nursery, settings_for(llama, model_check_interval=3600.0))
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        await client.send({"type": "subscribe", "payload": {"channels": ["models"]}})
        (session,) = (await post(server, {"prompt": LONG_PROMPT, "maxTokens": 400}))["sessions"]
        await client.receive_until(lambda m: m["type"] == "token_stream", 60)
        llama.signal(signal.SIGKILL)
        _, seen = await read_sessions(client, {session["sessionId"]})
        errors = [m["payload"] for m in seen if m["type"] == "error_event"]
        assert [e["code"] for e in errors] == ["MODEL_STREAM_DROPPED"]
        assert errors[0]["details"]["sessionId"] == session["sessionId"]
        last = [i for i, m in enumerate(seen) if m["type"] == "token_stream"][-1]
        assert seen.index(next(m for m in seen if m["type"] == "error_event")) < last

        def down(m: dict[str, Any]) -> bool:
            return m["type"] == "model_status" and m["payload"]["status"] == "unavailable"

        if not any(down(m) for m in seen):
            await client.receive_until(down, 30)
    assert (await health(server))["status"] == "degraded"
    refused = await post(server, {"prompt": PROMPT}, status=503)
    assert llama.base_url in refused["error"]
    server.stop.set()


async def test_a_frozen_runtime_times_out_then_comes_back(
    nursery: trio.Nursery, llama: Llama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "CHECK_TIMEOUT", 2.0)
    server = await start_wirthforge(
        nursery, settings_for(llama, stall_timeout=1.0, model_check_interval=0.5)
    )
    try:
        async with server.connect() as client:
            await client.receive_type("startup_complete")
            (session,) = (await post(server, {"prompt": LONG_PROMPT, "maxTokens": 400}))["sessions"]
            await client.receive_until(lambda m: m["type"] == "token_stream", 60)
            llama.signal(signal.SIGSTOP)
            _, seen = await read_sessions(client, {session["sessionId"]})
        codes = [m["payload"]["code"] for m in seen if m["type"] == "error_event"]
        assert codes == ["MODEL_TIMEOUT"]
        await eventually(
            lambda: _status(server, "degraded"), 30.0, what="unavailable after the check"
        )
        refused = await post(server, {"prompt": PROMPT}, status=503)
        assert llama.base_url in refused["error"]
    finally:
        llama.signal(signal.SIGCONT)
    await eventually(lambda: _status(server, "ok"), 60.0, what="ready again")
    await post(server, {"prompt": PROMPT, "maxTokens": 8})
    server.stop.set()


async def _status(server: RunningServer, status: str) -> bool:
    return (await health(server))["status"] == status


async def test_cancelling_makes_the_runtime_stop_generating(
    nursery: trio.Nursery, llama: Llama
) -> None:
    server = await start_wirthforge(nursery, settings_for(llama))
    decoded_before = await llama.metric("n_decode_total")  # one per generation step, live
    async with server.connect() as client, server.http() as http:
        await client.receive_type("startup_complete")
        (session,) = (await post(server, {"prompt": LONG_PROMPT, "maxTokens": 400}))["sessions"]
        await client.receive_until(lambda m: m["type"] == "token_stream", 60)
        assert any(s["is_processing"] for s in await llama.slots())
        response = await http.delete(f"/prompt/{session['sessionId']}")
        assert response.status_code == 202
        texts, _ = await read_sessions(client, {session["sessionId"]})

    async def idle() -> bool:
        return not any(s["is_processing"] for s in await llama.slots())

    await eventually(idle, 30.0, what="the runtime's slots idle")
    decoded = await llama.metric("n_decode_total")
    await trio.sleep(1.0)  # a generation still running would add about 100 steps here
    assert await llama.metric("n_decode_total") == decoded, "the runtime still generates"
    assert decoded - decoded_before < 400, "the runtime stopped before the bound"
    assert len(texts[session["sessionId"]]) > 0
    server.stop.set()


async def test_the_certainty_follows_the_models_top_k_probabilities(
    nursery: trio.Nursery, llama: Llama, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every token's certainty term is the project's formula over the runtime's own top-K."""
    used: list[float] = []
    formula = energy.certainty

    def recording(probs: Any) -> float:
        value = formula(probs)
        used.append(value)
        return value

    monkeypatch.setattr(energy, "certainty", recording)
    server = await start_wirthforge(nursery, settings_for(llama))
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        (session,) = (await post(server, {"prompt": PROMPT, "maxTokens": 32}))["sessions"]
        await read_sessions(client, {session["sessionId"]})
    chunks = await llama.stream(PROMPT, 32, top_logprobs=10)
    expected: list[float] = []
    for chunk in chunks:
        for choice in chunk.get("choices", []):
            for entry in (choice.get("logprobs") or {}).get("content") or []:
                probs = sorted(
                    (math.exp(min(c["logprob"], 0.0)) for c in entry["top_logprobs"]),
                    reverse=True,
                )
                expected.append(formula(probs[:10]))
    assert len(expected) >= 8, "the runtime reported top-K for its tokens"
    assert len(used) == len(expected)
    assert used == pytest.approx(expected, abs=1e-3)
    assert max(expected) - min(expected) > 0.1, "the certainty moves with the text"
    server.stop.set()
