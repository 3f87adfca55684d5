"""Plumbing shared by the sources that talk HTTP to a local model runtime.

Ollama and the OpenAI-compatible servers fail in the same ways (not running, an HTTP error,
something that is not their format, a stream cut short), and the engine and the user must see
those as the same :class:`SourceError` codes whichever runtime is behind them. This module
holds that mapping, the log-probability to top-K conversion, and the rule that the prompt
never reaches an exception message, even when a runtime echoes it back in an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, Final

import attrs
import httpx
import trio

from wirthforge_trio.contract.codec import valid_text
from wirthforge_trio.sources.base import (
    MODEL_HTTP_ERROR,
    MODEL_NOT_FOUND,
    MODEL_PROTOCOL_ERROR,
    MODEL_STREAM_DROPPED,
    MODEL_TIMEOUT,
    MODEL_UNAVAILABLE,
    SourceError,
    Token,
)

__all__ = [
    "DROPPED_HINT",
    "QUOTE_LIMIT",
    "LogprobEntry",
    "RuntimeClient",
    "ShapeError",
    "SurrogateMender",
    "drain",
    "error_text",
    "make_timeout",
    "parse_json",
    "parse_logprob_entries",
    "protocol_error",
    "quote",
    "redact",
    "runtime_error_text",
    "tokens_for_piece",
]

QUOTE_LIMIT: Final = 80
"""At most this many characters of a bad line go into an error message."""
DROPPED_HINT: Final = "the runtime may have crashed or been stopped; check its log and try again"
_ERROR_BODY_LIMIT: Final = 4096
_DRAIN_S: Final = 1.0
_ERROR_TEXT_LIMIT: Final = 200
_REDACTED: Final = "[prompt]"
_MIN_REDACT: Final = 3
"""Shorter prompts cannot be told apart from ordinary text, so they are not searched for."""


class ShapeError(ValueError):
    """Valid JSON that is not the runtime's documented shape; the caller adds the quote."""


def make_timeout(connect_timeout: float) -> httpx.Timeout:
    """Bound connecting and sending but never reading: the engine times stalls per token."""
    return httpx.Timeout(
        connect=connect_timeout, read=None, write=connect_timeout, pool=connect_timeout
    )


def redact(text: str, prompt: str | None) -> str:
    """Replace the prompt, raw or JSON-escaped, wherever a runtime echoed it into ``text``."""
    if prompt is None or len(prompt.strip()) < _MIN_REDACT:
        return text
    forms = {
        prompt,
        prompt.strip(),
        json.dumps(prompt)[1:-1],
        json.dumps(prompt, ensure_ascii=False)[1:-1],
    }
    for form in sorted(forms, key=len, reverse=True):
        if len(form.strip()) >= _MIN_REDACT:
            text = text.replace(form, _REDACTED)
    return text


def quote(text: str, prompt: str | None, limit: int = QUOTE_LIMIT) -> str:
    """A short, prompt-free quote of runtime output for an error message."""
    clean = redact(text, prompt)
    if len(clean) <= limit:
        return repr(clean)
    return f"{clean[:limit]!r}... ({len(clean)} chars)"


def error_text(body: bytes | str, prompt: str | None = None) -> str | None:
    """The runtime's own error text from a JSON ``{"error": ...}`` body, if it sent one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return runtime_error_text(data, prompt)


def runtime_error_text(data: Any, prompt: str | None = None) -> str | None:
    """The error text of a parsed ``{"error": ...}`` object: short, prompt-free.

    Ollama sends ``{"error": "text"}``, OpenAI-style servers ``{"error": {"message": ...}}``.
    """
    if not isinstance(data, dict) or "error" not in data:
        return None
    error = data["error"]
    if isinstance(error, dict):
        error = error.get("message", error)
    text = error if isinstance(error, str) else json.dumps(error)
    text = redact(text, prompt)
    if len(text) > _ERROR_TEXT_LIMIT:
        text = text[:_ERROR_TEXT_LIMIT] + "..."
    return text


def protocol_error(label: str, what: str, line: str, prompt: str | None, hint: str) -> SourceError:
    """MODEL_PROTOCOL_ERROR quoting the offending line (clipped, prompt removed)."""
    return SourceError(
        MODEL_PROTOCOL_ERROR, f"{label} sent {what}: {quote(line, prompt)}", hint=hint
    )


def parse_json(line: str, *, label: str, prompt: str | None, hint: str) -> Any:
    """Parse one line of runtime output or raise MODEL_PROTOCOL_ERROR quoting it."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        # ``from None``: JSONDecodeError keeps the whole line, which may echo the prompt.
        raise protocol_error(label, "a line that is not JSON", line, prompt, hint) from None


def _probability(logprob: Any) -> float:
    """exp(logprob) clamped to [0, 1]; runtimes round, and some send -Infinity."""
    if isinstance(logprob, bool) or not isinstance(logprob, int | float):
        raise ShapeError("logprob is not a number")
    if math.isnan(logprob):
        return 0.0
    return min(1.0, math.exp(min(float(logprob), 0.0)))


