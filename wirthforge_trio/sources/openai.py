"""A model behind any OpenAI-compatible server: llama.cpp's server, LM Studio, vLLM, LocalAI.

They all stream ``POST {base}/chat/completions`` as server-sent events: ``data: {json}``
events separated by blank lines, ending with ``data: [DONE]``; each chunk carries a
``delta.content`` piece and, when asked for, ``logprobs.content`` entries with top-K
candidates. Failures become :class:`SourceError` codes, like for Ollama. The prompt goes to
the server and nowhere else: never into an exception message, a log or a print.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Final

import httpx
import trio

from wirthforge_trio.sources.base import (
    MODEL_HTTP_ERROR,
    MODEL_NOT_FOUND,
    MODEL_PROTOCOL_ERROR,
    MODEL_STREAM_DROPPED,
    SourceError,
    Token,
)
from wirthforge_trio.sources.http_runtime import (
    DROPPED_HINT,
    LogprobEntry,
    RuntimeClient,
    ShapeError,
    SurrogateMender,
    drain,
    parse_json,
    parse_logprob_entries,
    protocol_error,
    runtime_error_text,
    tokens_for_piece,
)

__all__ = ["DEFAULT_OPENAI_URL", "OpenAISource", "SseDecoder"]

DEFAULT_OPENAI_URL: Final = "http://127.0.0.1:8080/v1"
_LABEL: Final = "the OpenAI-compatible server"
_UNAVAILABLE_HINT: Final = "start the server or set --openai-url / WIRTHFORGE_OPENAI_URL"
_PROTOCOL_HINT: Final = "is that URL an OpenAI-compatible server? its base URL usually ends in /v1"
_DONE: Final = "[DONE]"


class SseDecoder:
    """Turns server-sent-event lines into the ``data`` of each event.

    It follows the SSE rules that matter here: ``data`` lines accumulate until a blank line
    ends the event; comments (``:``) and other fields (``event``, ``id``, ``retry``) are
    ignored. Being lenient with servers that omit the blank line, a new ``data`` line
    first dispatches pending data that is already a whole JSON value or ``[DONE]``.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> list[str]:
        """Payloads of the events that ``line`` completes (usually none or one)."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return []
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field != "data":
            return []
        ready = self._dispatch() if self._data and _is_whole(self._data) else []
        self._data.append(value)
        return ready

    def flush(self) -> list[str]:
        """The payload of an event the stream ended in without its blank line."""
        return self._dispatch()

    def _dispatch(self) -> list[str]:
        if not self._data:
            return []
        payload = "\n".join(self._data)
        self._data.clear()
        return [payload]


def _is_whole(data: list[str]) -> bool:
    """Whether pending event data is already complete on its own."""
    payload = "\n".join(data)
    if payload.strip() == _DONE:
        return True
    try:
        json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return True


class OpenAISource:
    """One model of an OpenAI-compatible server as a ``ModelSource``.

    ``base_url`` includes the API prefix (``.../v1``). ``api_key`` is sent as a Bearer token
    only when set. The source owns an ``httpx.AsyncClient`` unless ``client`` is given;
    ``aclose`` closes only an owned one.
    """

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_OPENAI_URL,
        *,
        top_k: int = 10,
        connect_timeout: float = 5.0,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not model:
            raise ValueError("model must be a non-empty model id")
        if top_k < 0:
            raise ValueError("top_k must be >= 0")
        self._model = model
        self._top_k = top_k
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = RuntimeClient(
            label=_LABEL,
            model=model,
            base_url=base_url,
            connect_timeout=connect_timeout,
            unavailable_hint=_UNAVAILABLE_HINT,
            protocol_hint=_PROTOCOL_HINT,
            client=client,
            headers=headers,
        )

    def __repr__(self) -> str:  # never shows the API key
        return f"OpenAISource(model={self._model!r}, base_url={self._http.base_url!r})"

    @property
    def name(self) -> str:
        """The model id as the server knows it."""
        return self._model

    @property
    def kind(self) -> str:
        return "openai"

    @property
    def base_url(self) -> str:
        """The API base URL, without a trailing slash."""
        return self._http.base_url

    @property
    def _models_hint(self) -> str:
        return f"list the ids the server has with GET {self._http.url('/models')}"

    async def __aenter__(self) -> OpenAISource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this source created it."""
        await self._http.aclose()

    async def list_models(self) -> list[str]:
        """Ids of the models the server lists (``GET {base}/models``)."""
        data = await self._http.request_json("GET", "/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise SourceError(
                MODEL_PROTOCOL_ERROR,
                f"{_LABEL} at {self._http.url('/models')} did not list models",
                hint=_PROTOCOL_HINT,
            )
        return [m["id"] for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def check(self) -> None:
        """Return when the server is up and lists the model.

        A server that answers to any model name (llama.cpp's) still lists the one it
        serves; the model must match it, and the hint says which name to use.
        """
        ids = await self.list_models()
        if self._model in ids:
            return
        if not ids:
            hint = "it lists no models: load one in the server first"
        elif len(ids) == 1:
            hint = f"it serves `{ids[0]}`: run with --model openai:{ids[0]}"
        else:
            shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
            hint = f"it serves {shown}: pick one with --model openai:<listed id>"
        raise SourceError(
            MODEL_NOT_FOUND, f"{_LABEL} at {self.base_url} does not list {self._model!r}", hint
        )

    async def preload(self) -> None:
        """Nothing to do: these servers have no load call, and most load at start-up.

        A throwaway completion would load a lazy server, but costs a generation on every
        start; the first prompt pays the load instead.
        """

    async def generate(
        self, prompt: str, *, max_tokens: int | None = None
    ) -> AsyncGenerator[Token, None]:
        """Stream the answer to ``prompt``; ends at ``[DONE]`` (or the end after a finish).

        ``max_tokens`` goes to the server as its own bound (without one, llama.cpp's server
        writes until its context is full). Safe to cancel at any await and to abandon
        early: the HTTP response is closed.
        """
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "logprobs": True,
            "top_logprobs": self._top_k,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        lines = self._http.stream_lines(
            "/chat/completions",
            body,
            prompt=prompt,
            not_found_hint=self._models_hint,
            content_type="text/event-stream",
        )
        decoder = SseDecoder()
        mender = SurrogateMender()
        finished = False
        async with aclosing(lines):
            async for line in lines:
                for payload in decoder.feed(line):
                    if payload.strip() == _DONE:
                        for token in tokens_for_piece(mender.flush(), None, trio.current_time()):
                            yield token
                        await drain(lines)
                        return
                    piece, entries, finish = self._read_event(payload, prompt)
                    finished = finished or finish
                    for token in tokens_for_piece(mender.feed(piece), entries, trio.current_time()):
                        yield token
        for payload in decoder.flush():
            if payload.strip() == _DONE:
                for token in tokens_for_piece(mender.flush(), None, trio.current_time()):
                    yield token
                return
            piece, entries, finish = self._read_event(payload, prompt)
            finished = finished or finish
            for token in tokens_for_piece(mender.feed(piece), entries, trio.current_time()):
                yield token
        for token in tokens_for_piece(mender.flush(), None, trio.current_time()):
            yield token
        if not finished:
            raise SourceError(
                MODEL_STREAM_DROPPED,
                f"{_LABEL}'s stream for {self._model!r} ended before [DONE]",
                hint=DROPPED_HINT,
            )

    def _read_event(self, payload: str, prompt: str) -> tuple[str, list[LogprobEntry] | None, bool]:
        """``(content piece, logprob entries or None, finished)`` from one event's data."""
        chunk = parse_json(payload, label=_LABEL, prompt=prompt, hint=_PROTOCOL_HINT)
        if isinstance(chunk, dict) and "error" in chunk:
            raise SourceError(
                MODEL_HTTP_ERROR,
                f"{_LABEL} failed mid-stream ({runtime_error_text(chunk, prompt)!r})",
                hint=self._http.log_hint,
            )
        try:
            return self._read_chunk(chunk)
        except ShapeError as exc:
            raise protocol_error(
                _LABEL,
                f"an event that is not a chat completion chunk ({exc})",
                payload,
                prompt,
                _PROTOCOL_HINT,
            ) from None

    def _read_chunk(self, chunk: Any) -> tuple[str, list[LogprobEntry] | None, bool]:
        """Read the first choice of a ``chat.completion.chunk``."""
        if not isinstance(chunk, dict):
            raise ShapeError("not an object")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise ShapeError("no 'choices' list")
        # A usage-only chunk has no choices; with n > 1 only choice 0 is followed.
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            if choices:
                raise ShapeError("no choice 0")
            return "", None, False
        delta = choice.get("delta", {})
        if not isinstance(delta, dict):
            raise ShapeError("'delta' is not an object")
        piece = delta.get("content") or ""
        if not isinstance(piece, str):
            raise ShapeError("'content' is not a string")
        logprobs = choice.get("logprobs")
        entries = None
        if logprobs is not None:
            if not isinstance(logprobs, dict):
                raise ShapeError("'logprobs' is not an object")
            entries = parse_logprob_entries(logprobs.get("content"), self._top_k)
        return piece, entries, choice.get("finish_reason") is not None
