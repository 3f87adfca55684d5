"""The running engine with in-process sources: timeouts, cancel, lifecycle, shedding."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.support.engine import ScriptedSource, engine
from tests.support.waits import eventually
from wirthforge_trio.contract.events import ErrorEvent, ModelStatus, TokenStream
from wirthforge_trio.engine.runtime import UnknownModelError, unique_model_ids
from wirthforge_trio.sources.base import MODEL_UNAVAILABLE


def test_model_ids_are_unique_and_council_is_reserved() -> None:
    ids = unique_model_ids(
        [ScriptedSource("qwen3:0.6b"), ScriptedSource("qwen3:0.6b"), ScriptedSource("council")]
    )
    assert ids == ["qwen3-0_6b", "qwen3-0_6b-2", "council-2"]


async def test_a_stalled_source_times_out_and_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stalling = ScriptedSource("slow", stall_after=2)
    eng, rec = engine(stalling, stall_timeout=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        (session,) = eng.submit("p")
        await eventually(lambda: session.completion_sent and stalling.closed, 3)
        eng.stop()
    assert session.status == "failed"
    assert session.tokens == ["a", "b"]
    assert stalling.closed, "the source's stream was closed"
    (error,) = [e for e in rec.of(ErrorEvent) if e.payload.code == "MODEL_TIMEOUT"]
    assert "0.2 s" in error.payload.message
    final = [e for e in rec.of(TokenStream) if e.payload.is_complete]
    assert len(final) == 1


async def test_cancel_ends_the_session_with_is_complete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endless = ScriptedSource("endless", tokens=["x"] * 1000, gap=0.01)
    eng, rec = engine(endless)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        (session,) = eng.submit("p")
        await eventually(lambda: len(session.tokens) >= 5)
        eng.cancel(session.id)
        await eventually(lambda: session.completion_sent, 2)
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


async def test_an_unavailable_model_is_announced_once_and_rechecked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = ScriptedSource("flaky", down=True)
    eng, rec = engine(ScriptedSource("demo"), flaky, check_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await trio.sleep(0.3)  # the scenario: six re-checks while it is down (virtual time)
        assert eng.models["flaky"].status == "unavailable"
        flaky.down = False
        await eventually(lambda: eng.models["flaky"].status == "ready", 2)
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
        # Real time: the slow frames really overrun (Recorder.publish_frame blocks the thread).
        await eventually(lambda: rec.frames > max(rec.slow_frames) + 3)
        eng.stop()
    assert eng.overruns >= 1
    # Every over-budget frame makes the next one shed its analysis (skipped frames too).
    assert eng.analyses_shed >= eng.overruns
