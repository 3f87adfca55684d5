"""Council analysis against hand-computed numbers: DI, Pearson, interference and resonance."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import jsonschema
import pytest

from tests.support.paths import PUBLISHED_SCHEMA
from wirthforge_trio.contract import codec
from wirthforge_trio.contract.events import InterferenceEvent, ResonanceEvent
from wirthforge_trio.engine.council import (
    SAMPLE_WINDOW,
    CouncilAnalyzer,
    CouncilEvent,
    classify_resonance,
    ensemble_energy,
    pearson,
    text_coherence,
)
from wirthforge_trio.engine.decipher import Decipher
from wirthforge_trio.engine.energy import PROFILES, FlowState
from wirthforge_trio.sources.base import Token
from wirthforge_trio.sources.demo import DemoSource

WALL = 1_726_000_000_000
EVERY = 6
RISING = [0.1, 0.2, 0.3, 0.4, 0.5]
FALLING = [0.5, 0.4, 0.3, 0.2, 0.1]
# r(RISING, ZIGZAG) = 0 exactly: centred RISING is (-2,-1,0,1,2), centred ZIGZAG (0,-1,1,-1,0)*0.1.
ZIGZAG = [0.2, 0.1, 0.3, 0.1, 0.2]


@dataclass
class FakeEnergy:
    """The three things the analyzer reads of a model's energy."""

    intensity: float = 0.5
    tps: float = 0.0
    state: FlowState = FlowState.FLOWING


def tick(
    an: CouncilAnalyzer,
    sample: int,
    energies: dict[str, FakeEnergy],
    active: Sequence[str] | None = None,
) -> list[CouncilEvent]:
    """One sampling frame (frame number ``sample * 6``)."""
    frame = sample * EVERY
    return an.analyze(
        frame, frame / 60.0, WALL + frame, energies, list(energies) if active is None else active
    )


def run_series(
    an: CouncilAnalyzer, series: dict[str, Sequence[float]], start: int = 0, tps: float = 0.0
) -> list[list[CouncilEvent]]:
    """Feed one intensity per model per sampling frame; return each frame's events."""
    length = len(next(iter(series.values())))
    return [
        tick(an, start + i, {m: FakeEnergy(intensity=s[i], tps=tps) for m, s in series.items()})
        for i in range(length)
    ]


def interference(events: Sequence[CouncilEvent]) -> list[InterferenceEvent]:
    return [e for e in events if isinstance(e, InterferenceEvent)]


def resonance(events: Sequence[CouncilEvent]) -> list[ResonanceEvent]:
    return [e for e in events if isinstance(e, ResonanceEvent)]


def flat(frames: Sequence[Sequence[CouncilEvent]]) -> list[CouncilEvent]:
    return [e for events in frames for e in events]


def observe_gaps(an: CouncilAnalyzer, model: str, gaps: Sequence[float], t0: float = 0.0) -> None:
    t = t0
    an.observe_token(model, Token(text="x", at=t))
    for g in gaps:
        t += g
        an.observe_token(model, Token(text="x", at=t))


_validator: jsonschema.Draft7Validator | None = (
    jsonschema.Draft7Validator(json.loads(PUBLISHED_SCHEMA.read_text(encoding="utf-8")))
    if PUBLISHED_SCHEMA.exists()
    else None
)


E = TypeVar("E", bound=CouncilEvent)


def check(events: Sequence[E]) -> list[E]:
    """Validate every event's wire form against the published schema when it is present."""
    if _validator is not None:
        for event in events:
            message: dict[str, Any] = json.loads(codec.encode(event))
            errors = [e.message for e in _validator.iter_errors(message)]
            assert not errors, (errors, message)
    return list(events)


# -- Jensen-Shannon and DI ----------------------------------------------------------------


