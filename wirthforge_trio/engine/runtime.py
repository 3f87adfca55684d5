"""The running engine: the frame clock, the Decipher and the generation tasks in one nursery.

It publishes through a small :class:`Publisher` interface, so the engine knows nothing of
connections: the app hands it the transport's hub.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import trio

from ..contract.events import FRAME_BUDGET_MS, Event, FrameEvent
from ..sources.base import ModelSource
from .clock import FrameClock
from .decipher import Decipher, Session, model_id_for
from .energy import EnergyProfile

log = logging.getLogger("wirthforge_trio.engine")

OVERRUN_WARNING_INTERVAL = 5.0


class Publisher(Protocol):
    """Where frames and lossless events go (the transport's hub)."""

    def publish_frame(self, number: int, events: Iterable[FrameEvent]) -> None: ...

    def publish(self, event: Event) -> None: ...


class UnknownModelError(LookupError):
    """A prompt named a model this server does not run."""


class Engine:
    """Owns the clock, the models and every generation; cancel :meth:`run` to stop them all."""

    def __init__(
        self,
        sources: Sequence[ModelSource],
        publisher: Publisher,
        profile: EnergyProfile,
        *,
        frame_rate: float = 60.0,
    ) -> None:
        if not sources:
            raise ValueError("the engine needs at least one model source")
        self.sources = {model_id_for(s.name): s for s in sources}
        self.model_names = {model_id: s.name for model_id, s in self.sources.items()}
        self.default_model = next(iter(self.sources))
        self.decipher = Decipher(list(self.sources), profile, self.default_model)
        self.publisher = publisher
        self.clock = FrameClock(frame_rate)
        self.overruns = 0
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._last_overrun_warning = -math.inf

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick and generate until :meth:`stop` (or the caller) cancels."""
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.clock.run, self._on_tick)
                task_status.started()
        self._nursery = None

    def stop(self) -> None:
        """Cancel the clock and every generation; :meth:`run` returns promptly."""
        if self._scope is not None:
            self._scope.cancel()

    def submit(self, prompt: str, model_ids: Sequence[str] | None = None) -> list[Session]:
        """Start one session per model; generation runs in the engine's nursery."""
        if self._nursery is None:
            raise RuntimeError("the engine is not running")
        wanted = list(model_ids) if model_ids else [self.default_model]
        unknown = [m for m in wanted if m not in self.sources]
        if unknown:
            raise UnknownModelError(", ".join(unknown))
        now = trio.current_time()
        sessions = []
        for model_id in dict.fromkeys(wanted):
            session = self.decipher.start_session(model_id, now)
            self._nursery.start_soon(self._generate, session, self.sources[model_id], prompt)
            sessions.append(session)
        return sessions

    async def _generate(self, session: Session, source: ModelSource, prompt: str) -> None:
        error: str | None = None
        try:
            async for token in source.generate(prompt):
                self.decipher.on_token(session, token)
        except Exception as exc:  # a failing runtime ends its session, never the server
            error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "model %s failed in session %s: %s",
                session.model_id,
                session.id,
                type(exc).__name__,
            )
        finally:
            self.decipher.end_session(session, trio.current_time(), error)

    def _on_tick(self, frame_number: int, now: float) -> None:
        started = time.perf_counter()
        output = self.decipher.tick(frame_number, now)
        for event in output.lossless_events:
            self.publisher.publish(event)
        self.publisher.publish_frame(frame_number, output.frame_events)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if elapsed_ms > FRAME_BUDGET_MS:
            self.overruns += 1
            if now - self._last_overrun_warning > OVERRUN_WARNING_INTERVAL:
                self._last_overrun_warning = now
                log.warning(
                    "frame %d took %.1f ms, over the %.2f ms budget (%d overruns)",
                    frame_number,
                    elapsed_ms,
                    FRAME_BUDGET_MS,
                    self.overruns,
                )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("frame %d built in %.3f ms", frame_number, elapsed_ms)
