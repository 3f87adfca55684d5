"""Heartbeats for every connection, sent on the frame clock's ticks.

A task per connection that sleeps an interval between beats pays a Trio timeout for every
beat: a cancel scope with a deadline, its expiry, a ``Cancelled`` raised and caught, a task
switch, and at 100 clients a hundred wake-ups a second that nothing else needed. The
contract counts the heartbeat in frames (about every 60), and the frame clock wakes 60 times
a second anyway: so on every frame the hub beats for the connections whose interval has
passed. They wait in a heap ordered by due time, so a frame with nothing due costs one
comparison, and since each connection keeps its own phase, beats (and the answers they
call for) spread evenly over the frames instead of arriving in bursts.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol


class Beating(Protocol):
    def beat(self) -> None:
        """Send (or queue) one heartbeat; never blocks."""


class HeartbeatSweep:
    """Beats every ``interval`` seconds for each enrolled connection, when swept."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._heap: list[tuple[float, int, Beating]] = []
        self._entry: dict[Beating, int] = {}
        """The heap entry that is current for each enrolled connection (older ones are
        skipped when they come up: leaving is O(1))."""
        self._ids = itertools.count()
        self.beats = 0

    def __len__(self) -> int:
        return len(self._entry)

    def enroll(self, connection: Beating, now: float) -> None:
        """The first beat is due an interval from ``now``, as if the connection slept it."""
        self._push(connection, now + self.interval)

    def leave(self, connection: Beating) -> None:
        self._entry.pop(connection, None)

    def beat_due(self, now: float) -> None:
        """Beat for every connection whose beat is due at ``now``. The next is due an
        interval after the last was due, or after ``now`` if the sweep came so late that
        it would already be due (one beat for a long gap, not one per beat missed)."""
        heap, entry, interval = self._heap, self._entry, self.interval
        while heap and heap[0][0] <= now:
            due, entry_id, connection = heapq.heappop(heap)
            if entry.get(connection) != entry_id:
                continue  # it left, or this entry was superseded
            due += interval
            self._push(connection, due if due > now else now + interval)
            self.beats += 1
            connection.beat()

    def _push(self, connection: Beating, due: float) -> None:
        entry_id = next(self._ids)
        self._entry[connection] = entry_id
        heapq.heappush(self._heap, (due, entry_id, connection))