def test_pearson() -> None:
    assert pearson([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pearson(RISING, ZIGZAG) == pytest.approx(0.0, abs=1e-12)
    assert pearson([0.3] * 5, RISING) is None  # flat
    assert pearson(RISING, [0.7] * 5) is None
    assert pearson([1, 2], [2, 1]) is None  # fewer than 3 points
    # x = (1, 2, 3), y = (1, 3, 2): sxy = 1, sxx = syy = 2, r = 1/2.
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pearson([1, 2, 3], [1, 2])


def test_ensemble_energy() -> None:
    assert ensemble_energy([0.2, 0.4, 0.9]) == pytest.approx(0.5)  # equal weights: the mean
    assert ensemble_energy([0.2, 0.8], [0.25, 0.75]) == pytest.approx(0.65)
    assert ensemble_energy([0.9, 0.9], [1.0, 1.0]) == 1.0  # clamped
    assert ensemble_energy([]) == 0.0
    with pytest.raises(ValueError):
        ensemble_energy([0.5], [0.5, 0.5])
    with pytest.raises(ValueError):
        ensemble_energy([0.5], [-1.0])


# -- interference ------------------------------------------------------------------------


def test_samples_every_sixth_frame_and_needs_five_samples() -> None:
    an = CouncilAnalyzer()
    energies = {"b": FakeEnergy(0.3), "a": FakeEnergy(0.3)}
    emitted_at = []
    for frame in range(60):
        events = an.analyze(frame, frame / 60, WALL, energies, ["b", "a"])
        if events:
            emitted_at.append(frame)
            (event,) = check(events)
            assert isinstance(event, InterferenceEvent)
            assert event.frame_number == frame
            assert event.payload.models == ("a", "b")  # sorted
    assert emitted_at == [24]  # samples at 0, 6, 12, 18, 24; nothing changes after


def test_skipped_frames_do_not_stall_sampling() -> None:
    an = CouncilAnalyzer(sample_every=6)
    energies = {"a": FakeEnergy(0.3), "b": FakeEnergy(0.3)}
    frames = [0, 7, 13, 25, 31]  # every one at least 6 frames after the last sample
    results = [an.analyze(f, 0.0, WALL, energies, ["a", "b"]) for f in frames]
    assert [bool(r) for r in results] == [False, False, False, False, True]


def test_rising_together_is_constructive() -> None:
    an = CouncilAnalyzer()
    frames = run_series(an, {"a": RISING, "b": [x + 0.3 for x in RISING]})
    assert flat(frames[:4]) == []
    (event,) = check(interference(frames[4]))
    assert event.payload.pattern_type == "constructive"
    assert event.payload.intensity == pytest.approx(1.0)
    assert event.payload.coherence_score == pytest.approx(0.5)  # no text yet


def test_mirrored_is_destructive() -> None:
    an = CouncilAnalyzer()
    frames = run_series(an, {"a": RISING, "b": FALLING})
    (event,) = check(interference(frames[-1]))
    assert event.payload.pattern_type == "destructive"
    assert event.payload.intensity == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("b", "intensity"),
    # Third case by hand: centred RISING (-2, -1, 0, 1, 2) / 10, centred b
    # (-1.6, 0.4, -0.6, 1.4, 0.4) / 10: sxy = 5, sxx = 10, syy = 5.2 (x 1e-2), so
    # r = 5 / sqrt(52) = 0.6934, below 0.7.
    [(ZIGZAG, 0.0), ([0.4] * 5, 0.0), ([0.1, 0.3, 0.2, 0.4, 0.3], 5 / math.sqrt(52))],
    ids=["unrelated", "flat", "weakly-related"],
)
def test_unrelated_or_flat_is_neutral(b: list[float], intensity: float) -> None:
    an = CouncilAnalyzer()
    frames = run_series(an, {"a": RISING, "b": b})
    (event,) = check(interference(frames[-1]))
    assert event.payload.pattern_type == "neutral"
    assert event.payload.intensity == pytest.approx(intensity, abs=1e-6)


def test_same_state_emits_only_once() -> None:
    an = CouncilAnalyzer()
    frames = run_series(an, {"a": [0.3] * 5, "b": [0.6] * 5})
    assert len(interference(flat(frames))) == 1
    again = run_series(an, {"a": [0.3] * 10, "b": [0.6] * 10}, start=5)
    assert flat(again) == []


def test_steady_trend_emits_only_once() -> None:
    an = CouncilAnalyzer()
    a = [0.1 + 0.02 * i for i in range(15)]
    b = [0.8 - 0.03 * i for i in range(15)]
    frames = run_series(an, {"a": a, "b": b})
    events = interference(flat(frames))
    assert len(events) == 1
    assert events[0].payload.pattern_type == "destructive"
    assert frames[4] == events  # emitted at the fifth sample, then 10 quiet samples


def test_pattern_change_emits() -> None:
    an = CouncilAnalyzer()
    frames = run_series(an, {"a": RISING + RISING, "b": RISING + FALLING})
    events = check(interference(flat(frames)))
    assert events[0].payload.pattern_type == "constructive"
    assert events[-1].payload.pattern_type == "destructive"
    assert frames[-1] == [events[-1]]
    # Every event after the first is a real change from the one before it.
    for before, after in itertools.pairwise(events):
        p, q = before.payload, after.payload
        assert (
            p.pattern_type != q.pattern_type
            or abs(p.intensity - q.intensity) >= 0.1 - 1e-9
            or abs(p.coherence_score - q.coherence_score) >= 0.1 - 1e-9
        )


def test_coherence_moves_emit_only_past_threshold() -> None:
    an = CouncilAnalyzer()
    for model in ("a", "b"):
        an.observe_token(model, Token(text=SAID, at=0.0))
    (first,) = interference(flat(run_series(an, {"a": RISING, "b": RISING})))
    assert first.payload.coherence_score == 1.0

    # One different character among the 60 written since: a small move, nothing sent.
    an.observe_token("a", Token(text=SAID_TOO, at=0.1))
    an.observe_token("b", Token(text=SAID_TOO[:-1] + "!", at=0.1))
    assert an.coherence("a", "b") > 0.95
    assert run_series(an, {"a": [0.6], "b": [0.6]}, start=5) == [[]]

    # Then they write different sentences: coherence drops, the same pattern is re-sent.
    an.observe_token("a", Token(text=" The river bends west past the mill at dawn.", at=0.2))
    an.observe_token("b", Token(text=" Count every seed twice before you plant any.", at=0.2))
    (moved,) = check(flat(run_series(an, {"a": [0.7], "b": [0.7]}, start=6)))
    assert isinstance(moved, InterferenceEvent)
    assert moved.payload.pattern_type == "constructive"
    assert moved.payload.coherence_score <= 0.9
    assert moved.payload.coherence_score == pytest.approx(an.coherence("a", "b"), abs=1e-6)


# -- coherence on aligned text (issue 23, B3) ----------------------------------------------

SAID = "Light moves through the model as it writes each token in turn. "
SAID_TOO = "The lifeline glows while the words arrive, one frame at a time."


def test_text_coherence_hand_computed() -> None:
    assert text_coherence("hello world", "hello world") == 1.0
    # "ab"/"ba": no offset agrees, chance 1/2: kappa -1, clipped to 0.
    assert text_coherence("ab", "ba") == 0.0
    # "aab"/"abb": 2 of 3 agree, chance (2*1 + 1*2)/9 = 4/9: (2/3 - 4/9) / (5/9) = 0.4.
    assert text_coherence("aab", "abb") == pytest.approx(0.4)
    assert text_coherence("aaaa", "aaaa") == 1.0  # chance is 1: equal counts as 1
    assert text_coherence("aaaa", "bbbb") == 0.0
    assert text_coherence("", "abc") is None


def test_text_coherence_compares_aligned_offsets_only() -> None:
    # Only the offsets both texts reach count: the longer one's tail waits for the other.
    assert text_coherence("the cat", "the cat sat on the mat") == 1.0
    # Only the last ``window`` common offsets count: the texts agree now.
    assert text_coherence("x" * 300 + "abc", "y" * 300 + "abc", window=3) == 1.0
    whole = text_coherence("x" * 300 + "abc", "y" * 300 + "abc")
    assert whole is not None and whole < 0.05


def test_identical_streams_score_one_whatever_the_tokenizer() -> None:
    """Two greedy copies of one model write the same text: coherent, whichever token each
    model saw last (the old snapshot of the latest tokens scored such a pair 0)."""
    an = CouncilAnalyzer()
    text = SAID + SAID_TOO
    for i, word in enumerate(text.split(" ")):  # a: word by word
        an.observe_token("a", Token(text=(" " if i else "") + word, at=i * 0.05))
    for i in range(0, len(text), 3):  # b: three characters at a time, another rhythm
        an.observe_token("b", Token(text=text[i : i + 3], at=i * 0.02))
    assert an.coherence("a", "b") == 1.0
    an.observe_token("b", Token(text=" and more", at=5.0))  # b runs ahead: still 1
    assert an.coherence("a", "b") == 1.0


def test_unrelated_streams_score_about_zero() -> None:
    demo, sage = DemoSource(seed=0), DemoSource(seed=1)
    an = CouncilAnalyzer()
    an.observe_token("a", Token(text=demo.text_for("hi"), at=0.0))
    an.observe_token("b", Token(text=sage.text_for("hi"), at=0.0))
    assert an.coherence("a", "b") < 0.1
    assert an.coherence("a", "unknown") == 0.5
    an.observe_token("c", Token(text="", at=0.0))  # no text yet: no evidence either way
    assert an.coherence("a", "c") == 0.5


def test_three_models_give_three_stable_pairs() -> None:
    an = CouncilAnalyzer()
    frames = run_series(an, {"c": RISING, "a": RISING, "b": FALLING})
    events = check(interference(frames[-1]))
    assert [e.payload.models for e in events] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert [e.payload.pattern_type for e in events] == [
        "destructive",
        "constructive",
        "destructive",
    ]


def test_inactive_model_is_forgotten_and_pair_starts_afresh() -> None:
    an = CouncilAnalyzer()
    run_series(an, {"a": [0.3] * 5, "b": [0.6] * 5})
    # b pauses for one sample: its window and the pair's history go.
    assert tick(an, 5, {"a": FakeEnergy(0.3), "b": FakeEnergy(0.6)}, active=["a"]) == []
    frames = run_series(an, {"a": [0.3] * 5, "b": [0.6] * 5}, start=6)
    assert flat(frames[:4]) == []
    assert len(interference(frames[4])) == 1  # first analysis of the pair again


def test_forget_drops_pair_history() -> None:
    an = CouncilAnalyzer()
    run_series(an, {"a": [0.3] * 5, "b": [0.6] * 5})
    an.forget("b")
    frames = run_series(an, {"a": [0.3] * 5, "b": [0.6] * 5}, start=5)
    assert [len(f) for f in frames] == [0, 0, 0, 0, 1]


def test_a_single_model_has_no_pairs() -> None:
    an = CouncilAnalyzer()
    assert flat(run_series(an, {"solo": RISING}, tps=10.0)) == []


def test_sample_every_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CouncilAnalyzer(sample_every=0)


# -- resonance -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tps_a", "tps_b", "expected"),
    [
        (10.0, 10.0, ("fundamental", 10.0)),
        (10.0, 10.9, ("fundamental", 10.0)),
        (10.0, 20.0, ("harmonic", 10.0)),
        (20.0, 10.0, ("harmonic", 10.0)),
        (10.0, 21.5, ("harmonic", 10.0)),
        (10.0, 30.0, ("harmonic", 10.0)),
        (5.0, 20.0, ("harmonic", 5.0)),
        (10.0, 15.0, ("overtone", 5.0)),  # 3/2: slower / 2
        (9.0, 12.0, ("overtone", 3.0)),  # 4/3: slower / 3
        (8.0, 10.0, ("overtone", 2.0)),  # 5/4: slower / 4
        # 1.3 lies within 5 % of both 4/3 (2.5 %) and 5/4 (4 %): the nearer, 4/3, wins.
        (10.0, 13.0, ("overtone", 10.0 / 3.0)),
        (10.0, 11.5, None),
        (10.0, 17.0, None),
        (10.0, 25.0, None),
        (10.0, 50.0, None),
        (0.0, 10.0, None),
    ],
)
def test_classify_resonance(tps_a: float, tps_b: float, expected: tuple[str, float] | None) -> None:
    found = classify_resonance(tps_a, tps_b)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert found[0] == expected[0]
        assert found[1] == pytest.approx(expected[1])


