"""The one interface every model source implements: an async stream of timed tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final, Protocol

import attrs


@attrs.frozen
class Token:
    """One output token as the runtime produced it.

    ``at`` is the Trio clock (``trio.current_time()``, seconds) when the token was produced
    (or received from the runtime), so the energy model measures real inter-token times.
    ``top_k`` holds the probabilities of the runtime's top-K candidates for this position when
    it reports them, most likely first; ``top_k_tokens`` the candidates' text, aligned with
    ``top_k``, when the runtime names them.
    """

    text: str
    at: float
    top_k: tuple[float, ...] | None = None
    top_k_tokens: tuple[str, ...] | None = None


# Codes of SourceError: each says what went wrong in a way a user can act on.
MODEL_UNAVAILABLE: Final = "MODEL_UNAVAILABLE"
"""The runtime cannot be reached (not running, wrong URL)."""
MODEL_NOT_FOUND: Final = "MODEL_NOT_FOUND"
"""The runtime answers but does not have the model."""
MODEL_HTTP_ERROR: Final = "MODEL_HTTP_ERROR"
"""The runtime answered with an HTTP error status."""
MODEL_PROTOCOL_ERROR: Final = "MODEL_PROTOCOL_ERROR"
"""The runtime sent something that is not its documented streaming format."""
MODEL_STREAM_DROPPED: Final = "MODEL_STREAM_DROPPED"
"""The stream ended before the runtime said it was done."""
MODEL_TIMEOUT: Final = "MODEL_TIMEOUT"
"""No token within the stall timeout."""


class SourceError(Exception):
    """A runtime failure: ``code`` (one of the MODEL_* constants), what happened, what to do."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return with_hint(self.message, self.hint)


def with_hint(message: str, hint: str) -> str:
    """What happened and what to do, as two sentences: "It failed. Check the runtime."

    Both parts are written lower-case and without a final stop, so they can also be quoted
    inside another sentence; joined, they must not run together (issue 23).
    """
    message, hint = message.strip(), hint.strip()
    if not hint:
        return message
    if not message:
        return hint
    if message[-1] not in ".!?":
        message += "."
    if hint[-1] not in ".!?":
        hint += "."
    return f"{message} {hint[0].upper()}{hint[1:]}"


class ModelSource(Protocol):
    """A model runtime that turns a prompt into a stream of tokens."""

    @property
    def name(self) -> str:
        """The runtime's own model name (e.g. ``demo`` or ``qwen3:0.6b``)."""
        ...

    @property
    def kind(self) -> str:
        """Which runtime serves it: ``demo``, ``ollama`` or ``openai``."""
        ...

    def generate(self, prompt: str, *, max_tokens: int | None = None) -> AsyncIterator[Token]:
        """Stream the answer to ``prompt``; the iterator ends when generation ends.

        ``max_tokens`` asks the runtime to stop after that many tokens (the engine also
        stops reading there, so a source may omit the parameter). Raises
        :class:`SourceError` for any runtime failure.
        """
        ...

    async def check(self) -> None:
        """Return when the runtime is up and has the model; raise SourceError otherwise."""
        ...

    async def preload(self) -> None:
        """Ask the runtime to load the model now rather than at the first prompt."""
        ...

    async def aclose(self) -> None:
        """Release the source's connections."""
        ...
