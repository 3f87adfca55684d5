"""The Ollama and OpenAI-compatible sources against fake runtimes: lossless text, top-K,
timing, readiness checks, every failure mapped to its SourceError code, prompt privacy,
and hanging up on the runtime when the consumer stops (cancelled or abandoned)."""

from __future__ import annotations

import gc
import math
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from tests.support.fake_runtimes import FakeOllama, FakeOpenAI, FakeRuntime, Request, Script
from wirthforge_trio.sources.base import (
    MODEL_HTTP_ERROR,
    MODEL_NOT_FOUND,
    MODEL_PROTOCOL_ERROR,
    MODEL_STREAM_DROPPED,
    MODEL_UNAVAILABLE,
    ModelSource,
    SourceError,
    Token,
)
from wirthforge_trio.sources.ollama import OllamaSource, same_ollama_model
from wirthforge_trio.sources.openai import OpenAISource, SseDecoder

PROMPT = "Tell me the secret word XYZZY-PLUGH, please"
MODEL = "qwen3:0.6b"
KINDS = ["ollama", "openai"]

TOKENS = ["Hello", ",", " wor", "ld", "!", " Ça", " va", "?\n", ' "ok"']
TOP = [
    [("Hello", -0.1), ("Hi", -2.5), ("Hey", -3.0)],
    [(",", -0.05), ("!", -3.2)],
    [(" wor", -0.7), (" there", -0.9), (" friend", -2.0)],
    [("ld", -0.01)],
    [("!", -0.2), (".", -1.8)],
    [(" Ça", -1.1), (" Comment", -1.5)],
    [(" va", -0.3)],
    [("?\n", -0.4), ("?", -1.2)],
    [(' "ok"', -0.6), (" ok", -0.9)],
]


def make_source(kind: str, base_url: str, **kwargs: Any) -> OllamaSource | OpenAISource:
    if kind == "ollama":
        return OllamaSource(kwargs.pop("model", MODEL), base_url, **kwargs)
    return OpenAISource(kwargs.pop("model", MODEL), base_url, **kwargs)


@asynccontextmanager
async def running(
    kind: str, script: Script | None = None, **kwargs: Any
) -> AsyncIterator[tuple[FakeRuntime, OllamaSource | OpenAISource]]:
    """A fake runtime of ``kind`` serving MODEL with ``script``, and a source pointed at it."""
    fake: FakeRuntime = (FakeOllama if kind == "ollama" else FakeOpenAI)(
        {MODEL: script or Script(TOKENS)}
    )
    async with fake:
        async with make_source(kind, fake.base_url, **kwargs) as source:
            yield fake, source


async def collect(source: ModelSource, prompt: str = PROMPT) -> list[Token]:
    with trio.fail_after(5):
        return [token async for token in source.generate(prompt)]


def assert_private(error: SourceError) -> None:
    """No part of the prompt's distinctive text reaches a message, hint or str()."""
    for text in (error.message, error.hint, str(error), repr(error.args)):
        assert "XYZZY" not in text
        assert PROMPT not in text


async def failure(awaitable: Callable[[], Any]) -> SourceError:
    with trio.fail_after(5), pytest.raises(SourceError) as info:
        await awaitable()
    assert_private(info.value)
    return info.value


async def generate_failure(source: ModelSource, got: list[Token] | None = None) -> SourceError:
    async def run() -> None:
        async for token in source.generate(PROMPT):
            if got is not None:
                got.append(token)

    return await failure(run)


def closed_port() -> int:
    """A loopback port nothing listens on (connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def hung_up(request: Request) -> None:
    """Wait (briefly) for the client to close this request's connection."""
    with trio.fail_after(2):
        await request.client_closed.wait()


# --- streaming ---------------------------------------------------------------------------


async def test_sources_are_model_sources_that_keep_the_api_key_private() -> None:
    async with OllamaSource(MODEL) as ollama, OpenAISource("m", api_key="sk-secret") as openai:
        sources: list[ModelSource] = [ollama, openai]
        assert [(s.name, s.kind) for s in sources] == [(MODEL, "ollama"), ("m", "openai")]
        assert "sk-secret" not in repr(openai)