def lock_ticks(
    an: CouncilAnalyzer,
    start: int,
    count: int,
    tps_b: float,
    *,
    state: FlowState = FlowState.FLOWING,
    intensities: tuple[float, float] = (0.5, 0.5),
) -> list[list[ResonanceEvent]]:
    out = []
    for i in range(count):
        energies = {
            "a": FakeEnergy(intensities[0], 10.0, state),
            "b": FakeEnergy(intensities[1], tps_b, state),
        }
        out.append(resonance(check(tick(an, start + i, energies))))
    return out


@pytest.mark.parametrize(
    ("tps_b", "kind", "frequency"),
    [(10.0, "fundamental", 10.0), (20.0, "harmonic", 10.0), (15.0, "overtone", 5.0)],
)
def test_lock_holds_three_samples_then_emits_once(
    tps_b: float, kind: str, frequency: float
) -> None:
    an = CouncilAnalyzer()
    frames = lock_ticks(an, 0, 12, tps_b, intensities=(0.4, 0.9))
    assert [len(f) for f in frames] == [0, 0, 1] + [0] * 9
    event = frames[2][0]
    assert event.frame_number == 2 * EVERY
    assert event.payload.resonance_type == kind
    assert event.payload.frequency == pytest.approx(frequency)
    assert event.payload.amplitude == pytest.approx(0.4)  # the smaller intensity
    assert event.payload.participants == ("a", "b")
    assert event.payload.phase is None  # no tokens seen, no phase


