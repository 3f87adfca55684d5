"""The engine's :class:`~wirthforge_trio.engine.runtime.Publisher` on a broker.

Frames stay in the process: its own clock, its hub, plus the newest energy of generations
running elsewhere (``frames.py``). Lossless events do not go to the hub here: they go to the
stream, and come back to every process's hub, this one's included, in the stream's order;
those held for a later frame are sent here, just before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from ..contract.codec import encode
from ..contract.events import Event, FrameEvent, TokenStream, models_of
from ..transport.hub import Hub
from .node import BrokerNode


class BrokerPublisher:
    """Frames to the local hub (merged with remote ones), lossless events to the stream."""

    def __init__(
        self,
        hub: Hub,
        node: BrokerNode,
        lit_models: Callable[[], frozenset[str]],
        session_status: Callable[[str], str | None],
    ) -> None:
        self.hub = hub
        self.node = node
        self.lit_models = lit_models
        """Models this process's own generations light (their energy is its to send)."""
        self.session_status = session_status
        node.hub = hub

    def __len__(self) -> int:
        return len(self.hub)

    def publish(self, event: Event) -> None:
        status = None
        if isinstance(event, TokenStream) and event.payload.is_complete:
            status = self.session_status(event.payload.session_id)
        self.node.send(event, status)

    def publish_frame(self, number: int, events: Iterable[FrameEvent]) -> None:
        if self.node.held:  # lossless events due with this frame go just before it
            self.node.release(number)
        events = tuple(events)
        lit = self.lit_models()
        if lit:
            self.node.offer_frame(events, lit)
        remote = self.node.remote
        if not remote.active:
            self.hub.publish_frame(number, events)
            return
        local = [(e.CHANNEL, models_of(e), encode(e)) for e in events]
        self._send(number, remote.merge(number, local, lit, trio.current_time()))

    def publish_frame_text(self, number: int, message: tuple[str, tuple[str, ...], str]) -> None:
        if self.node.held:
            self.node.release(number)
        remote = self.node.remote
        if not remote.active:  # the idle server's path, as without a broker
            self.hub.publish_frame_text(number, message)
            return
        self._send(number, remote.merge(number, [message], frozenset(), trio.current_time()))

    def _send(self, number: int, messages: list[tuple[str, tuple[str, ...], str]]) -> None:
        if messages:
            self.hub.publish_frame_messages(number, tuple(messages))
        else:  # a frame with nothing new: the clients keep the last energy they got
            self.hub.heartbeats.beat_due(trio.current_time())
