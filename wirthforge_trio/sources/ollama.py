"""A model served by a local Ollama: its tokens and top-K probabilities, as they stream.

Ollama answers ``POST /api/generate`` with one JSON object per line (NDJSON): text pieces in
``response`` (with ``logprobs`` on runtimes new enough to report them) and a last object with
``"done": true``. Anything else (no runtime, an HTTP error, a non-JSON line, a stream that
ends without ``done``) becomes a :class:`SourceError` the user can act on. The prompt goes to
Ollama and nowhere else: it is never put in an exception message, a log or a print.
"""

from __future__ import annotations

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

__all__ = ["DEFAULT_OLLAMA_URL", "OllamaSource", "same_ollama_model"]

DEFAULT_OLLAMA_URL: Final = "http://127.0.0.1:11434"
_LABEL: Final = "Ollama"
_UNAVAILABLE_HINT: Final = (
    "start Ollama with `ollama serve` or point --ollama-url / WIRTHFORGE_OLLAMA_URL at it"
)
_PROTOCOL_HINT: Final = "is that URL an Ollama server? if it is, upgrade Ollama"


def _with_tag(name: str) -> str:
    """The name with its tag spelled out: Ollama treats ``llama3`` as ``llama3:latest``."""
    last = name.rsplit("/", 1)[-1]  # a registry host may carry a port: host:5000/model
    return name if ":" in last else f"{name}:latest"


def same_ollama_model(a: str, b: str) -> bool:
    """Whether two Ollama model names mean the same model (``x`` == ``x:latest``)."""
    return _with_tag(a) == _with_tag(b)


class OllamaSource:
    """One Ollama model as a :class:`~wirthforge_trio.sources.base.ModelSource`.

    ``top_k`` is how many candidates per position to ask for (Ollama's ``top_logprobs``).
    The source owns an ``httpx.AsyncClient`` unless ``client`` is given; ``aclose`` closes
    only an owned one.
    """

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_OLLAMA_URL,
        *,
        top_k: int = 10,
        connect_timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not model:
            raise ValueError("model must be a non-empty Ollama model name")
        if top_k < 0:
            raise ValueError("top_k must be >= 0")
        self._model = model
        self._top_k = top_k
        self._http = RuntimeClient(
            label=_LABEL,
            model=model,
            base_url=base_url,
            connect_timeout=connect_timeout,
            unavailable_hint=_UNAVAILABLE_HINT,
            protocol_hint=_PROTOCOL_HINT,
            client=client,
        )

    def __repr__(self) -> str:
        return f"OllamaSource(model={self._model!r}, base_url={self._http.base_url!r})"

    @property
    def name(self) -> str:
        """The Ollama model name, as given (e.g. ``qwen3:0.6b``)."""
        return self._model

    @property
    def kind(self) -> str:
        return "ollama"

    @property
    def base_url(self) -> str:
        """Where the runtime is expected, without a trailing slash."""
        return self._http.base_url

    @property
    def _pull_hint(self) -> str:
        return f"pull it with `ollama pull {self._model}`"

    async def __aenter__(self) -> OllamaSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this source created it."""
        await self._http.aclose()

    async def list_models(self) -> list[str]:
        """Names of the models this Ollama has (``GET /api/tags``)."""
        data = await self._http.request_json("GET", "/api/tags")
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise SourceError(
                MODEL_PROTOCOL_ERROR,
                f"{_LABEL} at {self._http.url('/api/tags')} did not list models",
                hint=_PROTOCOL_HINT,
            )
        names: list[str] = []
        for entry in models:
            name = entry.get("name", entry.get("model")) if isinstance(entry, dict) else None
            if isinstance(name, str):
                names.append(name)
        return names

    async def check(self) -> None:
        """Return when Ollama is up and has the model; MODEL_NOT_FOUND names the fix."""
        names = await self.list_models()
        if any(same_ollama_model(self._model, name) for name in names):
            return
        has = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none"
        raise SourceError(
            MODEL_NOT_FOUND,
            f"{_LABEL} at {self.base_url} does not have model {self._model!r} (it has: {has})",
            hint=self._pull_hint,
        )

    async def preload(self) -> None:
        """Load the model now: Ollama loads a model when asked to complete an empty prompt."""
        data = await self._http.request_json(
            "POST",
            "/api/generate",
            {"model": self._model, "prompt": "", "stream": False},
            not_found_hint=self._pull_hint,
        )
        if isinstance(data, dict) and "error" in data:
            raise SourceError(
                MODEL_HTTP_ERROR,
                f"{_LABEL} could not load {self._model!r} ({runtime_error_text(data)!r})",
                hint=self._http.log_hint,
            )

    async def generate(
        self, prompt: str, *, max_tokens: int | None = None
    ) -> AsyncGenerator[Token, None]:
        """Stream the answer to ``prompt``; ends when Ollama says ``done``.

        ``max_tokens`` goes to Ollama as ``options.num_predict``. Safe to cancel at any
        await and to abandon early: the HTTP response is closed.
        """
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": prompt,
            "stream": True,
            "logprobs": True,
            "top_logprobs": self._top_k,
        }
        if max_tokens is not None:
            body["options"] = {"num_predict": max_tokens}
        lines = self._http.stream_lines(
            "/api/generate", body, prompt=prompt, not_found_hint=self._pull_hint
        )
        mender = SurrogateMender()
        async with aclosing(lines):
            async for line in lines:
                if not line.strip():
                    continue
                chunk = parse_json(line, label=_LABEL, prompt=prompt, hint=_PROTOCOL_HINT)
                if isinstance(chunk, dict) and "error" in chunk:
                    raise SourceError(
                        MODEL_HTTP_ERROR,
                        f"{_LABEL} failed mid-stream ({runtime_error_text(chunk, prompt)!r})",
                        hint=self._http.log_hint,
                    )
                try:
                    piece, entries, done = self._read_chunk(chunk)
                except ShapeError as exc:
                    raise protocol_error(
                        _LABEL,
                        f"a line that is not a generate chunk ({exc})",
                        line,
                        prompt,
                        _PROTOCOL_HINT,
                    ) from None
                for token in tokens_for_piece(mender.feed(piece), entries, trio.current_time()):
                    yield token
                if done:
                    for token in tokens_for_piece(mender.flush(), None, trio.current_time()):
                        yield token
                    await drain(lines)
                    return
        raise SourceError(
            MODEL_STREAM_DROPPED,
            f"{_LABEL}'s stream for {self._model!r} ended before it said done",
            hint=DROPPED_HINT,
        )

    def _read_chunk(self, chunk: Any) -> tuple[str, list[LogprobEntry] | None, bool]:
        """``(response piece, logprob entries or None, done)`` from one NDJSON object."""
        if not isinstance(chunk, dict):
            raise ShapeError("not an object")
        done = chunk.get("done")
        if not isinstance(done, bool):
            raise ShapeError("no boolean 'done'")
        piece = chunk.get("response", "")
        if not isinstance(piece, str):
            raise ShapeError("'response' is not a string")
        entries = parse_logprob_entries(chunk.get("logprobs"), self._top_k)
        return piece, entries, done