def test_no_lock_for_unrelated_cadences() -> None:
    an = CouncilAnalyzer()
    assert all(f == [] for f in lock_ticks(an, 0, 10, 17.0))
    assert all(f == [] for f in lock_ticks(an, 10, 10, 11.5))


def test_lock_needs_flowing_or_saturated_and_positive_tps() -> None:
    an = CouncilAnalyzer()
    assert all(f == [] for f in lock_ticks(an, 0, 6, 10.0, state=FlowState.STALLING))
    assert all(f == [] for f in lock_ticks(an, 6, 6, 0.0))
    saturated = lock_ticks(an, 12, 3, 10.0, state=FlowState.SATURATED)
    assert [len(f) for f in saturated] == [0, 0, 1]


def test_interrupted_lock_restarts_the_hold() -> None:
    an = CouncilAnalyzer()
    frames = lock_ticks(an, 0, 2, 10.0) + lock_ticks(an, 2, 1, 17.0) + lock_ticks(an, 3, 3, 10.0)
    assert [len(f) for f in frames] == [0, 0, 0, 0, 0, 1]


def test_lock_lost_and_regained_emits_again() -> None:
    an = CouncilAnalyzer()
    first = lock_ticks(an, 0, 4, 10.0)
    lost = lock_ticks(an, 4, 1, 17.0)
    regained = lock_ticks(an, 5, 4, 10.0)
    assert [len(f) for f in first + lost + regained] == [0, 0, 1, 0, 0, 0, 0, 1, 0]


