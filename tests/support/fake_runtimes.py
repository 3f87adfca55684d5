"""Fake model runtimes for tests: tiny HTTP/1.1 servers on raw Trio that speak just enough
of Ollama's and the OpenAI-compatible APIs to exercise the runtime sources.

Each model is played from a :class:`Script` (tokens, the delay before each, optional top-K
log-probabilities, and one optional failure), so tests control exactly what arrives and
when. Every request is recorded (method, path, headers, JSON body) together with whether the
client closed its connection before the answer was complete, which is how tests see that a
cancelled or abandoned stream really hangs up on the runtime.

Usage::

    async with FakeOllama({"qwen3:0.6b": Script(["Hi", "!"])}) as fake:
        source = OllamaSource("qwen3:0.6b", fake.base_url)

or ``base_url = await nursery.start(fake.serve)`` (``nursery.start(fake.serve, port)`` for a
fixed port). ``FakeOpenAI`` is the same with
``/v1/models`` and ``/v1/chat/completions``; its base URL ends in ``/v1``.

Every response closes its connection (``Connection: close``), so one connection is one
request, and a connection closing while the answer streams means the client hung up.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any, Literal, Self

import trio

_MAX_HEAD = 64 * 1024


@dataclass
class Script:
    """What the fake runtime streams for one model.

    ``tokens`` are sent in order, ``per_chunk`` tokens per streamed chunk, after sleeping
    ``delays[i]`` seconds before token ``i`` (missing delays are 0). ``top_k[i]`` lists
    ``(token, logprob)`` candidates for token ``i``, sent in the given order; without it the
    runtime reports no logprobs at all, like an older runtime. ``logprob_tokens`` replaces the
    token texts reported inside logprobs (to mimic byte-level tokens that do not spell the
    text). ``openai_done=False`` ends an SSE stream after the finish chunk, without
    ``data: [DONE]``.

    Failures (``n`` counts tokens already sent): ``fail_status`` answers that HTTP status with
    a JSON error; ``malformed_after`` sends a line that is not JSON; ``error_after`` sends an
    ``{"error": ...}`` chunk; ``stall_after`` stops sending but keeps the connection open until
    the client leaves; ``drop_after`` closes the connection without the end of the body.
    Error texts echo the prompt on purpose, to check the sources never repeat it.
    """

    tokens: Sequence[str]
    delays: Sequence[float] = ()
    top_k: Sequence[Sequence[tuple[str, float]]] | None = None
    per_chunk: int = 1
    logprob_tokens: Sequence[str] | None = None
    openai_done: bool = True
    fail_status: int | None = None
    malformed_after: int | None = None
    error_after: int | None = None
    stall_after: int | None = None
    drop_after: int | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def delay(self, i: int) -> float:
        return self.delays[i] if i < len(self.delays) else 0.0


@dataclass
class Request:
    """One request the fake received, and what became of its connection."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    tokens_sent: int = 0
    completed: bool = False
    """The whole answer was written (the client may close after that: that is normal)."""
    client_closed: trio.Event = field(default_factory=trio.Event)
    """Set when the client closed the connection (or reset it) while the fake still had it."""


class _Conn:
    """One accepted connection: the bytes of one HTTP/1.1 exchange."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    async def read_request(self) -> Request | None:
        """The request line, headers and Content-Length body; None if the client left."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await self.stream.receive_some(65536)
            if not data or len(buf) > _MAX_HEAD:
                return None
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            rest += data
        body = json.loads(rest[:length]) if length else None
        return Request(method=method, path=target, headers=headers, body=body)

    async def send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        await self.stream.send_all(
            _head(status, "application/json", f"Content-Length: {len(body)}") + body
        )

    async def start_chunked(self, content_type: str) -> None:
        await self.stream.send_all(_head(200, content_type, "Transfer-Encoding: chunked"))

    async def send_chunk(self, data: bytes) -> None:
        await self.stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))

    async def end_chunked(self) -> None:
        await self.stream.send_all(b"0\r\n\r\n")


def _head(status: int, content_type: str, framing: str) -> bytes:
    reason = HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{framing}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


Outcome = Literal["go", "stop"]