@pytest.mark.parametrize("kind", KINDS)
async def test_text_is_streamed_losslessly_token_by_token(kind: str) -> None:
    async with running(kind, Script(TOKENS, top_k=TOP)) as (_, source):
        tokens = await collect(source)
    assert "".join(t.text for t in tokens) == "".join(TOKENS)
    assert [t.text for t in tokens] == TOKENS


@pytest.mark.parametrize("kind", KINDS)
async def test_top_k_is_exp_logprob_most_likely_first(kind: str) -> None:
    unsorted = [[(" b", -2.0), (" a", -0.25), (" c", -3.5)], [("x", -0.5)]]
    async with running(kind, Script([" a", "x"], top_k=unsorted)) as (_, source):
        first, second = await collect(source)
    assert first.top_k_tokens == (" a", " b", " c")
    assert first.top_k == pytest.approx((math.exp(-0.25), math.exp(-2.0), math.exp(-3.5)))
    assert second.top_k == pytest.approx((math.exp(-0.5),))
    assert second.top_k_tokens == ("x",)


@pytest.mark.parametrize("kind", KINDS)
async def test_top_k_is_capped_at_the_requested_count(kind: str) -> None:
    async with running(kind, Script(TOKENS, top_k=TOP), top_k=2) as (fake, source):
        tokens = await collect(source)
    assert fake.requests[-1].body["top_logprobs"] == 2
    assert tokens[0].top_k_tokens == ("Hello", "Hi")
    assert all(t.top_k is not None and len(t.top_k) <= 2 for t in tokens)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_chunk_of_several_tokens_yields_one_token_per_logprob_entry(kind: str) -> None:
    script = Script(TOKENS, top_k=TOP, per_chunk=3)
    async with running(kind, script) as (_, source):
        tokens = await collect(source)
    assert [t.text for t in tokens] == TOKENS
    assert [t.top_k_tokens[0] if t.top_k_tokens else None for t in tokens] == [
        top[0][0] for top in TOP
    ]
    assert len({t.at for t in tokens[:3]}) == 1  # received together


@pytest.mark.parametrize("kind", KINDS)
async def test_logprob_tokens_that_do_not_spell_the_text_fall_back_to_the_piece(
    kind: str,
) -> None:
    # Byte-level tokens: what the logprobs name does not spell the streamed text.
    tokens = ["caf", "é", " au", " lait"]
    script = Script(
        tokens,
        top_k=[[("caf", -0.1)], [("\ufffd", -0.2)], [(" au", -0.3)], [(" lait", -0.4)]],
        logprob_tokens=["caf", "\ufffd", " au", " lait"],
        per_chunk=2,
    )
    async with running(kind, script) as (_, source):
        got = await collect(source)
    assert [t.text for t in got] == ["café", " au", " lait"]
    assert got[0].top_k == pytest.approx((math.exp(-0.1),))
    assert got[0].top_k_tokens == ("caf",)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_runtime_without_logprobs_still_streams_tokens(kind: str) -> None:
    async with running(kind, Script(TOKENS, per_chunk=2)) as (_, source):
        tokens = await collect(source)
    assert "".join(t.text for t in tokens) == "".join(TOKENS)
    assert all(t.top_k is None and t.top_k_tokens is None for t in tokens)


@pytest.mark.parametrize("kind", KINDS)
async def test_token_times_follow_the_runtime_rhythm(kind: str) -> None:
    script = Script(["a", "b", "c", "d"], delays=[0.05, 0.15, 0.0, 0.1])
    async with running(kind, script) as (_, source):
        start = trio.current_time()
        tokens = await collect(source)
    at = [t.at for t in tokens]
    assert start + 0.04 <= at[0] < start + 1.0
    assert 0.13 <= at[1] - at[0] < 0.6
    assert 0.0 <= at[2] - at[1] < 0.08
    assert 0.08 <= at[3] - at[2] < 0.6


