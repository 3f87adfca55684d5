"""The 60 Hz frame clock on virtual time, and the Decipher's frames driven by explicit times."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Iterator

import jsonschema
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.paths import PUBLISHED_SCHEMA
from wirthforge_trio.contract.codec import encode
from wirthforge_trio.contract.events import (
    FRAME_BUDGET_MS,
    MODEL_ID_PATTERN,
    EnergyField,
    EnergyUpdate,
    EnergyUpdatePayload,
    ErrorEvent,
    ErrorPayload,
    Event,
    InterferenceEvent,
    ResonanceEvent,
    TokenStream,
)
from wirthforge_trio.engine.clock import MAX_LEAD_NS, FrameClock
from wirthforge_trio.engine.decipher import (
    REST_INTENSITY,
    Decipher,
    FrameOutput,
    Retention,
    Session,
    energy_update,
    model_id_for,
)
from wirthforge_trio.engine.energy import PROFILES
from wirthforge_trio.engine.rest_text import RestFrameText
from wirthforge_trio.sources.base import SourceError, Token

PERIOD = 1 / 60


@pytest.fixture(scope="module")
def published() -> jsonschema.Draft7Validator:
    if not PUBLISHED_SCHEMA.exists():
        pytest.skip(f"published contract not found at {PUBLISHED_SCHEMA}")
    return jsonschema.Draft7Validator(json.loads(PUBLISHED_SCHEMA.read_text(encoding="utf-8")))


# -- the frame clock --------------------------------------------------------------------------


async def run_clock(
    clock: FrameClock, seconds: float, on_tick: Callable[[int, float], None] | None = None
) -> tuple[float, list[tuple[int, float]]]:
    """Run ``clock`` for ``seconds`` of (virtual) time; return its start and its ticks."""
    ticks: list[tuple[int, float]] = []

    def record(n: int, now: float) -> None:
        ticks.append((n, now))
        if on_tick is not None:
            on_tick(n, now)

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(clock.run, record)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return start, ticks


async def test_ticks_60_times_a_second_without_drift(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = FrameClock()
    start, ticks = await run_clock(clock, 10.0)
    assert 599 <= len(ticks) <= 601
    assert clock.ticks == len(ticks)
    assert clock.skipped == 0
    numbers = [n for n, _ in ticks]
    assert numbers == list(range(len(ticks)))  # strictly increasing, none skipped
    assert ticks[0] == (0, pytest.approx(start, abs=1e-9))
    for n, now in ticks:
        assert now == pytest.approx(start + n / 60, abs=1e-6)
    assert clock.frame_number == numbers[-1]
    assert clock.measured_rate == pytest.approx(60.0, rel=1e-3)


async def test_work_inside_a_tick_does_not_accumulate_drift(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = FrameClock()

    def busy(n: int, now: float) -> None:
        autojump_clock.jump(0.004)  # each tick costs 4 ms of the 16.7 ms budget

    start, ticks = await run_clock(clock, 10.0 - PERIOD / 2, busy)
    assert len(ticks) == 600
    assert clock.skipped == 0
    assert [n for n, _ in ticks] == list(range(600))
    for n, now in ticks:
        assert abs(now - (start + n / 60)) < 1e-6


async def test_frame_600_is_exactly_ten_seconds_after_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = FrameClock()
    start, ticks = await run_clock(clock, 10.1)
    times = dict(ticks)
    assert abs(times[600] - (start + 10.0)) < 1e-6
    assert abs(ticks[599][1] - (start + 599 / 60)) < 1e-6


async def test_measured_rate_is_zero_before_two_ticks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = FrameClock()
    assert clock.measured_rate == 0.0
    assert clock.frame_number == -1
    _, ticks = await run_clock(clock, PERIOD / 2)
    assert len(ticks) == 1
    assert clock.measured_rate == 0.0


async def test_a_custom_rate_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    clock = FrameClock(rate=30)
    start, ticks = await run_clock(clock, 2.0 - 1 / 60)
    assert len(ticks) == 60
    assert ticks[-1][1] == pytest.approx(start + 59 / 30, abs=1e-6)
    assert clock.measured_rate == pytest.approx(30.0, rel=1e-3)


async def test_a_slow_tick_skips_frames_and_numbers_never_decrease(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = FrameClock()
    slow_ticks = []

    def slow_sometimes(n: int, now: float) -> None:
        if len(slow_ticks) < 20 and n % 10 == 5:
            slow_ticks.append(n)
            autojump_clock.jump(0.055)  # the callback "takes" 55 ms: over three periods

    start, ticks = await run_clock(clock, 3.0, slow_sometimes)
    numbers = [n for n, _ in ticks]
    assert all(b > a for a, b in itertools.pairwise(numbers))
    assert slow_ticks
    # each slow tick overran by 2.3 periods: the two frames that fell due meanwhile are skipped
    assert clock.skipped == 2 * len(slow_ticks)
    assert clock.ticks == len(ticks)
    assert clock.ticks + clock.skipped == numbers[-1] + 1  # every number ticked or skipped
    for n, now in ticks:
        # a frame's number says how much time has passed: never early, never a stale one
        assert start + n * PERIOD - 1e-9 <= now < start + (n + 1) * PERIOD
    after_slow = [numbers[numbers.index(n) + 1] - n for n in slow_ticks if n != numbers[-1]]
    assert set(after_slow) == {3}


async def test_cancelling_stops_the_clock(autojump_clock: trio.testing.MockClock) -> None:
    clock = FrameClock()
    _, ticks = await run_clock(clock, 1.0)
    count = clock.ticks
    await trio.sleep(1.0)
    assert clock.ticks == count == len(ticks)


async def test_on_the_real_clock_frames_are_ready_early_and_never_sent_before_due() -> None:
    """The clock learns to wake before a frame is due; hold_until_due still returns only once
    it is due (on CLOCK_MONOTONIC, where the benchmark measures), and never spins long."""
    clock = FrameClock()
    released: list[tuple[int, int, int]] = []

    def tick(n: int, now: float) -> None:
        before = time.monotonic_ns()
        clock.hold_until_due()
        released.append((n, before, time.monotonic_ns()))

    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run, tick)
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    origin = clock.origin_monotonic_ns
    assert origin is not None and len(released) >= 60
    for n, _, sent in released:
        assert sent >= origin + round(n * PERIOD * 1e9), f"frame {n} released before it was due"
    assert 0 < clock.lead_ns <= MAX_LEAD_NS
    # (a margin for the test being descheduled mid-spin on a busy machine)
    assert max(after - before for _, before, after in released) <= MAX_LEAD_NS + 5_000_000
    # with the lead learned, the frames of the last half second were ready before they were due
    late = [n for n, before, _ in released[-30:] if before > origin + round(n * PERIOD * 1e9)]
    assert len(late) < 30


async def test_the_scheduled_frame_runs_ahead_of_the_last_sent_while_a_tick_is_late() -> None:
    """A process stopped mid-tick (a busy machine, SIGSTOP) has sent frame n, but time has
    moved on: the broker stamps what it writes with the frame due now (decisions.md)."""
    clock = FrameClock()
    seen: list[tuple[int, int, int]] = []

    def tick(n: int, now: float) -> None:
        if len(seen) == 5:
            time.sleep(0.1)  # six frames' time without a tick (blocking, as a pause is)
            seen.append((n, clock.frame_number, clock.scheduled_frame()))
        elif len(seen) < 5:
            seen.append((n, clock.frame_number, clock.scheduled_frame()))

    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run, tick)
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    # on time, the schedule is at the frame being sent (a descheduled test: one more)
    assert all(sent == n <= scheduled <= n + 1 for n, sent, scheduled in seen[:5]), seen
    n, sent, scheduled = seen[5]
    assert sent == n and scheduled >= n + 5, "the schedule went on while the tick was stopped"


# -- the Decipher -------------------------------------------------------------------------------


def decipher(*models: str, default: str = "demo") -> Decipher:
    return Decipher(list(models or ("demo",)), PROFILES["default"], default)


def streams(out: FrameOutput) -> list[TokenStream]:
    return [e for e in out.lossless_events if isinstance(e, TokenStream)]


def updates(out: FrameOutput) -> list[EnergyUpdate]:
    return [e for e in out.frame_events if isinstance(e, EnergyUpdate)]


def fields(out: FrameOutput) -> list[EnergyField]:
    return [e for e in out.frame_events if isinstance(e, EnergyField)]


def feed(d: Decipher, session: Session, texts: list[str], at: float, gap: float = 0.05) -> None:
    for i, text in enumerate(texts):
        d.on_token(session, Token(text=text, at=at + i * gap))


def test_model_id_for_maps_runtime_names_to_stable_contract_ids() -> None:
    pattern = re.compile(MODEL_ID_PATTERN)
    for name in ["qwen3:0.6b", "llama3.2:3b-instruct-q4_K_M", "demo", "a/b c", "", "漢字"]:
        mapped = model_id_for(name)
        assert pattern.match(mapped), (name, mapped)
        assert model_id_for(name) == mapped
    assert model_id_for("qwen3:0.6b") == model_id_for("qwen3:0.6b")
    assert model_id_for("demo") == "demo"
    assert model_id_for("qwen3:0.6b") != model_id_for("qwen3:1.7b")


def test_default_model_must_be_known() -> None:
    with pytest.raises(ValueError, match="ghost"):
        Decipher(["demo"], PROFILES["default"], "ghost")


def test_idle_frame_is_one_energy_update_for_the_default_model() -> None:
    d = decipher("demo", "alt")
    for frame in range(3):
        out = d.tick(frame, frame * PERIOD)
        assert out.frame_number == frame
        assert out.lossless_events == ()
        assert fields(out) == []
        (update,) = out.frame_events
        assert isinstance(update, EnergyUpdate)
        assert update.frame_number == frame
        assert update.payload.model_id == "demo"
        assert update.payload.tokens_generated == 0
        assert update.payload.delta_energy == 0.0
        assert update.payload.total_energy == 0.0


def test_each_tick_sends_the_tokens_since_the_previous_tick_per_session() -> None:
    d = decipher()
    a = d.start_session("demo", 0.0)
    b = d.start_session("demo", 0.0)
    assert a.id != b.id
    feed(d, a, ["Light", " is"], 0.01, gap=0.002)
    feed(d, b, ["Energy"], 0.012)
    out = d.tick(1, PERIOD)
    by_session = {s.payload.session_id: s for s in streams(out)}
    assert set(by_session) == {a.id, b.id}
    assert by_session[a.id].payload.tokens == ("Light", " is")
    assert by_session[a.id].payload.energy_cost == pytest.approx(0.2)
    assert by_session[a.id].payload.is_complete is False
    assert by_session[a.id].payload.model_id == "demo"
    assert by_session[b.id].payload.tokens == ("Energy",)
    assert by_session[b.id].payload.energy_cost == pytest.approx(0.1)

    feed(d, a, [" energy", ".", " More"], 0.02, gap=0.001)
    out = d.tick(2, 2 * PERIOD)
    (only,) = streams(out)  # b had nothing new: no empty batch for it
    assert only.payload.session_id == a.id
    assert only.payload.tokens == (" energy", ".", " More")
    assert only.payload.energy_cost == pytest.approx(0.3)

    assert streams(d.tick(3, 3 * PERIOD)) == []
    assert a.text == "Light is energy. More"


def test_end_session_sends_is_complete_then_nothing_more_for_that_session() -> None:
    d = decipher()
    s = d.start_session("demo", 0.0)
    other = d.start_session("demo", 0.0)
    feed(d, s, ["a", "b"], 0.005, gap=0.001)
    d.tick(1, PERIOD)
    feed(d, s, ["c"], 0.02)
    d.end_session(s, 0.021)
    feed(d, s, ["late"], 0.022)  # after the end: ignored
    out = d.tick(2, 2 * PERIOD)
    (final,) = [x for x in streams(out) if x.payload.session_id == s.id]
    assert final.payload.is_complete is True
    assert final.payload.tokens == ("c",)
    assert final.payload.energy_cost == pytest.approx(0.1)
    assert s.text == "abc"
    assert d.live_sessions == 1
    feed(d, other, ["x"], 0.04)
    for frame in range(3, 10):
        out = d.tick(frame, frame * PERIOD)
        assert all(x.payload.session_id != s.id for x in streams(out))
    # ending twice does not send a second completion
    d.end_session(s, 0.2)
    assert all(x.payload.session_id != s.id for x in streams(d.tick(10, 10 * PERIOD)))


def test_a_session_ended_without_tokens_still_completes() -> None:
    d = decipher()
    s = d.start_session("demo", 0.0)
    assert streams(d.tick(1, PERIOD)) == []
    d.end_session(s, 0.02)
    (final,) = streams(d.tick(2, 2 * PERIOD))
    assert final.payload.tokens == ()
    assert final.payload.is_complete is True
    assert final.payload.energy_cost == 0.0


def test_energy_update_per_active_model_with_cumulative_energy() -> None:
    d = decipher("demo", "alt")
    s = d.start_session("demo", 0.0)
    t = d.start_session("alt", 0.0)
    feed(d, s, ["1", "2", "3"], 0.001, gap=0.003)
    out = d.tick(1, PERIOD)
    by_model = {u.payload.model_id: u for u in updates(out)}
    # alt has an open stream, so it is shown; two visible models add the council's row
    assert set(by_model) == {"demo", "alt", "council"}
    assert by_model["council"].payload.tokens_generated == 3
    assert by_model["council"].payload.total_energy == pytest.approx(0.3)
    assert by_model["demo"].payload.tokens_generated == 3
    assert by_model["demo"].payload.delta_energy == pytest.approx(0.3)
    assert by_model["demo"].payload.total_energy == pytest.approx(0.3)
    assert by_model["alt"].payload.tokens_generated == 0
    assert by_model["alt"].payload.delta_energy == 0.0
    assert all(u.frame_number == 1 for u in updates(out))

    feed(d, s, ["4", "5"], 0.02, gap=0.003)
    feed(d, t, ["x"], 0.025)
    out = d.tick(2, 2 * PERIOD)
    by_model = {u.payload.model_id: u for u in updates(out)}
    assert by_model["demo"].payload.tokens_generated == 2
    assert by_model["demo"].payload.delta_energy == pytest.approx(0.2)
    assert by_model["demo"].payload.total_energy == pytest.approx(0.5)
    assert by_model["alt"].payload.tokens_generated == 1
    assert by_model["alt"].payload.delta_energy == pytest.approx(0.1)
    assert by_model["alt"].payload.total_energy == pytest.approx(0.1)
    assert by_model["council"].payload.tokens_generated == 3
    assert by_model["council"].payload.total_energy == pytest.approx(0.6)

    out = d.tick(3, 3 * PERIOD)
    by_model = {u.payload.model_id: u for u in updates(out)}
    assert by_model["demo"].payload.tokens_generated == 0
    assert by_model["demo"].payload.delta_energy == 0.0
    assert by_model["demo"].payload.total_energy == pytest.approx(0.5)
    assert t.model_id == "alt"


def test_processing_time_stays_within_the_frame_budget() -> None:
    d = decipher("demo", "alt")
    s = d.start_session("demo", 0.0)
    for frame in range(1, 120):
        feed(d, s, ["t"], frame * PERIOD - 0.001)
        out = d.tick(frame, frame * PERIOD)
        assert out.frame_events
        for update in updates(out):
            assert 0.0 <= update.payload.processing_time <= FRAME_BUDGET_MS
        assert out.processing_ms >= 0.0


def scenario(d: Decipher) -> Iterator[tuple[int, FrameOutput]]:
    """A session writing 20 tokens/s for a second, a stall, then the end and the decay."""
    s = d.start_session("demo", 0.0)
    t = 0.0
    for frame in range(1, 240):
        now = frame * PERIOD
        while t + 0.05 <= now and t < 1.0:
            t += 0.05
            d.on_token(s, Token(text=f" w{frame}", at=t))
        if frame == 80:
            d.end_session(s, now)
        yield frame, d.tick(frame, now)


def test_energy_field_only_when_intensity_moves_by_a_hundredth() -> None:
    d = decipher()
    last_sent: float | None = None
    sent = silent = 0
    for frame, out in scenario(d):
        intensity = d.energies["demo"].intensity
        emitted = fields(out)
        if emitted:
            (field,) = emitted
            assert field.payload.intensity == pytest.approx(intensity, abs=1e-4)
            assert field.payload.model_id == "demo"
            assert field.frame_number == frame
            assert field.payload.coordinates
            if last_sent is not None:
                assert abs(intensity - last_sent) >= 0.01
            last_sent = intensity
            sent += 1
        else:
            assert last_sent is not None
            assert abs(intensity - last_sent) < 0.01
            silent += 1
    assert sent > 10
    assert silent > 10


def test_a_fading_model_gets_a_last_field_at_zero_then_silence() -> None:
    d = decipher()
    emitted: list[tuple[int, float]] = []
    for frame, out in scenario(d):
        emitted += [(frame, f.payload.intensity) for f in fields(out)]
    for frame in range(240, 60 * 20):  # 20 s: the decay takes E far below 0.001
        emitted += [(frame, f.payload.intensity) for f in fields(d.tick(frame, frame * PERIOD))]
    last_frame, last_intensity = emitted[-1]
    assert last_intensity == 0.0, "the last field must bring the light to zero"
    assert emitted[-2][1] > 0.0
    assert last_frame < 60 * 20 - 1, "and after it, no more fields at idle"


def test_end_session_with_an_error_sends_a_model_error() -> None:
    d = decipher()
    s = d.start_session("demo", 0.0)
    feed(d, s, ["par"], 0.005)
    d.end_session(s, 0.01, SourceError("MODEL_ERROR", "runtime went away"))
    out = d.tick(1, PERIOD)
    (final,) = streams(out)
    assert final.payload.is_complete is True
    assert final.payload.tokens == ("par",)
    (error,) = [e for e in out.lossless_events if isinstance(e, ErrorEvent)]
    assert error.payload.component == "model"
    assert error.payload.code == "MODEL_ERROR"
    assert error.payload.severity == "error"
    assert "runtime went away" in error.payload.message
    # The error first: a client that stops reading at isComplete has learnt why (issue 23, B6).
    assert out.lossless_events.index(error) < out.lossless_events.index(final)
    later = d.tick(2, 2 * PERIOD)
    assert not [e for e in later.lossless_events if isinstance(e, ErrorEvent)]


def test_a_very_long_error_is_cut_to_the_contract_limit() -> None:
    d = decipher()
    s = d.start_session("demo", 0.0)
    d.end_session(s, 0.01, SourceError("MODEL_ERROR", "x" * 5000))
    (error,) = [e for e in d.tick(1, PERIOD).lossless_events if isinstance(e, ErrorEvent)]
    assert len(error.payload.message) <= 1000


def test_every_decipher_event_validates_against_published_schema(
    published: jsonschema.Draft7Validator,
) -> None:
    d = decipher("demo", "qwen3-0_6b")
    events: list[Event] = []
    for _, out in scenario(d):
        events.extend(out.frame_events)
        events.extend(out.lossless_events)
    s = d.start_session("qwen3-0_6b", 4.0)
    feed(d, s, ["é", "漢", '"'], 4.01, gap=0.001)
    d.end_session(s, 4.02, SourceError("MODEL_ERROR", "boom"))
    out = d.tick(300, 4.03)
    events.extend(out.frame_events + out.lossless_events)
    kinds = {type(e) for e in events}
    assert {EnergyUpdate, EnergyField, TokenStream, ErrorEvent} <= kinds
    frame_numbers = []
    for event in events:
        message = json.loads(encode(event))
        errors = [e.message for e in published.iter_errors(message)]
        assert errors == [], message
        if "frameNumber" in message:
            frame_numbers.append(message["frameNumber"])
    assert frame_numbers == sorted(frame_numbers)


def _mask(text: str) -> str:
    """What differs between two runs of the same inputs masked: wall-clock milliseconds, the
    tick's own processing time, random session ids."""
    text = re.sub(r'"timestamp":\d+', '"timestamp":T', text)
    text = re.sub(r'"processingTime":[0-9.e-]+', '"processingTime":P', text)
    return re.sub(r"s-[0-9a-f]{16}", "s-ID", text)