@attrs.frozen
class LogprobEntry:
    """One generated token as a runtime's logprobs describe it, with its top-K candidates."""

    token: str
    top_k: tuple[float, ...] | None
    top_k_tokens: tuple[str, ...] | None


def _candidates(raw: Any, limit: int) -> tuple[tuple[float, ...], tuple[str, ...]] | None:
    """Top-K probabilities and texts, most likely first, at most ``limit`` of them."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ShapeError("top_logprobs is not a list")
    pairs: list[tuple[float, str]] = []
    for candidate in raw:
        if not isinstance(candidate, dict) or not isinstance(candidate.get("token"), str):
            raise ShapeError("a top_logprobs candidate has no token")
        pairs.append((_probability(candidate.get("logprob")), candidate["token"]))
    pairs.sort(key=lambda pair: pair[0], reverse=True)  # stable: ties keep runtime order
    pairs = pairs[:limit]
    if not pairs:
        return None
    return tuple(p for p, _ in pairs), tuple(t for _, t in pairs)


def parse_logprob_entries(raw: Any, limit: int) -> list[LogprobEntry] | None:
    """Read a ``[{"token", "logprob", "top_logprobs": [...]}, ...]`` list (None if absent)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ShapeError("logprobs is not a list")
    entries: list[LogprobEntry] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("token"), str):
            raise ShapeError("a logprobs entry has no token")
        if "logprob" in item and item["logprob"] is not None:
            _probability(item["logprob"])  # validate the shape; the chosen token's own
            # probability is not a top-K distribution, so it is not reported on its own.
        found = _candidates(item.get("top_logprobs"), limit)
        probs, texts = found if found is not None else (None, None)
        entries.append(LogprobEntry(token=item["token"], top_k=probs, top_k_tokens=texts))
    return entries


class SurrogateMender:
    """Makes a runtime's text pieces valid Unicode, in order, without losing a character.

    Runtimes escape text in JSON (``\\ud83d\\ude00``), and some split one character's
    UTF-16 surrogate pair across two chunks; decoded alone, each half is a lone surrogate
    that no UTF-8 encoder (nor the WebSocket) accepts. A high surrogate that ends a piece is
    held back and joined with the low one that starts the next; any other lone surrogate
    becomes U+FFFD, as a decoder does with a malformed byte.
    """

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        """The valid text of ``piece`` (with what was held back before it)."""
        text, self._held = self._held + piece, ""
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self._held = text[:-1], text[-1]
        return valid_text(text)

    def flush(self) -> str:
        """At the end of the stream: U+FFFD for a high surrogate still held, else nothing."""
        held, self._held = self._held, ""
        return "\ufffd" if held else ""


def tokens_for_piece(piece: str, entries: Sequence[LogprobEntry] | None, at: float) -> list[Token]:
    """Tokens for one streamed text piece, lossless: their texts always join to ``piece``.

    One Token per logprob entry when the entries spell the piece exactly (the runtime's
    real tokenisation); otherwise (byte-level tokens, no logprobs) one Token for the whole
    piece, carrying the first entry's top-K when there is one.
    """
    if not piece:
        return []
    if entries and "".join(e.token for e in entries) == piece:
        return [
            Token(text=e.token, at=at, top_k=e.top_k, top_k_tokens=e.top_k_tokens)
            for e in entries
            if e.token
        ]
    if entries:
        first = entries[0]
        return [Token(text=piece, at=at, top_k=first.top_k, top_k_tokens=first.top_k_tokens)]
    return [Token(text=piece, at=at)]