async def test_openai_stream_may_end_after_finish_reason_without_done() -> None:
    async with running("openai", Script(TOKENS, openai_done=False)) as (_, source):
        tokens = await collect(source)
    assert "".join(t.text for t in tokens) == "".join(TOKENS)


# --- what is sent --------------------------------------------------------------------------


async def test_ollama_request_carries_prompt_and_logprob_settings() -> None:
    async with running("ollama", top_k=7) as (fake, source):
        await collect(source)
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/api/generate")
    assert request.body == {
        "model": MODEL,
        "prompt": PROMPT,
        "stream": True,
        "logprobs": True,
        "top_logprobs": 7,
    }


async def test_openai_request_carries_prompt_and_logprob_settings() -> None:
    async with running("openai", top_k=5) as (fake, source):
        await collect(source)
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "logprobs": True,
        "top_logprobs": 5,
    }
    assert "authorization" not in request.headers


async def test_openai_sends_the_api_key_only_when_set() -> None:
    async with running("openai", api_key="sk-test") as (fake, source):
        await collect(source)
        await source.check()
    assert [r.headers.get("authorization") for r in fake.requests] == ["Bearer sk-test"] * 2


# --- check, preload, list_models ---------------------------------------------------------


@pytest.mark.parametrize(
    ("served", "asked"),
    [(MODEL, MODEL), ("llama3:latest", "llama3"), ("llama3", "llama3:latest")],
)
async def test_ollama_check_accepts_the_model_with_or_without_latest(
    served: str, asked: str
) -> None:
    async with FakeOllama({served: Script(TOKENS)}) as fake:
        async with OllamaSource(asked, fake.base_url) as source:
            await source.check()
            assert await source.list_models() == [served]
            assert "".join(t.text for t in await collect(source)) == "".join(TOKENS)


async def test_ollama_check_names_the_pull_command_for_a_missing_model() -> None:
    async with running("ollama", model="llama3.2:1b") as (fake, source):
        error = await failure(source.check)
    assert error.code == MODEL_NOT_FOUND
    assert "ollama pull llama3.2:1b" in error.hint
    assert fake.requests[-1].path == "/api/tags"


def test_same_ollama_model() -> None:
    assert same_ollama_model("x", "x:latest")
    assert not same_ollama_model("x:1b", "x")
    assert same_ollama_model("host:5000/x", "host:5000/x:latest")


async def test_openai_check_requires_a_listed_id_and_suggests_it() -> None:
    async with FakeOpenAI({"served-model.gguf": Script(TOKENS)}) as fake:
        async with OpenAISource("served-model.gguf", fake.base_url) as source:
            await source.check()
            assert await source.list_models() == ["served-model.gguf"]
        async with OpenAISource("gpt-x", fake.base_url) as source:
            error = await failure(source.check)
    assert error.code == MODEL_NOT_FOUND
    assert "--model openai:served-model.gguf" in error.hint
    assert fake.requests[-1].path == "/v1/models"


async def test_openai_check_lists_ids_when_several_are_served() -> None:
    async with FakeOpenAI({"a": Script(TOKENS), "b": Script(TOKENS)}) as fake:
        async with OpenAISource("c", fake.base_url) as source:
            error = await failure(source.check)
    assert error.code == MODEL_NOT_FOUND
    assert "a, b" in error.hint and "--model openai:" in error.hint


async def test_ollama_preload_asks_for_an_empty_prompt() -> None:
    async with running("ollama") as (fake, source):
        await source.preload()
    (request,) = fake.requests
    assert request.body == {"model": MODEL, "prompt": "", "stream": False}


async def test_ollama_preload_of_a_missing_model_is_not_found() -> None:
    async with running("ollama", model="nope") as (_, source):
        error = await failure(source.preload)
    assert error.code == MODEL_NOT_FOUND
    assert "ollama pull nope" in error.hint


