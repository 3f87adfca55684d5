"""Energy frames across processes: latest wins on the way, and each process's own clock
renumbers them (pure, no I/O; docs/decisions.md, "Broker: frames").

A process running a generation publishes, each tick, the energy events of its lit models.
Every other process keeps, per (event type, models), only the newest it received, and its
next tick sends those instead of its own events for the same models, unless it lights those
models itself. So a client of any process sees the remote generation's energy at 60 Hz, with
that process's frame numbers, and a late or bunched delivery only ever loses stale frames.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Final

import attrs

from ..contract.codec import encode
from ..contract.events import EnergyField, FrameEvent, models_of

FRESH_FOR: Final = 0.25
"""Seconds a remote generation's models stay covered after its last frame arrived: past
that, the process's own (idle) view of them comes back."""

Message = tuple[str, tuple[str, ...], str]
"""(channel, modelIds, wire text) as the hub sends a frame's messages."""


def _key(event: FrameEvent) -> tuple[str, tuple[str, ...]]:
    return event.TYPE, models_of(event)


class OutgoingFrame:
    """The origin's side: the newest lit events not yet published (one slot, merged)."""

    def __init__(self) -> None:
        self._slot: dict[tuple[str, tuple[str, ...]], str] = {}

    def offer(self, events: Iterable[FrameEvent], lit: Collection[str]) -> bool:
        """Keep the events of lit models (and every field, which may be a fade to 0);
        whether there is something to publish."""
        for event in events:
            models = models_of(event)
            if isinstance(event, EnergyField) or any(m in lit for m in models):
                self._slot[_key(event)] = encode(event)
        return bool(self._slot)

    def take(self) -> list[str]:
        texts = list(self._slot.values())
        self._slot.clear()
        return texts


class RemoteFrames:
    """The receiving side: the newest remote events per key, and which models they cover."""

    def __init__(self, fresh_for: float = FRESH_FOR) -> None:
        self.fresh_for = fresh_for
        self._pending: dict[tuple[str, tuple[str, ...]], FrameEvent] = {}
        self._covered: dict[str, float] = {}
        self.received = 0
        self.superseded = 0

    def offer(self, events: Iterable[FrameEvent], now: float) -> None:
        until = now + self.fresh_for
        for event in events:
            key = _key(event)
            if key in self._pending:
                self.superseded += 1
            self._pending[key] = event
            for model_id in key[1]:
                self._covered[model_id] = until
        self.received += 1

    @property
    def active(self) -> bool:
        return bool(self._pending or self._covered)

    def merge(
        self, number: int, local: Iterable[Message], lit: Collection[str], now: float
    ) -> list[Message]:
        """Frame ``number``'s messages: the local ones, but for models that only a remote
        process lights, the newest remote events (once each), renumbered."""
        for model_id, until in list(self._covered.items()):
            if until <= now:
                del self._covered[model_id]
        covered = {m for m in self._covered if m not in lit}
        merged = [m for m in local if not any(i in covered for i in m[1])]
        for event in self._pending.values():
            models = models_of(event)
            if any(m in lit for m in models):
                continue  # this process lights that model itself: its own view wins
            event = attrs.evolve(event, frame_number=number)
            merged.append((event.CHANNEL, models, encode(event)))
        self._pending.clear()
        return merged