def _detail(exc: BaseException) -> str:
    """An httpx exception as text for a message; httpx never puts request bodies in these."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RuntimeClient:
    """An httpx client bound to one runtime's base URL that only ever raises SourceError.

    It owns its ``httpx.AsyncClient`` unless one is passed in. Every request carries the
    source's timeouts (no read timeout: the engine enforces stalls with a cancel scope).
    """

    def __init__(
        self,
        *,
        label: str,
        model: str,
        base_url: str,
        connect_timeout: float,
        unavailable_hint: str,
        protocol_hint: str,
        client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not connect_timeout > 0:
            raise ValueError("connect_timeout must be positive")
        self.label = label
        self.model = model
        self.log_hint = f"check {label}'s log"
        self.base_url = base_url.rstrip("/")
        self.unavailable_hint = unavailable_hint
        self.protocol_hint = protocol_hint
        self._timeout = make_timeout(connect_timeout)
        self._headers = dict(headers or {})
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=self._timeout)

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` under the base URL."""
        return self.base_url + path

    async def aclose(self) -> None:
        """Close the httpx client if this object created it."""
        if self._owns_client:
            await self._client.aclose()

    def transport_error(self, exc: Exception, url: str) -> SourceError:
        """Map an httpx failure (or a bad URL) to the SourceError a user can act on."""
        if isinstance(
            exc,
            httpx.ConnectError
            | httpx.ConnectTimeout
            | httpx.PoolTimeout
            | httpx.UnsupportedProtocol
            | httpx.InvalidURL,
        ):
            return SourceError(
                MODEL_UNAVAILABLE,
                f"cannot connect to {self.label} at {url} ({_detail(exc)})",
                hint=self.unavailable_hint,
            )
        if isinstance(exc, httpx.ReadTimeout):
            return SourceError(
                MODEL_TIMEOUT,
                f"{self.label} at {url} stopped sending (read timeout)",
                hint="the model may be overloaded; try again or use a smaller model",
            )
        if isinstance(exc, httpx.DecodingError):
            return SourceError(
                MODEL_PROTOCOL_ERROR,
                f"{self.label} at {url} sent a body that cannot be decoded ({_detail(exc)})",
                hint=self.protocol_hint,
            )
        return SourceError(
            MODEL_STREAM_DROPPED,
            f"the connection to {self.label} at {url} broke ({_detail(exc)})",
            hint=DROPPED_HINT,
        )

    def status_error(
        self,
        status: int,
        body: bytes,
        url: str,
        *,
        prompt: str | None = None,
        not_found_hint: str | None = None,
    ) -> SourceError:
        """MODEL_HTTP_ERROR naming the status and the runtime's error text.

        A 404 that carries the runtime's JSON error on a model endpoint means the model is
        missing (``not_found_hint`` given); a bare 404 means the URL is not this runtime.
        """
        text = error_text(body, prompt)
        if status == 404 and not_found_hint is not None and text is not None:
            return SourceError(
                MODEL_NOT_FOUND,
                f"{self.label} at {self.base_url} does not have model {self.model!r} ({text!r})",
                not_found_hint,
            )
        reason = httpx.codes.get_reason_phrase(status)
        said = f" ({text!r})" if text is not None else (f" {reason}" if reason else "")
        if status in (401, 403):
            hint = "the server refused the request: it may want an API key (or another one)"
        elif status == 404:
            hint = self.protocol_hint
        else:
            hint = self.log_hint
        return SourceError(
            MODEL_HTTP_ERROR, f"{self.label} at {url} answered HTTP {status}{said}", hint=hint
        )

    async def request_json(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        not_found_hint: str | None = None,
    ) -> Any:
        """One small request whose whole answer is a JSON document."""
        url = self.url(path)
        try:
            response = await self._client.request(
                method, url, json=body, headers=self._headers, timeout=self._timeout
            )
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise self.transport_error(exc, url) from exc
        if not response.is_success:
            raise self.status_error(
                response.status_code, response.content, url, not_found_hint=not_found_hint
            )
        return parse_json(response.text, label=self.label, prompt=None, hint=self.protocol_hint)

    async def stream_lines(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        prompt: str,
        not_found_hint: str | None = None,
        content_type: str | None = None,
    ) -> AsyncGenerator[str, None]:
        """POST ``body`` and yield the streamed answer line by line.

        Ends normally at the end of the body; deciding whether that end was expected is the
        caller's job. Cancellation at any await, or closing this generator early, closes the
        HTTP response (the ``async with``), so the runtime sees the connection go.
        """
        url = self.url(path)
        try:
            async with self._client.stream(
                "POST", url, json=body, headers=self._headers, timeout=self._timeout
            ) as response:
                if not response.is_success:
                    raise self.status_error(
                        response.status_code,
                        await _read_limited(response),
                        url,
                        prompt=prompt,
                        not_found_hint=not_found_hint,
                    )
                got = response.headers.get("content-type", "")
                if content_type is not None and got.startswith("application/json"):
                    # The runtime ignored "stream": it answered one JSON document instead.
                    text = (await _read_limited(response)).decode("utf-8", "replace")
                    raise protocol_error(
                        self.label,
                        f"{got} instead of {content_type}",
                        text,
                        prompt,
                        self.protocol_hint,
                    )
                async for line in response.aiter_lines():
                    yield line
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise self.transport_error(exc, url) from exc


async def drain(lines: AsyncIterator[str], seconds: float = _DRAIN_S) -> None:
    """Read past the runtime's end marker to the end of the body (normally nothing is left).

    A fully read response goes back to httpx's pool for reuse, and httpx's internal async
    generators finish instead of being left for Trio to finalise. Anything after the end
    marker, or a failure there, no longer matters: the answer is complete.
    """
    with trio.move_on_after(seconds):
        try:
            async for _line in lines:
                pass
        except SourceError:
            pass


async def _read_limited(response: httpx.Response) -> bytes:
    """The start of a response body: enough for an error message, bounded in size."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= _ERROR_BODY_LIMIT:
            break
    return bytes(data[:_ERROR_BODY_LIMIT])
