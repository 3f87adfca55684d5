"""The running engine with in-process sources: timeouts, cancel, lifecycle, shedding."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs
import pytest
import trio

from wirthforge_trio.contract.events import ErrorEvent, Event, FrameEvent, ModelStatus, TokenStream
from wirthforge_trio.engine.energy import PROFILES
from wirthforge_trio.engine.runtime import Engine, UnknownModelError, unique_model_ids
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


async def until(condition: Callable[[], bool], seconds: float) -> None:
    """Poll engine state that offers no event of its own, within a deadline."""
    with trio.fail_after(seconds):
        while True:
            if condition():
                return
            await trio.sleep(0.02)


def engine(*sources: ScriptedSource, **kwargs: Any) -> tuple[Engine, Recorder]:
    recorder = Recorder()
    return Engine(list(sources), recorder, PROFILES["default"], **kwargs), recorder


def test_model_ids_are_unique_and_council_is_reserved() -> None:
    ids = unique_model_ids(
        [ScriptedSource("qwen3:0.6b"), ScriptedSource("qwen3:0.6b"), ScriptedSource("council")]
    )
    assert ids == ["qwen3-0_6b", "qwen3-0_6b-2", "council-2"]


async def test_a_stalled_source_times_out_and_is_closed() -> None:
    stalling = ScriptedSource("slow", stall_after=2)
    eng, rec = engine(stalling, stall_timeout=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        (session,) = eng.submit("p")
        await until(lambda: session.status != "streaming", 3)
        await trio.sleep(0.05)
        eng.stop()
    assert session.status == "failed"
    assert session.tokens == ["a", "b"]
    assert stalling.closed, "the source's stream was closed"
    (error,) = [e for e in rec.of(ErrorEvent) if e.payload.code == "MODEL_TIMEOUT"]
    assert "0.2 s" in error.payload.message
    final = [e for e in rec.of(TokenStream) if e.payload.is_complete]
    assert len(final) == 1


async def test_cancel_ends_the_session_with_is_complete() -> None:
    endless = ScriptedSource("endless", tokens=["x"] * 1000, gap=0.01)
    eng, rec = engine(endless)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        (session,) = eng.submit("p")
        await trio.sleep(0.1)
        eng.cancel(session.id)
        await until(lambda: session.completion_sent, 2)
        eng.stop()
    assert session.status == "cancelled"
    assert endless.closed
    assert 0 < len(session.tokens) < 1000
    assert [e.payload.is_complete for e in rec.of(TokenStream)][-1] is True
    assert not rec.of(ErrorEvent), "a cancel is not an error"


async def test_unknown_models_are_refused() -> None:
    eng, _ = engine(ScriptedSource("demo"))
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        with pytest.raises(UnknownModelError):
            eng.submit("p", ["nope"])
        eng.stop()


async def test_an_unavailable_model_is_announced_once_and_rechecked() -> None:
    flaky = ScriptedSource("flaky", down=True)
    eng, rec = engine(ScriptedSource("demo"), flaky, check_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await trio.sleep(0.3)  # several re-checks while it is down
        assert eng.models["flaky"].status == "unavailable"
        flaky.down = False
        await until(lambda: eng.models["flaky"].status == "ready", 2)
        eng.stop()
    errors = [e for e in rec.of(ErrorEvent) if e.payload.code == MODEL_UNAVAILABLE]
    assert len(errors) == 1, "one error_event per outage, not per re-check"
    statuses = [e.payload.status for e in rec.of(ModelStatus) if e.payload.model_id == "flaky"]
    assert statuses == ["unavailable", "ready"]


async def test_analysis_is_shed_after_an_over_budget_frame() -> None:
    eng, rec = engine(ScriptedSource("demo"))
    rec.slow_frames = {5, 6, 7}
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await trio.sleep(0.5)
        eng.stop()
    assert eng.overruns >= 1
    # Every over-budget frame makes the next one shed its analysis (skipped frames too).
    assert eng.analyses_shed >= eng.overruns