async def test_openai_preload_sends_nothing() -> None:
    async with running("openai") as (fake, source):
        await source.preload()
    assert fake.requests == []


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_no_runtime_is_model_unavailable_everywhere(kind: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}" + ("/v1" if kind == "openai" else "")
    async with make_source(kind, url, connect_timeout=2.0) as source:
        errors = [
            await generate_failure(source),
            await failure(source.check),
            *([await failure(source.preload)] if kind == "ollama" else []),
        ]
    flag = "--ollama-url" if kind == "ollama" else "--openai-url"
    for error in errors:
        assert error.code == MODEL_UNAVAILABLE
        assert url in error.message
        assert flag in error.hint
    if kind == "ollama":
        assert "ollama serve" in errors[0].hint


@pytest.mark.parametrize("kind", KINDS)
async def test_a_bad_url_is_model_unavailable(kind: str) -> None:
    async with make_source(kind, "ftp://127.0.0.1:1") as source:
        assert (await generate_failure(source)).code == MODEL_UNAVAILABLE
        assert (await failure(source.check)).code == MODEL_UNAVAILABLE


@pytest.mark.parametrize("kind", KINDS)
async def test_an_error_status_is_model_http_error_with_the_runtime_text(kind: str) -> None:
    async with running(kind, Script(TOKENS, fail_status=500)) as (_, source):
        error = await generate_failure(source)
    assert error.code == MODEL_HTTP_ERROR
    assert "500" in error.message
    assert "fake failure" in error.message  # the runtime's text, its prompt echo removed


@pytest.mark.parametrize("kind", KINDS)
async def test_generating_with_a_missing_model_is_not_found(kind: str) -> None:
    async with running(kind, model="missing:7b") as (_, source):
        error = await generate_failure(source)
    assert error.code == MODEL_NOT_FOUND
    if kind == "ollama":
        assert "ollama pull missing:7b" in error.hint


@pytest.mark.parametrize("kind", KINDS)
async def test_a_malformed_line_is_a_protocol_error_quoting_it_briefly(kind: str) -> None:
    got: list[Token] = []
    async with running(kind, Script(TOKENS, malformed_after=3)) as (_, source):
        error = await generate_failure(source, got)
    assert error.code == MODEL_PROTOCOL_ERROR
    assert "oops" in error.message
    assert [t.text for t in got] == TOKENS[:3]


@pytest.mark.parametrize("kind", KINDS)
async def test_an_error_chunk_mid_stream_is_a_runtime_error(kind: str) -> None:
    got: list[Token] = []
    async with running(kind, Script(TOKENS, error_after=2)) as (_, source):
        error = await generate_failure(source, got)
    assert error.code == MODEL_HTTP_ERROR
    assert "fake failure" in error.message
    assert len(got) == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("after", [0, 4, len(TOKENS)])
async def test_a_dropped_connection_is_stream_dropped(kind: str, after: int) -> None:
    got: list[Token] = []
    async with running(kind, Script(TOKENS, drop_after=after)) as (_, source):
        error = await generate_failure(source, got)
    assert error.code == MODEL_STREAM_DROPPED
    assert [t.text for t in got] == TOKENS[:after]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stalled_stream_is_cancellable_and_hangs_up(kind: str) -> None:
    got: list[Token] = []
    async with running(kind, Script(TOKENS, stall_after=2)) as (fake, source):
        start = trio.current_time()
        with trio.move_on_after(0.3) as scope:
            async for token in source.generate(PROMPT):
                got.append(token)
        assert scope.cancelled_caught
        assert trio.current_time() - start < 0.6
        assert len(got) == 2
        await hung_up(fake.requests[-1])
        assert not fake.requests[-1].completed


@pytest.mark.parametrize("kind", KINDS)
async def test_stopping_early_closes_the_response(kind: str) -> None:
    script = Script(TOKENS, delays=[0.05] * len(TOKENS))
    async with running(kind, script) as (fake, source):
        async with aclosing(source.generate(PROMPT)) as tokens:
            async for _token in tokens:
                break
        await hung_up(fake.requests[-1])
        assert not fake.requests[-1].completed
        # The source is still usable afterwards.
        assert "".join(t.text for t in await collect(source)) == "".join(TOKENS)


