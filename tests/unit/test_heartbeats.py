"""The heartbeat sweep: beats for every connection on the frame clock's ticks, each
connection on its own interval and phase."""

from __future__ import annotations

import gc
import weakref

import pytest

from wirthforge_trio.transport.heartbeats import HeartbeatSweep

RATE = 60.0


class Beats:
    def __init__(self, name: str, log: list[tuple[str, float]], clock: list[float]) -> None:
        self.name = name
        self.log = log
        self.clock = clock

    def beat(self) -> None:
        self.log.append((self.name, self.clock[0]))


def run_frames(sweep: HeartbeatSweep, frames: range, clock: list[float]) -> None:
    for n in frames:
        clock[0] = n / RATE
        sweep.beat_due(clock[0])


def test_each_connection_beats_every_interval_from_its_own_start() -> None:
    log: list[tuple[str, float]] = []
    clock = [0.0]
    sweep = HeartbeatSweep(1.0)
    first, second = Beats("first", log, clock), Beats("second", log, clock)
    sweep.enroll(first, 0.0)
    run_frames(sweep, range(0, 27), clock)  # to 0.43 s
    sweep.enroll(second, clock[0])
    run_frames(sweep, range(27, 207), clock)  # to 3.43 s
    sweep.leave(first)
    run_frames(sweep, range(207, 345), clock)  # to 5.73 s
    times = {name: [t for n, t in log if n == name] for name in ("first", "second")}
    assert len(times["first"]) == 3 and len(times["second"]) == 5
    for name, start in (("first", 0.0), ("second", 26 / RATE)):
        for k, t in enumerate(times[name], start=1):
            # never early, and late by a frame at most
            assert start + k <= t + 1e-9 and t <= start + k + 1 / RATE + 1e-9
    assert sweep.beats == 8 and len(sweep) == 1


def test_beats_spread_over_the_frames_as_the_connections_opened() -> None:
    log: list[tuple[str, float]] = []
    clock = [0.0]
    sweep = HeartbeatSweep(1.0)
    rate = 64  # frame times exact in binary, so that "due" and "now" compare exactly
    for i in range(2 * rate):  # two connections open per frame for one second
        clock[0] = i // 2 / rate
        sweep.enroll(Beats(str(i), log, clock), clock[0])
    for n in range(rate, 2 * rate):
        clock[0] = n / rate
        sweep.beat_due(clock[0])
    per_frame = [sum(1 for _, t in log if t == n / rate) for n in range(rate, 2 * rate)]
    assert per_frame == [2] * rate


def test_a_late_sweep_beats_once_and_keeps_the_interval_from_then() -> None:
    log: list[tuple[str, float]] = []
    clock = [0.0]
    sweep = HeartbeatSweep(1.0)
    sweep.enroll(Beats("only", log, clock), 0.0)
    clock[0] = 3.5  # the clock could not tick for three intervals
    sweep.beat_due(3.5)
    sweep.beat_due(4.0)
    assert len(log) == 1
    clock[0] = 4.5
    sweep.beat_due(4.5)
    assert len(log) == 2 and sweep.beats == 2


def test_leaving_and_enrolling_again_keeps_one_schedule() -> None:
    log: list[tuple[str, float]] = []
    clock = [0.0]
    sweep = HeartbeatSweep(1.0)
    beats = Beats("again", log, clock)
    sweep.enroll(beats, 0.0)
    sweep.leave(beats)
    sweep.enroll(beats, 0.5)
    run_frames(sweep, range(0, 180), clock)  # to 2.98 s: due at 1.5 and 2.5
    assert len(log) == 2 and len(sweep) == 1
    sweep.leave(beats)
    run_frames(sweep, range(180, 300), clock)
    assert len(log) == 2 and len(sweep) == 0


def test_a_connection_that_left_is_not_kept_alive_by_the_sweep() -> None:
    sweep = HeartbeatSweep(1.0)
    beats = Beats("gone", [], [0.0])
    sweep.enroll(beats, 0.0)
    gone = weakref.ref(beats)
    sweep.leave(beats)
    del beats
    gc.collect()
    assert gone() is None  # freed before its entry came up
    sweep.beat_due(5.0)
    assert sweep.beats == 0


class Broken:
    def beat(self) -> None:
        raise RuntimeError("a bug")


def test_a_failing_beat_is_logged_and_the_others_still_beat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[tuple[str, float]] = []
    sweep = HeartbeatSweep(1.0)
    sweep.enroll(Broken(), 0.0)
    sweep.enroll(Beats("fine", log, [1.0]), 0.0)
    sweep.beat_due(1.0)
    assert len(log) == 1 and sweep.beats == 2
    assert "sending a heartbeat failed" in caplog.text