def _wire(out: FrameOutput) -> tuple[list[str], list[str]]:
    """The tick's messages as sent, masked (:func:`_mask`)."""
    return [_mask(encode(e)) for e in out.frame_events], [
        _mask(encode(e)) for e in out.lossless_events
    ]


def _wire_as_served(d: Decipher, frame: int, now: float) -> tuple[list[str], list[str]]:
    """The tick's messages as the engine has them sent: the frame at rest as text when it
    is one (:meth:`Decipher.tick_as_text`), else :meth:`Decipher.tick`'s events."""
    at_rest = d.tick_as_text(frame, now)
    if at_rest is None:
        return _wire(d.tick(frame, now))
    channel, models, text = at_rest
    event = json.loads(text)
    assert (channel, models) == (event["channel"], (event["payload"]["modelId"],))
    assert event["frameNumber"] == frame and 0 <= event["payload"]["processingTime"] <= 16.67
    return [_mask(text)], []


def test_frames_at_rest_take_the_short_path_and_say_exactly_what_the_long_one_would() -> None:
    """Three Deciphers fed the same inputs, one without the short path at rest, one asked for
    the frame at rest as text first, as the engine does: idle, a council of two models, the
    end and a long decay, an error and an embedder's frame event at rest, sessions ageing out
    of retention. Every frame and every lossless event is the same."""
    keep = Retention(sessions=64, events=1000, seconds=20.0)
    short = Decipher(["demo", "alt"], PROFILES["default"], "demo", retention=keep)
    long = Decipher(["demo", "alt"], PROFILES["default"], "demo", retention=keep)
    served = Decipher(["demo", "alt"], PROFILES["default"], "demo", retention=keep)
    long.rest_enabled = False
    sessions: dict[int, list[Session]] = {0: [], 1: [], 2: []}
    rest_by_frame: list[bool] = []
    extra = EnergyUpdate(
        timestamp=1,
        frame_number=0,
        payload=EnergyUpdatePayload(
            total_energy=1.0,
            delta_energy=0.0,
            tokens_generated=0,
            processing_time=0.0,
            model_id="embedder",
        ),
    )
    for frame in range(1, 60 * 50):
        now = frame * PERIOD
        for i, d in enumerate((short, long, served)):
            if frame == 30:
                sessions[i] = [d.start_session("demo", now), d.start_session("alt", now)]
                d.council_started(2)
            if 30 < frame <= 150 and frame % 3 == 0:
                for s in sessions[i]:
                    d.on_token(s, Token(text=f" w{frame}", at=now - 0.001))
            if frame == 150:
                d.end_session(sessions[i][0], now)
                d.end_session(sessions[i][1], now, SourceError("MODEL_ERROR", "boom"))
            if frame == 2000:
                d.report(model_error_event())
            if frame in (2200, 2201):
                d.report_frame_event(extra)
        before = short.rest_frames
        a, b = short.tick(frame, now), long.tick(frame, now)
        assert _wire(a) == _wire(b) == _wire_as_served(served, frame, now), frame
        # What /status and a resume's snapshot show (E to at most 6 decimals) agrees too.
        shown = [(str(e.state), round(e.intensity, 6)) for e in short.energies.values()]
        assert shown == [(str(e.state), round(e.intensity, 6)) for e in long.energies.values()]
        rest_by_frame.append(short.rest_frames > before)
    assert long.rest_frames == 0 and served.rest_frames == short.rest_frames
    assert all(rest_by_frame[1:29])  # idle from the start
    assert not any(rest_by_frame[29:151])  # sessions live
    dark = next(f for f in range(151, len(rest_by_frame)) if rest_by_frame[f])
    assert all(e.intensity < REST_INTENSITY for e in long.energies.values())
    assert 60 * 5 < dark - 150 < 60 * 30  # after the decay, not before
    assert not rest_by_frame[1999] and not rest_by_frame[2199] and not rest_by_frame[2200]
    assert all(rest_by_frame[2201:])
    # Retention by age went on at rest: both sessions aged out of both Deciphers.
    assert list(short.sessions) == list(long.sessions) == list(served.sessions) == []
    assert len(short.history) == len(long.history) == len(served.history) > 0