@pytest.mark.parametrize("kind", KINDS)
async def test_abandoning_the_iterator_closes_the_response(kind: str) -> None:
    # How the engine uses it: a plain ``async for`` left by ``break``; Trio finalises the
    # dropped async generator, which must close the HTTP response.
    script = Script(TOKENS, delays=[0.05] * len(TOKENS))
    async with running(kind, script) as (fake, source):
        async for _token in source.generate(PROMPT):
            break
        gc.collect()
        await hung_up(fake.requests[-1])
        assert not fake.requests[-1].completed


# --- odd runtimes, via httpx.MockTransport -----------------------------------------------


def mock_client(status: int, body: bytes, content_type: str) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(
    ("kind", "body", "content_type"),
    [
        ("ollama", b'{"response": "hi", "done": false}\n{"foo": 1}\n', "application/x-ndjson"),
        ("ollama", b'{"response": 5, "done": false}\n', "application/x-ndjson"),
        ("ollama", b"[1, 2]\n", "application/x-ndjson"),
        ("ollama", b'{"response": "x", "done": false, "logprobs": 3}\n', "application/x-ndjson"),
        ("openai", b'data: {"object": "chat.completion.chunk"}\n\n', "text/event-stream"),
        ("openai", b'data: {"choices": [{"delta": {"content": 5}}]}\n\n', "text/event-stream"),
        ("openai", b'{"choices": []}', "application/json"),
    ],
)
async def test_json_of_the_wrong_shape_is_a_protocol_error(
    kind: str, body: bytes, content_type: str
) -> None:
    client = mock_client(200, body, content_type)
    async with client, make_source(kind, "http://runtime.test", client=client) as source:
        error = await generate_failure(source)
    assert error.code == MODEL_PROTOCOL_ERROR


async def test_a_quoted_line_is_clipped_to_80_characters() -> None:
    line = b"x" * 500 + b"\n"
    client = mock_client(200, line, "application/x-ndjson")
    async with client, OllamaSource(MODEL, "http://runtime.test", client=client) as source:
        error = await generate_failure(source)
    assert error.code == MODEL_PROTOCOL_ERROR
    assert "x" * 80 in error.message and "x" * 81 not in error.message


async def test_a_bare_404_means_the_url_is_not_ollama() -> None:
    client = mock_client(404, b"404 page not found", "text/plain")
    async with client, OllamaSource(MODEL, "http://runtime.test", client=client) as source:
        error = await generate_failure(source)
    assert error.code == MODEL_HTTP_ERROR
    assert "404" in error.message


async def test_an_ollama_stream_without_done_is_dropped() -> None:
    client = mock_client(200, b'{"response": "hi", "done": false}\n', "application/x-ndjson")
    async with client, OllamaSource(MODEL, "http://runtime.test", client=client) as source:
        error = await generate_failure(source)
    assert error.code == MODEL_STREAM_DROPPED


async def test_a_passed_in_client_is_not_closed_by_the_source() -> None:
    client = mock_client(200, b'{"models": []}', "application/json")
    async with client:
        async with OllamaSource(MODEL, "http://runtime.test", client=client) as source:
            assert await source.list_models() == []
        assert not client.is_closed


def test_sse_decoder_follows_the_event_stream_rules() -> None:
    decoder = SseDecoder()
    lines = [": comment", "event: message", "id: 3", 'data: {"a":', "data: 1}", "", "retry: 5"]
    assert [p for line in lines for p in decoder.feed(line)] == ['{"a":\n1}']
    # Lenient with a server that forgets the blank line between events.
    assert decoder.feed('data: {"b": 2}') == []
    assert decoder.feed("data:[DONE]") == ['{"b": 2}']
    assert decoder.flush() == ["[DONE]"]
