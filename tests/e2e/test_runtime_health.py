"""A runtime that dies is noticed at once (B2), every generation is bounded (B5), and a failed
session says why before it says it is complete (B6): end to end, against the stand-in
runtimes of tests/fake_runtimes.py. The same behaviours against a real llama.cpp server are
in tests/real_model/."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio

from tests.support.fake_runtimes import FakeOllama, FakeOpenAI, Request, Script, _Conn
from tests.support.server import CheckedClient, RunningServer, start_server, test_settings
from wirthforge_trio.cli import _parser
from wirthforge_trio.config import Settings, SettingsError
from wirthforge_trio.engine import runtime

WORDS = [" light", " moves", " through", " the", " model"]


def words(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


async def wait_until(
    check: Callable[[], Awaitable[bool]], seconds: float = 20.0, what: str = "condition"
) -> None:
    """Poll state that offers no event of its own (HTTP answers), within a generous deadline
    (a shared, noisy machine)."""
    with trio.move_on_after(seconds):
        while True:
            if await check():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"{what} did not hold within {seconds} s")


async def health(server: RunningServer) -> dict[str, Any]:
    async with server.http() as http:
        return (await http.get("/health")).json()  # type: ignore[no-any-return]


async def post_prompt(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    async with server.http() as http:
        return await http.post("/prompt", json=body)


async def read_session(client: CheckedClient, session_id: str) -> list[dict[str, Any]]:
    """Every message up to and including the session's last token_stream."""
    seen: list[dict[str, Any]] = []
    with trio.fail_after(30):
        while True:
            message = await client.receive()
            seen.append(message)
            payload = message.get("payload", {})
            if (
                message["type"] == "token_stream"
                and payload["sessionId"] == session_id
                and payload["isComplete"]
            ):
                return seen


def requests_to(fake: FakeOpenAI | FakeOllama, path: str) -> list[Request]:
    return [r for r in fake.requests if r.path == path]


class FreezableOpenAI(FakeOpenAI):
    """A stand-in that can freeze like a SIGSTOPped process: requests get no answer at all."""

    frozen = False

    async def route(self, request: Request, conn: _Conn) -> None:
        if self.frozen:
            await trio.sleep_forever()  # until the client leaves
        await super().route(request, conn)


# -- B6: the error comes before the last batch ------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (Script(words(20), delays=[0.01] * 20, drop_after=4), "MODEL_STREAM_DROPPED"),
        (Script(words(20), delays=[0.01] * 20, stall_after=4), "MODEL_TIMEOUT"),
        (Script(words(20), fail_status=500), "MODEL_HTTP_ERROR"),
    ],
    ids=["dropped", "stalled", "http-error"],
)
async def test_a_failed_sessions_error_arrives_before_its_final_token_stream(
    nursery: trio.Nursery, script: Script, code: str
) -> None:
    fake = FakeOpenAI({"m": script})
    await nursery.start(fake.serve)
    server = await start_server(
        nursery,
        test_settings(models=("openai:m",), openai_url=fake.base_url, stall_timeout=0.5),
    )
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        response = await post_prompt(server, {"prompt": "hi"})
        assert response.status_code == 202, response.text
        (session,) = response.json()["sessions"]
        seen = await read_session(client, session["sessionId"])
    errors = [
        i
        for i, m in enumerate(seen)
        if m["type"] == "error_event" and m["payload"].get("details", {}).get("sessionId")
    ]
    assert errors, f"no error_event before the session completed ({code})"
    assert seen[errors[0]]["payload"]["code"] == code
    assert errors[0] < len(seen) - 1  # strictly before the final token_stream
    server.stop.set()


# -- B2: a dead runtime turns unavailable at once ---------------------------------------------