class FakeRuntime:
    """A fake runtime serving ``scripts`` (model name to Script) on 127.0.0.1, any port."""

    url_suffix = ""

    def __init__(self, scripts: Mapping[str, Script] | None = None) -> None:
        self.scripts: dict[str, Script] = dict(scripts or {})
        self.requests: list[Request] = []
        self.base_url = ""
        self._cm: AbstractAsyncContextManager[Self] | None = None

    async def serve(
        self, port: int = 0, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``await nursery.start(fake.serve)`` returns the base URL.

        ``port`` 0 picks a free one; a fixed port lets a test bring a runtime up "later" at
        an address a source already points to.
        """
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, self._handle, port, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            self.base_url = f"http://127.0.0.1:{port}{self.url_suffix}"
            task_status.started(self.base_url)

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[Self]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.serve)
            yield self
            nursery.cancel_scope.cancel()

    async def __aenter__(self) -> Self:
        self._cm = self._running()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(*exc_info)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = _Conn(stream)
        try:
            request = await conn.read_request()
            if request is None:
                return
            self.requests.append(request)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, stream, request, nursery.cancel_scope)
                await self.route(request, conn)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    @staticmethod
    async def _watch(stream: trio.SocketStream, request: Request, scope: trio.CancelScope) -> None:
        """Notice the client hanging up while the answer is still being written."""
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        request.client_closed.set()
        scope.cancel()

    async def route(self, request: Request, conn: _Conn) -> None:
        raise NotImplementedError

    def model_for(self, name: Any) -> Script | None:
        return self.scripts.get(name) if isinstance(name, str) else None

    async def play(self, request: Request, conn: _Conn, script: Script, flavour: _Flavour) -> None:
        """Stream ``script`` in ``flavour``'s framing, applying its failure, if any."""
        await conn.start_chunked(flavour.content_type)
        await flavour.start(conn)
        tokens = list(script.tokens)
        starts = list(range(0, len(tokens), max(1, script.per_chunk)))
        for start in [*starts, len(tokens)]:
            if await self._fail(request, conn, script, flavour) == "stop":
                return
            if start == len(tokens):
                break
            group = range(start, min(start + max(1, script.per_chunk), len(tokens)))
            for i in group:
                await trio.sleep(script.delay(i))
            await flavour.send_tokens(conn, script, list(group))
            request.tokens_sent += len(group)
        await flavour.finish(conn, script)
        await conn.end_chunked()
        request.completed = True

    @staticmethod
    async def _fail(request: Request, conn: _Conn, script: Script, flavour: _Flavour) -> Outcome:
        sent = request.tokens_sent
        if script.malformed_after is not None and sent >= script.malformed_after:
            await conn.send_chunk(flavour.malformed(_prompt_of(request)))
            await conn.end_chunked()
            return "stop"
        if script.error_after is not None and sent >= script.error_after:
            await conn.send_chunk(flavour.error(f"fake failure for {_prompt_of(request)}"))
            await conn.end_chunked()
            return "stop"
        if script.stall_after is not None and sent >= script.stall_after:
            await trio.sleep_forever()  # until the client leaves (the watcher cancels)
        if script.drop_after is not None and sent >= script.drop_after:
            return "stop"  # the handler closes the socket without the final chunk
        return "go"


def _prompt_of(request: Request) -> str:
    """The prompt a request carried, for error texts that (wrongly) echo it."""
    body = request.body if isinstance(request.body, dict) else {}
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    messages = body.get("messages") or [{}]
    return str(messages[-1].get("content", ""))


def _entries(script: Script, indices: Sequence[int]) -> list[dict[str, Any]] | None:
    """The logprobs entries of tokens ``indices``, in the shape both APIs share."""
    if script.top_k is None:
        return None
    names = script.logprob_tokens if script.logprob_tokens is not None else script.tokens
    entries = []
    for i in indices:
        candidates = list(script.top_k[i])  # sent whole: sources must cap to their top_k
        chosen = dict(candidates).get(script.tokens[i], candidates[0][1] if candidates else 0.0)
        entries.append(
            {
                "token": names[i],
                "logprob": chosen,
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in candidates],
            }
        )
    return entries


class _Flavour:
    """How one API frames a token stream."""

    content_type = ""

    async def start(self, conn: _Conn) -> None:
        pass

    async def send_tokens(self, conn: _Conn, script: Script, indices: list[int]) -> None:
        raise NotImplementedError

    async def finish(self, conn: _Conn, script: Script) -> None:
        raise NotImplementedError

    def malformed(self, prompt: str) -> bytes:
        raise NotImplementedError

    def error(self, text: str) -> bytes:
        raise NotImplementedError


