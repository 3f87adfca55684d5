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
import logging
from typing import Protocol

log = logging.getLogger("wirthforge_trio.transport")


class Beating(Protocol):
    def beat(self) -> None:
        """Send (or queue) one heartbeat; never blocks."""


class HeartbeatSweep:
    """Beats every ``interval`` seconds for each enrolled connection, when swept."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._heap: list[tuple[float, int]] = []
        """(due time, entry id): no reference to the connection, so that one that left is
        freed at once, not when its entry comes up."""
        self._entry: dict[Beating, int] = {}
        self._by_entry: dict[int, Beating] = {}
        """The current entry of each enrolled connection, both ways (an entry that is not
        current any more, because its connection left, is skipped when it comes up)."""
        self._ids = itertools.count()
        self.beats = 0

    def __len__(self) -> int:
        return len(self._entry)

    def enroll(self, connection: Beating, now: float) -> None:
        """The first beat is due an interval from ``now``, as if the connection slept it."""
        self._push(connection, now + self.interval)

    def leave(self, connection: Beating) -> None:
        entry_id = self._entry.pop(connection, None)
        if entry_id is not None:
            self._by_entry.pop(entry_id, None)

    def beat_due(self, now: float) -> None:
        """Beat for every connection whose beat is due at ``now``. The next is due an
        interval after the last was due, or after ``now`` if the sweep came so late that
        it would already be due (one beat for a long gap, not one per beat missed)."""
        heap, by_entry, interval = self._heap, self._by_entry, self.interval
        while heap and heap[0][0] <= now:
            due, entry_id = heapq.heappop(heap)
            connection = by_entry.pop(entry_id, None)
            if connection is None:
                continue  # it left
            due += interval
            self._push(connection, due if due > now else now + interval)
            self.beats += 1
            try:
                connection.beat()
            except Exception:  # a bug in one connection must not stop the frame clock
                log.exception("sending a heartbeat failed")

    def _push(self, connection: Beating, due: float) -> None:
        self.leave(connection)
        entry_id = next(self._ids)
        self._entry[connection] = entry_id
        self._by_entry[entry_id] = connection
        heapq.heappush(self._heap, (due, entry_id))
