"""Heartbeats for every connection, sent from the frame clock's ticks.

A task per connection that sleeps an interval between beats pays a Trio timeout for every
beat: a cancel scope with a deadline, its expiry, a ``Cancelled`` raised and caught, a task
switch, and at 100 clients a hundred wake-ups a second that nothing else needed. The
contract counts the heartbeat in frames (about every 60), and the frame clock wakes 60 times
a second anyway: so the hub, on every few frames (a tenth of an interval at most, 0.1 s at
most), beats for the connections whose interval has passed. No task and no timer of its
own; a beat is at most a sweep late, far inside the 2 s after which a client may call the
server dead.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

STEPS_PER_INTERVAL: Final = 10
"""How often per heartbeat interval the sweep looks for connections that are due."""
MAX_STEP: Final = 0.1
"""Seconds between two sweeps at most, whatever the interval."""


class Beating(Protocol):
    def beat(self) -> None:
        """Send (or queue) one heartbeat; never blocks."""


class HeartbeatSweep:
    """Beats every ``interval`` seconds for each enrolled connection, when swept."""

    def __init__(self, interval: float, frame_rate: float) -> None:
        self.interval = interval
        step = min(MAX_STEP, interval / STEPS_PER_INTERVAL)
        self.frames_per_sweep = max(1, math.floor(step * frame_rate))
        """Frames from one sweep to the next."""
        self._due: dict[Beating, float] = {}
        self._next_frame = 0
        self.beats = 0

    def __len__(self) -> int:
        return len(self._due)

    def enroll(self, connection: Beating, now: float) -> None:
        """The first beat is due an interval from ``now``, as if the connection slept it."""
        self._due[connection] = now + self.interval

    def leave(self, connection: Beating) -> None:
        self._due.pop(connection, None)

    def on_frame(self, frame_number: int, now: float) -> None:
        """Called on every frame: sweep on every ``frames_per_sweep``-th (frame numbers skip
        over frames the clock missed, so it counts from the last sweep)."""
        if frame_number >= self._next_frame:
            self._next_frame = frame_number + self.frames_per_sweep
            self.beat_due(now)

    def beat_due(self, now: float) -> None:
        """Beat for every connection whose beat is due at ``now``; a connection that missed
        beats (the sweep itself ran late) gets one, and its next an interval later."""
        interval = self.interval
        due_times = self._due
        for connection, due in list(due_times.items()):
            if due <= now and connection in due_times:
                due += interval
                due_times[connection] = due if due > now else now + interval
                self.beats += 1
                connection.beat()