class _Ndjson(_Flavour):
    content_type = "application/x-ndjson"

    def __init__(self, model: str) -> None:
        self.model = model

    async def send_tokens(self, conn: _Conn, script: Script, indices: list[int]) -> None:
        chunk: dict[str, Any] = {
            "model": self.model,
            "created_at": "2025-01-01T00:00:00Z",
            "response": "".join(script.tokens[i] for i in indices),
            "done": False,
        }
        entries = _entries(script, indices)
        if entries is not None:
            chunk["logprobs"] = entries
        await conn.send_chunk(json.dumps(chunk).encode() + b"\n")

    async def finish(self, conn: _Conn, script: Script) -> None:
        final = {"model": self.model, "response": "", "done": True, "done_reason": "stop"}
        await conn.send_chunk(json.dumps(final).encode() + b"\n")

    def malformed(self, prompt: str) -> bytes:
        return f"<html>oops {prompt}</html>\n".encode()

    def error(self, text: str) -> bytes:
        return json.dumps({"error": text}).encode() + b"\n"


class _Sse(_Flavour):
    content_type = "text/event-stream"

    def __init__(self, model: str) -> None:
        self.model = model

    def _event(self, delta: dict[str, Any], logprobs: Any, finish: str | None) -> bytes:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    async def start(self, conn: _Conn) -> None:
        await conn.send_chunk(b": keep-alive comment\n\nevent: message\n")
        await conn.send_chunk(self._event({"role": "assistant", "content": ""}, None, None))

    async def send_tokens(self, conn: _Conn, script: Script, indices: list[int]) -> None:
        entries = _entries(script, indices)
        text = "".join(script.tokens[i] for i in indices)
        logprobs = {"content": entries} if entries is not None else None
        await conn.send_chunk(self._event({"content": text}, logprobs, None))

    async def finish(self, conn: _Conn, script: Script) -> None:
        await conn.send_chunk(self._event({}, None, "stop"))
        if script.openai_done:
            await conn.send_chunk(b"data: [DONE]\n\n")

    def malformed(self, prompt: str) -> bytes:
        return f"data: {{oops {prompt}\n\n".encode()

    def error(self, text: str) -> bytes:
        body = {"error": {"message": text, "type": "server_error"}}
        return b"data: " + json.dumps(body).encode() + b"\n\n"


def _with_tag(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class FakeOllama(FakeRuntime):
    """``GET /api/tags`` and ``POST /api/generate`` (NDJSON stream, or one JSON document)."""

    def model_for(self, name: Any) -> Script | None:
        if not isinstance(name, str):
            return None
        return next((s for n, s in self.scripts.items() if _with_tag(n) == _with_tag(name)), None)

    async def route(self, request: Request, conn: _Conn) -> None:
        if request.method == "GET" and request.path == "/api/tags":
            models = [{"name": n, "model": n, "size": 1} for n in self.scripts]
            await conn.send_json(200, {"models": models})
            return
        if request.method != "POST" or request.path != "/api/generate":
            await conn.send_json(404, {"error": "404 page not found"})  # as Ollama's router
            return
        body = request.body if isinstance(request.body, dict) else {}
        model = body.get("model")
        script = self.model_for(model)
        if script is None:
            await conn.send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
        elif script.fail_status is not None:
            await conn.send_json(
                script.fail_status, {"error": f"fake failure: {_prompt_of(request)}"}
            )
        elif body.get("stream") is False:
            await conn.send_json(
                200, {"model": model, "response": "", "done": True, "done_reason": "load"}
            )
            request.completed = True
        else:
            await self.play(request, conn, script, _Ndjson(str(model)))


class FakeOpenAI(FakeRuntime):
    """``GET /v1/models`` and ``POST /v1/chat/completions`` (server-sent events)."""

    url_suffix = "/v1"

    async def route(self, request: Request, conn: _Conn) -> None:
        if request.method == "GET" and request.path == "/v1/models":
            data = [{"id": n, "object": "model", "owned_by": "fake"} for n in self.scripts]
            await conn.send_json(200, {"object": "list", "data": data})
            return
        if request.method != "POST" or request.path != "/v1/chat/completions":
            await conn.send_json(
                404, {"error": {"message": "not found", "type": "invalid_request"}}
            )
            return
        body = request.body if isinstance(request.body, dict) else {}
        model = body.get("model")
        script = self.model_for(model)
        if script is None:
            error = {"message": f"model {model} not found", "type": "not_found_error"}
            await conn.send_json(404, {"error": error})
        elif script.fail_status is not None:
            error = {"message": f"fake failure: {_prompt_of(request)}", "type": "server_error"}
            await conn.send_json(script.fail_status, {"error": error})
        else:
            await self.play(request, conn, script, _Sse(str(model)))
