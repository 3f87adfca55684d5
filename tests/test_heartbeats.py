"""The heartbeat sweep: beats for every connection on the frame clock's ticks, each
connection on its own interval."""

from __future__ import annotations

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
        sweep.on_frame(n, clock[0])


def test_each_connection_beats_every_interval_from_its_own_start() -> None:
    log: list[tuple[str, float]] = []
    clock = [0.0]
    sweep = HeartbeatSweep(1.0, RATE)
    assert sweep.frames_per_sweep == 6  # 0.1 s
    first, second = Beats("first", log, clock), Beats("second", log, clock)
    sweep.enroll(first, 0.0)
    run_frames(sweep, range(0, 27), clock)  # 0.45 s
    sweep.enroll(second, clock[0])
    run_frames(sweep, range(27, 207), clock)  # to 3.45 s
    sweep.leave(first)
    run_frames(sweep, range(207, 345), clock)  # to 5.75 s
    times = {name: [t for n, t in log if n == name] for name in ("first", "second")}
    assert len(times["first"]) == 3 and len(times["second"]) == 5
    for name, start in (("first", 0.0), ("second", 26 / RATE)):
        for k, t in enumerate(times[name], start=1):
            # never early, and late by at most one sweep (6 frames)
            assert start + k <= t + 1e-9 and t <= start + k + 6 / RATE + 1e-9
    assert sweep.beats == 8 and len(sweep) == 1


def test_skipped_frames_still_sweep_and_a_late_sweep_beats_once() -> None:
    log: list[tuple[str, float]] = []
    clock = [0.0]
    sweep = HeartbeatSweep(1.0, RATE)
    beats = Beats("only", log, clock)
    sweep.enroll(beats, 0.0)
    sweep.on_frame(0, 0.0)
    # The clock missed frames 1-209 (3.5 s): the next frame sweeps, and beats once.
    clock[0] = 3.5
    sweep.on_frame(210, 3.5)
    assert len(log) == 1
    sweep.on_frame(213, 4.0)  # not a sweep frame yet
    sweep.on_frame(240, 4.0)  # a sweep, but the next beat is due at 4.5
    assert len(log) == 1
    clock[0] = 4.5
    sweep.on_frame(270, 4.5)
    assert len(log) == 2 and sweep.beats == 2


def test_the_sweep_is_a_tenth_of_the_interval_at_most_a_tenth_of_a_second() -> None:
    assert HeartbeatSweep(0.2, RATE).frames_per_sweep == 1
    assert HeartbeatSweep(0.5, RATE).frames_per_sweep == 3
    assert HeartbeatSweep(5.0, RATE).frames_per_sweep == 6