def test_type_change_emits_the_new_type_after_its_hold() -> None:
    an = CouncilAnalyzer()
    frames = lock_ticks(an, 0, 3, 10.0) + lock_ticks(an, 3, 4, 20.0)
    kinds = [[e.payload.resonance_type for e in f] for f in frames]
    assert kinds == [[], [], ["fundamental"], [], [], ["harmonic"], []]


def test_phase_from_last_token_times() -> None:
    an = CouncilAnalyzer()
    an.observe_token("a", Token(text="x", at=1.00))
    an.observe_token("b", Token(text="x", at=1.03))
    frames = lock_ticks(an, 0, 3, 10.0)  # frequency 10 Hz: period 0.1 s
    (event,) = frames[2]
    # (1.00 - 1.03) mod 0.1 = 0.07 s = 0.7 of a period = 252 degrees.
    assert event.payload.phase == pytest.approx(252.0)


@pytest.mark.parametrize("offset", [0.0, 0.05, -0.05, 0.1, -0.1, 0.0999999999, 1e-15, -1e-15, 7.3])
def test_phase_always_in_range(offset: float) -> None:
    an = CouncilAnalyzer()
    an.observe_token("a", Token(text="x", at=100.0 + offset))
    an.observe_token("b", Token(text="x", at=100.0))
    (event,) = lock_ticks(an, 0, 3, 20.0)[2]  # harmonic, frequency 10 Hz
    assert event.payload.phase is not None
    assert 0.0 <= event.payload.phase < 360.0