async def test_a_runtime_killed_mid_answer_turns_unavailable_at_once(
    nursery: trio.Nursery,
) -> None:
    """The periodic check is an hour away: only the check the drop triggers can notice."""
    fake = FakeOpenAI({"m": Script(words(50), delays=[0.02] * 50, stall_after=5)})
    runtime_scope = trio.CancelScope()

    async def run_fake(task_status: trio.TaskStatus[str]) -> None:
        with runtime_scope:
            await fake.serve(task_status=task_status)

    await nursery.start(run_fake)
    server = await start_server(
        nursery,
        test_settings(models=("openai:m",), openai_url=fake.base_url, model_check_interval=3600.0),
    )
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        await client.send({"type": "subscribe", "payload": {"channels": ["models"]}})
        await client.receive_until(
            lambda m: m["type"] == "model_status" and m["payload"]["status"] == "ready", 20
        )
        response = await post_prompt(server, {"prompt": "hi"})
        assert response.status_code == 202
        (session,) = response.json()["sessions"]
        await client.receive_type("token_stream", 20)
        assert (await health(server))["status"] == "ok"
        runtime_scope.cancel()  # kill the runtime: its listener and the open stream go
        await wait_until(lambda: _is_true(fake_gone(fake)), what="runtime gone")
        seen = await read_session(client, session["sessionId"])
        assert any(
            m["type"] == "error_event" and m["payload"]["code"] == "MODEL_STREAM_DROPPED"
            for m in seen
        )

        def down(m: dict[str, Any]) -> bool:
            return m["type"] == "model_status" and m["payload"]["status"] == "unavailable"

        # The check may answer before the session's last batch goes out with the next frame.
        status = next((m for m in seen if down(m)), None) or await client.receive_until(down, 20)
        assert fake.base_url.rsplit("/v1", 1)[0] in status["payload"]["message"]
    assert (await health(server))["status"] == "degraded"
    refused = await post_prompt(server, {"prompt": "again"})
    assert refused.status_code == 503, refused.text
    assert fake.base_url in refused.json()["error"]
    assert refused.json()["field"] == "models"
    assert int(refused.headers["Retry-After"]) >= 1
    server.stop.set()


async def fake_gone(fake: FakeOpenAI) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            await http.get(fake.base_url + "/models")
    except httpx.HTTPError:
        return True
    return False


async def _is_true(value: Awaitable[bool]) -> bool:
    return await value


async def test_a_refused_runtime_is_refused_with_503_until_it_is_back(
    nursery: trio.Nursery,
) -> None:
    script = Script(words(6), delays=[0.01] * 6)
    fake = FakeOpenAI({"m": script})
    runtime_scope = trio.CancelScope()

    async def run_fake(task_status: trio.TaskStatus[str]) -> None:
        with runtime_scope:
            await fake.serve(task_status=task_status)

    base_url = await nursery.start(run_fake)
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    server = await start_server(
        nursery,
        test_settings(models=("openai:m",), openai_url=base_url, model_check_interval=0.3),
    )
    await wait_until(lambda: _ok(server), what="model ready")
    runtime_scope.cancel()
    await wait_until(lambda: _is_true(fake_gone(fake)), what="runtime gone")
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        response = await post_prompt(server, {"prompt": "hi"})
        assert response.status_code == 202  # still ready: nothing has failed yet
        (session,) = response.json()["sessions"]
        seen = await read_session(client, session["sessionId"])
        assert any(m["type"] == "error_event" for m in seen)
    refused = await post_prompt(server, {"prompt": "hi"})
    assert refused.status_code == 503 and base_url in refused.json()["error"]
    back = FakeOpenAI({"m": script})
    await nursery.start(back.serve, port)
    await wait_until(lambda: _ok(server), what="model back")
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        response = await post_prompt(server, {"prompt": "hi"})
        assert response.status_code == 202, response.text
        (session,) = response.json()["sessions"]
        seen = await read_session(client, session["sessionId"])
    text = "".join(t for m in seen if m["type"] == "token_stream" for t in m["payload"]["tokens"])
    assert text == script.text
    server.stop.set()


async def _ok(server: RunningServer) -> bool:
    return (await health(server))["status"] == "ok"


async def test_a_frozen_runtime_times_out_and_its_check_makes_it_unavailable(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "CHECK_TIMEOUT", 1.0)
    fake = FreezableOpenAI({"m": Script(words(20), delays=[0.01] * 20, stall_after=3)})
    await nursery.start(fake.serve)
    server = await start_server(
        nursery,
        test_settings(
            models=("openai:m",),
            openai_url=fake.base_url,
            first_token_timeout=1.0,
            model_check_interval=3600.0,
        ),
    )
    await wait_until(lambda: _ok(server), what="model ready")
    checks_before = len(requests_to(fake, "/v1/models"))
    fake.frozen = True  # from now on: the open stream stalls, new requests get no answer
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        response = await post_prompt(server, {"prompt": "hi"})
        assert response.status_code == 202
        (session,) = response.json()["sessions"]
        seen = await read_session(client, session["sessionId"])
    codes = [m["payload"]["code"] for m in seen if m["type"] == "error_event"]
    assert codes == ["MODEL_TIMEOUT"]
    await wait_until(
        lambda: _is_true(_status_is(server, "degraded")), what="degraded after the check"
    )
    assert len(requests_to(fake, "/v1/models")) > checks_before, "a check was made"
    refused = await post_prompt(server, {"prompt": "hi"})
    assert refused.status_code == 503 and fake.base_url in refused.json()["error"]
    server.stop.set()


async def _status_is(server: RunningServer, status: str) -> bool:
    return (await health(server))["status"] == status