@given(
    model_id=st.text(min_size=1, max_size=40),
    total=st.floats(min_value=0, max_value=1e12, allow_nan=False),
    timestamp=st.integers(min_value=0, max_value=2**53),
    frame_number=st.integers(min_value=0, max_value=2**53),
    processing_ns=st.integers(min_value=0, max_value=100_000_000),
)
@settings(max_examples=300, deadline=None)
def test_the_frame_at_rest_as_text_is_the_codecs_text(
    model_id: str, total: float, timestamp: int, frame_number: int, processing_ns: int
) -> None:
    """Filled in, the text at rest is exactly what the codec makes of the energy_update
    with the processing time cut to 0.1 µs and to the frame budget (a model id that holds a
    placeholder's digits is refused, and tick() builds the frame)."""
    try:
        text = RestFrameText(model_id, total)
    except ValueError:
        return
    processing_ms = min(processing_ns // 100 / 10_000, FRAME_BUDGET_MS)
    expected = encode(energy_update(model_id, total, 0, processing_ms, frame_number, timestamp))
    assert text.render(timestamp, frame_number, processing_ns) == expected
    assert (text.channel, text.model_ids) == ("energy", (model_id,))


def test_every_processing_time_at_rest_is_written_as_the_codec_writes_it() -> None:
    """Every processing time a frame at rest can carry, 0 to 16.67 ms in steps of 0.1 µs,
    and beyond the budget: the text's number is the codec's."""
    text = RestFrameText("demo", 12.5)
    for units in range(0, 166_700 + 50):
        processing_ms = min(units / 10_000, FRAME_BUDGET_MS)
        expected = encode(energy_update("demo", 12.5, 0, processing_ms, 7, 1_700_000_000_000))
        assert text.render(1_700_000_000_000, 7, units * 100 + units % 100) == expected


def model_error_event() -> ErrorEvent:
    return ErrorEvent(
        timestamp=1,
        payload=ErrorPayload(
            severity="warning", code="MODEL_ERROR", message="at rest", component="model"
        ),
    )


def test_council_analysis_is_shed_first_and_tokens_are_not() -> None:
    """Two models generating in step: interference events appear, unless the frame sheds."""

    def run(shed: bool) -> tuple[int, int]:
        d = decipher("demo", "alt")
        a, b = d.start_session("demo", 0.0), d.start_session("alt", 0.0)
        council_events = token_batches = 0
        for frame in range(1, 120):
            now = frame * PERIOD
            if frame % 3 == 0:
                d.on_token(a, Token(text=" a", at=now - 0.001))
                d.on_token(b, Token(text=" b", at=now - 0.001))
            out = d.tick(frame, now, shed_analysis=shed)
            council_events += sum(
                isinstance(e, InterferenceEvent | ResonanceEvent) for e in out.lossless_events
            )
            token_batches += len(streams(out))
        return council_events, token_batches

    analysed, batches = run(shed=False)
    shed, batches_when_shed = run(shed=True)
    assert analysed > 0
    assert shed == 0
    assert batches_when_shed == batches > 0
