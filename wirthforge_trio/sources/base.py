"""The one interface every model source implements: an async stream of timed tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import attrs


@attrs.frozen
class Token:
    """One output token as the runtime produced it.

    ``at`` is the Trio clock (``trio.current_time()``, seconds) when the token was produced,
    so the energy model measures real inter-token times. ``top_k`` holds the probabilities
    of the runtime's top-K candidates for this position when it reports them.
    """

    text: str
    at: float
    top_k: tuple[float, ...] | None = None


class ModelSource(Protocol):
    """A model runtime that turns a prompt into a stream of tokens."""

    @property
    def name(self) -> str:
        """The runtime's own model name (e.g. ``demo`` or ``qwen3:0.6b``)."""
        ...

    def generate(self, prompt: str) -> AsyncIterator[Token]:
        """Stream the answer to ``prompt``; the iterator ends when generation ends."""
        ...