async def test_a_dropped_stream_from_a_live_runtime_is_checked_and_stays_ready(
    nursery: trio.Nursery,
) -> None:
    """The check runs at once, and a runtime that answers it is not marked down."""
    fake = FakeOpenAI({"m": Script(words(20), delays=[0.01] * 20, drop_after=3)})
    await nursery.start(fake.serve)
    server = await start_server(
        nursery,
        test_settings(models=("openai:m",), openai_url=fake.base_url, model_check_interval=3600),
    )
    await wait_until(lambda: _ok(server), what="model ready")
    checks_before = len(requests_to(fake, "/v1/models"))
    response = await post_prompt(server, {"prompt": "hi"})
    assert response.status_code == 202
    await wait_until(
        lambda: _is_true(_more_checks(fake, checks_before)), what="a check after the drop"
    )
    await wait_until(lambda: _ok(server), what="still ready")
    assert (await post_prompt(server, {"prompt": "hi"})).status_code == 202
    server.stop.set()


async def _more_checks(fake: FakeOpenAI, before: int) -> bool:
    return len(requests_to(fake, "/v1/models")) > before


# -- B5: a bound on every generation ----------------------------------------------------------


def test_max_tokens_comes_from_the_flag_or_the_variable_and_is_checked() -> None:
    assert Settings().max_tokens == 512
    assert Settings.from_env({"WIRTHFORGE_MAX_TOKENS": "64"}).max_tokens == 64
    with pytest.raises(SettingsError, match="WIRTHFORGE_MAX_TOKENS"):
        Settings.from_env({"WIRTHFORGE_MAX_TOKENS": "0"})
    with pytest.raises(SettingsError, match="WIRTHFORGE_MAX_TOKENS"):
        Settings.from_env({"WIRTHFORGE_MAX_TOKENS": "many"})
    args = _parser().parse_args(["serve", "--max-tokens", "7"])
    assert args.max_tokens == 7


async def test_the_bound_goes_to_the_runtime_and_the_stream_is_cut_there(
    nursery: trio.Nursery,
) -> None:
    """The stand-in ignores ``max_tokens`` (as a runtime might): the server stops reading."""
    script = Script(words(60), delays=[0.01] * 60)
    fake = FakeOpenAI({"m": script})
    await nursery.start(fake.serve)
    server = await start_server(
        nursery, test_settings(models=("openai:m",), openai_url=fake.base_url, max_tokens=40)
    )
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        for asked, expected in ((5, 5), (None, 40)):
            body: dict[str, Any] = {"prompt": "hi"}
            if asked is not None:
                body["maxTokens"] = asked
            response = await post_prompt(server, body)
            assert response.status_code == 202, response.text
            (session,) = response.json()["sessions"]
            seen = await read_session(client, session["sessionId"])
            tokens = [
                t
                for m in seen
                if m["type"] == "token_stream" and m["payload"]["sessionId"] == session["sessionId"]
                for t in m["payload"]["tokens"]
            ]
            assert tokens == list(script.tokens[:expected])
            assert not [m for m in seen if m["type"] == "error_event"]
            request = requests_to(fake, "/v1/chat/completions")[-1]
            assert request.body["max_tokens"] == expected
            with trio.fail_after(5):
                await request.client_closed.wait()  # the runtime saw the stream go
            assert not request.completed
    server.stop.set()


async def test_ollama_gets_the_bound_as_num_predict(nursery: trio.Nursery) -> None:
    fake = FakeOllama({"q": Script(words(3))})
    await nursery.start(fake.serve)
    server = await start_server(
        nursery, test_settings(models=("ollama:q",), ollama_url=fake.base_url, max_tokens=99)
    )
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        response = await post_prompt(server, {"prompt": "hi", "maxTokens": 9})
        (session,) = response.json()["sessions"]
        await read_session(client, session["sessionId"])
    (request,) = requests_to(fake, "/api/generate")
    assert request.body["options"] == {"num_predict": 9}
    server.stop.set()


async def test_the_demo_model_honours_the_bound(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, test_settings(demo_speed=20.0))
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        response = await post_prompt(server, {"prompt": "hi", "maxTokens": 3})
        (session,) = response.json()["sessions"]
        seen = await read_session(client, session["sessionId"])
    tokens = [t for m in seen if m["type"] == "token_stream" for t in m["payload"]["tokens"]]
    assert len(tokens) == 3
    server.stop.set()


@pytest.mark.parametrize("bad", [0, -1, 513, 2.5, "5", True, None])
async def test_a_bad_max_tokens_is_refused_naming_the_field(
    server: RunningServer, bad: Any
) -> None:
    body = {"prompt": "hi", "maxTokens": bad}
    if bad is None:
        body = {"prompt": "hi", "maxTokens": [1]}
    response = await post_prompt(server, body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "maxTokens"
    assert "512" in response.json()["error"]
