"""The server's one 60 Hz frame clock, drift-free and honest about late frames.

Tick n is due at ``start + n / rate``, computed from the start rather than from the previous
tick, so small sleep errors never accumulate. A tick that comes so late that later ticks are
already due skips them (counted as overruns): frames are state, and a burst of catch-up
frames would only deliver stale ones. Frame numbers therefore never decrease, and measure
time since the clock started.

Waking up and building the frame take time, so the clock wakes that much *before* the frame
is due (the lead, learned from recent ticks) and the tick builds its frame then; just before
sending, :meth:`FrameClock.hold_until_due` waits out what is left without yielding. Invariant:
a frame is never sent before it is due (docs/decisions.md, "Timing and liveness").
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import trio
import trio.testing

from ..contract.events import FRAME_RATE
from .timer import open_timer

MAX_LEAD_NS: Final = 500_000
"""The clock never wakes more than 0.5 ms before a frame is due (nor spins longer)."""
LEAD_SAMPLES: Final = 31
"""Ticks the lead is learned from: their median time from wake-up target to frame ready."""


class FrameClock:
    """Calls ``on_tick(frame_number, now)`` at ``rate`` Hz until cancelled."""

    def __init__(self, rate: float = FRAME_RATE) -> None:
        self.rate = rate
        self.period = 1.0 / rate
        self.frame_number = -1
        self.ticks = 0
        self.skipped = 0
        self._recent: deque[float] = deque(maxlen=int(rate) + 1)
        # When frame 0 was due, on the system-wide monotonic clock (CLOCK_MONOTONIC, shared by
        # every process on the machine): frame n is due at origin + n * period. Benchmarks
        # measure latency against it with sub-millisecond precision.
        self.origin_monotonic_ns: int | None = None
        self.lead_ns = 0
        """How long before a frame is due the clock wakes to build it."""
        self._target_ns = 0
        self._due_ns: int | None = None
        self._ready_after: deque[int] = deque(maxlen=LEAD_SAMPLES)
        self.epoch_ns: int | None = None
        """When set (wall clock, ns), frame n is due at epoch + n periods instead of n periods
        after the start: processes sharing an epoch share frame numbers (``broker/``)."""

    @property
    def measured_rate(self) -> float:
        """Ticks per second over the last second or so (0 before two ticks)."""
        recent = self._recent
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def scheduled_frame(self) -> int:
        """The frame the schedule is at now: the last one sent, or a later one while a tick
        runs late (a process that was paused has not caught up yet)."""
        origin_ns = self.origin_monotonic_ns
        if origin_ns is None or isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            return self.frame_number  # not running, or on a virtual clock's own time
        elapsed_ns = time.monotonic_ns() - origin_ns
        return max(self.frame_number, elapsed_ns * round(self.rate * 1000) // 10**12)

    async def run(
        self,
        on_tick: Callable[[int, float], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        start = trio.current_time()
        origin_ns = self.origin_monotonic_ns = time.monotonic_ns() - int(
            (trio.current_time() - start) * 1e9
        )
        n = 0
        if self.epoch_ns is not None:
            since_ns = max(0, time.time_ns() - self.epoch_ns)
            n = math.ceil(since_ns / 1e9 * self.rate)  # the first frame due from now on
            start -= since_ns / 1e9
            origin_ns = self.origin_monotonic_ns = origin_ns - since_ns
        # On time to the microsecond where the kernel allows (timer.py); virtual clocks in
        # tests have their own time, so they keep Trio's sleep.
        timer = None
        if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            timer = open_timer(round(self.period * 1e9))
        task_status.started()
        try:
            while True:
                due = start + n * self.period
                if timer is not None:
                    due_ns = origin_ns + round(n * self.period * 1e9)
                    self._target_ns = due_ns - self.lead_ns
                    await timer.wait_until_ns(self._target_ns)
                    self._due_ns = due_ns
                else:
                    await trio.sleep_until(due)
                n = self._tick(n, due, on_tick)
        finally:
            if timer is not None:
                timer.close()

    def hold_until_due(self) -> None:
        """Called by a tick when its frame is ready to send: return once the frame is due,
        busy-waiting (the rest of the lead is shorter than any sleep could be precise). Each
        call also teaches the clock how long before the due time it should wake."""
        due_ns = self._due_ns
        if due_ns is None:  # a virtual clock (tests), or called twice in a tick
            return
        self._due_ns = None
        now = time.monotonic_ns()
        ready_after = self._ready_after
        ready_after.append(now - self._target_ns)
        if len(ready_after) == LEAD_SAMPLES and self.ticks % 8 == 0:
            self.lead_ns = min(MAX_LEAD_NS, sorted(ready_after)[LEAD_SAMPLES // 2])
        while now < due_ns:
            now = time.monotonic_ns()

    def _tick(self, n: int, due: float, on_tick: Callable[[int, float], None]) -> int:
        """Run tick ``n`` (or a later one, if late); the next frame number."""
        now = trio.current_time()
        behind = int((now - due) / self.period)
        if behind > 0:
            self.skipped += behind
            n += behind
        self.frame_number = n
        self.ticks += 1
        self._recent.append(now)
        on_tick(n, now)
        return n + 1
