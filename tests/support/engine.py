"""The engine with scripted in-process sources, and a recorder in place of the hub that
collects what the engine publishes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import attrs
import trio

from wirthforge_trio.contract.events import Event, FrameEvent
from wirthforge_trio.engine.energy import PROFILES
from wirthforge_trio.engine.runtime import Engine
from wirthforge_trio.sources.base import MODEL_UNAVAILABLE, SourceError, Token


@attrs.define
class ScriptedSource:
    """Yields ``tokens`` with ``gap`` seconds between them, then stalls forever if told."""

    name: str
    tokens: list[str] = attrs.field(factory=lambda: ["a", "b", "c"])
    gap: float = 0.01
    stall_after: int | None = None
    down: bool = False
    closed: bool = False
    kind: str = "demo"

    async def generate(self, prompt: str) -> AsyncIterator[Token]:
        try:
            for i, text in enumerate(self.tokens):
                if self.stall_after is not None and i >= self.stall_after:
                    await trio.sleep_forever()
                await trio.sleep(self.gap)
                yield Token(text=text, at=trio.current_time())
        finally:
            self.closed = True

    async def check(self) -> None:
        if self.down:
            raise SourceError(MODEL_UNAVAILABLE, "cannot connect", "start it")

    async def preload(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@attrs.define
class Recorder:
    events: list[Event] = attrs.field(factory=list)
    frames: int = 0
    slow_frames: set[int] = attrs.field(factory=set)

    def publish_frame(self, number: int, events: Iterable[FrameEvent]) -> None:
        self.frames += 1
        if number in self.slow_frames:
            time.sleep(0.03)  # a frame that runs over its 16.67 ms budget

    def publish_frame_text(self, number: int, message: tuple[str, tuple[str, ...], str]) -> None:
        self.publish_frame(number, ())

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def __len__(self) -> int:
        return 1

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def engine(*sources: ScriptedSource, **kwargs: Any) -> tuple[Engine, Recorder]:
    recorder = Recorder()
    return Engine(list(sources), recorder, PROFILES["default"], **kwargs), recorder