# -- the published contract ----------------------------------------------------------------


def test_every_kind_of_council_event_validates_against_published_schema() -> None:
    if _validator is None:
        pytest.skip(f"published contract not found at {PUBLISHED_SCHEMA}")
    events: list[CouncilEvent] = []
    for b in (RISING, FALLING, ZIGZAG):
        events += flat(run_series(CouncilAnalyzer(), {"model-a": RISING, "qwen3-0_6b": b}))
    for tps_b in (10.0, 20.0, 15.0):
        an = CouncilAnalyzer()
        an.observe_token("a", Token(text="x", at=0.0))
        an.observe_token("b", Token(text="x", at=0.0137))
        events += flat(lock_ticks(an, 0, 5, tps_b))
    kinds: set[str] = {e.payload.pattern_type for e in events if isinstance(e, InterferenceEvent)}
    kinds |= {e.payload.resonance_type for e in events if isinstance(e, ResonanceEvent)}
    assert kinds == {
        "constructive",
        "destructive",
        "neutral",
        "fundamental",
        "harmonic",
        "overtone",
    }
    check(events)
    for event in events:
        wire = json.loads(codec.encode(event))
        assert wire["channel"] == "council"
        assert wire["frameNumber"] == event.frame_number


# -- a council that meets again (issue 23, B1) ----------------------------------------------


def _council_run(decipher: Decipher, frame: int, t: float, tokens: int) -> tuple[int, float]:
    """The pair answers ``tokens`` tokens, then ends; the frames run on until both are
    dark. Returns the next frame number and time."""
    sessions = [decipher.start_session(m, t) for m in ("demo", "demo-sage")]
    for i in range(tokens):
        # demo writes steadily; demo-sage fast at first, then slows down.
        decipher.on_token(sessions[0], Token(text=f" w{i}", at=t))
        if i < tokens // 2 or i % 4 == 0:
            decipher.on_token(sessions[1], Token(text=f" v{i}", at=t))
        for _ in range(3):
            decipher.tick(frame, t)
            frame, t = frame + 1, t + 1 / 60
    for session in sessions:
        decipher.end_session(session, t)
    for _ in range(600):
        decipher.tick(frame, t)
        frame, t = frame + 1, t + 1 / 60
    return frame, t


def test_a_council_that_meets_again_starts_afresh() -> None:
    """The analyzer runs only on frames where two models generate; the models' stop must
    still reach it, or a second run starts with the first run's windows and sends their
    interference before its own first token."""
    decipher = Decipher(["demo", "demo-sage"], PROFILES["default"], "demo")
    frame, t = _council_run(decipher, 0, 0.0, tokens=40)
    sessions = [decipher.start_session(m, t) for m in ("demo", "demo-sage")]
    early: list[Any] = []
    # A pair's first event needs a full window of 5 samples (6 frames apart) of this run.
    for _ in range((SAMPLE_WINDOW - 1) * EVERY):
        out = decipher.tick(frame, t)
        early.extend(e for e in out.lossless_events if isinstance(e, InterferenceEvent))
        frame, t = frame + 1, t + 1 / 60
    assert early == [], "the second run reported the first run's interference"
    assert all(not s.tokens for s in sessions)
