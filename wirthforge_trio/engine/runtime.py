"""The running engine: the frame clock, the models' lifecycles and every generation, in one
nursery.

It publishes through a small :class:`Publisher` interface, so the engine knows nothing of
connections: the app hands it the transport's hub. Every generation runs in its own cancel
scope, which is how a session is cancelled and how a stalled runtime is given up on; a
failing runtime ends its own session with an error_event and never touches the others.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import aclosing
from typing import Final, Protocol

import attrs
import trio

from ..contract.events import (
    FRAME_BUDGET_MS,
    Event,
    FrameEvent,
    InterferenceEvent,
    ModelStatus,
    ModelStatusPayload,
    ModelStatusValue,
    ResonanceEvent,
    ResumePayload,
    wall_ms,
)
from ..sources.base import (
    MODEL_NOT_FOUND,
    MODEL_STREAM_DROPPED,
    MODEL_TIMEOUT,
    MODEL_UNAVAILABLE,
    ModelSource,
    SourceError,
)
from .clock import FrameClock
from .decipher import COUNCIL_ID, Decipher, Retention, Session, model_error, model_id_for
from .energy import EnergyProfile
from .recovery import Retained, catch_up
from .resume_log import ResumeLog

log = logging.getLogger("wirthforge_trio.engine")

OVERRUN_WARNING_INTERVAL: Final = 5.0
CHECK_TIMEOUT: Final = 15.0
"""Seconds a runtime gets to answer a model check (or a preload) before it counts as down."""
DEFAULT_MAX_TOKENS: Final = 512
"""Tokens one generation may produce unless the server or the prompt says otherwise."""
RECHECK_CODES: Final = (MODEL_UNAVAILABLE, MODEL_NOT_FOUND, MODEL_STREAM_DROPPED, MODEL_TIMEOUT)
"""Session failures that may mean the runtime itself is gone: each triggers a check at once
(docs/decisions.md, "a dead runtime is noticed at once")."""


class Publisher(Protocol):
    """Where frames and lossless events go (the transport's hub)."""

    def publish_frame(self, number: int, events: Iterable[FrameEvent]) -> None: ...

    def publish_frame_text(self, number: int, message: tuple[str, tuple[str, ...], str]) -> None:
        """A frame of one message, already encoded: (channel, modelIds, wire text)."""
        ...

    def publish(self, event: Event) -> None: ...

    def __len__(self) -> int:
        """How many connections are listening."""
        ...


BUILT_IN_KINDS: Final = ("demo", "ollama", "openai")

CouncilEvents = (InterferenceEvent, ResonanceEvent)
"""Frame events that are history rather than state: they travel lossless."""


class UnknownModelError(LookupError):
    """A prompt named a model this server does not run."""


class UnknownSessionError(LookupError):
    """A cancel named a session this server does not know (or no longer retains)."""


@attrs.define
class ModelEntry:
    """One configured model: its source and where it stands in its lifecycle."""

    model_id: str
    source: ModelSource
    status: ModelStatusValue = "checking"
    message: str | None = None
    takes_max_tokens: bool = attrs.field(init=False)
    """Whether the source's ``generate`` accepts ``max_tokens`` (an embedding program's own
    source may not; the engine cuts every stream at the bound anyway)."""

    def __attrs_post_init__(self) -> None:
        try:
            parameters = inspect.signature(self.source.generate).parameters
        except (TypeError, ValueError):
            parameters = {}  # type: ignore[assignment]
        self.takes_max_tokens = "max_tokens" in parameters

    @property
    def runtime_url(self) -> str | None:
        """Where the model's runtime listens, for messages (None for a built-in source)."""
        url = getattr(self.source, "base_url", None)
        return url if isinstance(url, str) else None

    def status_event(self) -> ModelStatus:
        return ModelStatus(
            timestamp=wall_ms(),
            payload=ModelStatusPayload(
                model_id=self.model_id,
                name=self.source.name,
                source=self.source.kind if self.source.kind in BUILT_IN_KINDS else "custom",  # type: ignore[arg-type]
                status=self.status,
                message=self.message,
            ),
        )


def unique_model_ids(sources: Sequence[ModelSource]) -> list[str]:
    """Contract-valid, stable and distinct ids, in configuration order (``council`` is taken)."""
    ids: list[str] = []
    for source in sources:
        base = model_id_for(source.name)
        candidate, n = base, 2
        while candidate in ids or candidate == COUNCIL_ID:
            candidate, n = f"{base}-{n}", n + 1
        ids.append(candidate)
    return ids


class Engine:
    """Owns the clock, the models and every generation; cancel :meth:`run` to stop them all."""

    def __init__(
        self,
        sources: Sequence[ModelSource],
        publisher: Publisher,
        profile: EnergyProfile,
        *,
        frame_rate: float = 60.0,
        first_token_timeout: float = 120.0,
        stall_timeout: float = 30.0,
        check_interval: float = 10.0,
        preload: bool = False,
        retention: Retention | None = None,
        log: ResumeLog | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        if not sources:
            raise ValueError("the engine needs at least one model source")
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self.max_tokens = max_tokens
        """The most tokens one generation may produce; a prompt may ask for fewer."""
        self.models = {
            model_id: ModelEntry(model_id, source)
            for model_id, source in zip(unique_model_ids(sources), sources, strict=True)
        }
        self.default_model = next(iter(self.models))
        self.decipher = Decipher(
            list(self.models), profile, self.default_model, retention=retention
        )
        self.instance_id = f"i-{uuid.uuid4().hex[:16]}"
        """Tells this server run apart from any other (a restart makes a new one)."""
        self.log = log
        """Where the resume log is also kept (a store); None: in memory only."""
        self.publisher = publisher
        self.resume_log: Retained | None = None
        """Where resuming clients are caught up from; None: the Decipher (``broker/``)."""
        self.clock = FrameClock(frame_rate)
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        self.check_interval = check_interval
        self.preload = preload
        self.overruns = 0
        self.analyses_shed = 0
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._generations: dict[str, trio.CancelScope] = {}
        self._watched: set[str] = set()
        self._last_overrun_warning = -math.inf
        self._last_tick_over_budget = False
        self._last_skipped = 0

    # -- running --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick, watch the models and generate until :meth:`stop` (or the caller) cancels."""
        with trio.CancelScope() as self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self.log is not None:
                        # Before the first frame: what earlier runs left is there to resume.
                        recovered = await self.log.open(self.instance_id)
                        self.decipher.log = self.log
                        self.decipher.restore(recovered, trio.current_time(), time.time())
                        await nursery.start(self.log.run)
                    await nursery.start(self.clock.run, self._on_tick)
                    for model_id in self.models:
                        self._watch(model_id)
                    task_status.started()
            finally:
                self._nursery = None
                with trio.CancelScope(shield=True):
                    for entry in self.models.values():
                        await entry.source.aclose()

    def stop(self) -> None:
        """Cancel the clock, the watchers and every generation; :meth:`run` returns promptly."""
        if self._scope is not None:
            self._scope.cancel()

    # -- model lifecycle --------------------------------------------------------------------------

    def _watch(self, model_id: str, *, announce: bool = True) -> None:
        if self._nursery is not None and model_id not in self._watched:
            self._watched.add(model_id)
            self._nursery.start_soon(self._watch_model, model_id, announce)

    async def _watch_model(self, model_id: str, announce: bool = True) -> None:
        """Check (and optionally preload) a model until it is ready, retrying while it is not.

        The first check runs at once: at start-up, and right after a session failed in a
        way that may mean its runtime is gone (``announce=False`` then: that session's own
        error_event has told the clients, the ``model_status`` says the rest).
        """
        entry = self.models[model_id]
        try:
            while True:
                try:
                    with trio.fail_after(CHECK_TIMEOUT):
                        await entry.source.check()
                    if self.preload:
                        self._set_status(entry, "loading", None)
                        with trio.fail_after(self.first_token_timeout):
                            await entry.source.preload()
                except SourceError as exc:
                    self._mark_unavailable(entry, exc, announce=announce)
                except trio.TooSlowError:
                    where = f" at {entry.runtime_url}" if entry.runtime_url else ""
                    self._mark_unavailable(
                        entry,
                        SourceError(
                            MODEL_UNAVAILABLE,
                            f"the {entry.source.kind} runtime{where} did not answer in time",
                            "check that it is running and not overloaded",
                        ),
                        announce=announce,
                    )
                else:
                    self._set_status(entry, "ready", None)
                    return
                await trio.sleep(self.check_interval)
        finally:
            self._watched.discard(model_id)

    def _set_status(self, entry: ModelEntry, status: ModelStatusValue, message: str | None) -> None:
        """Record a lifecycle change and tell the clients that follow the ``models`` topic."""
        if (entry.status, entry.message) == (status, message):
            return
        entry.status, entry.message = status, message
        self.publisher.publish(entry.status_event())
        if status == "ready":
            log.info("model %s (%s) is ready", entry.model_id, entry.source.kind)

    def _mark_unavailable(
        self, entry: ModelEntry, failure: SourceError, *, announce: bool = True
    ) -> None:
        """Every client hears of an outage once (error_event); retries change only the status.

        ``announce=False`` when a session's own error_event has already said it.
        """
        if entry.status != "unavailable" and announce:
            log.warning(
                "model %s (%s) is unavailable: %s", entry.model_id, entry.source.kind, failure.code
            )
            self.decipher.report(model_error(failure, entry.model_id))
        self._set_status(entry, "unavailable", str(failure))

    # -- the stream ----------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Send an event of the embedding program's own to every subscribed client.

        It goes out with the next frame: on the lossless queue, and kept for clients that
        resume; or, for an energy frame event, inside the next frame (renumbered), which a
        newer frame may supersede like any other.
        """
        if isinstance(event, FrameEvent) and not isinstance(event, CouncilEvents):
            self.decipher.report_frame_event(event)
        else:
            self.decipher.report(event)

    def catch_up(
        self,
        resume: ResumePayload,
        *,
        wants: Callable[[Event], bool],
        channels: tuple[str, ...],
        subscribed_models: tuple[str, ...] | None,
    ) -> list[Event]:
        """The state_snapshot and the missed events for a client that resumes."""
        return catch_up(
            self.decipher,
            resume,
            server_instance=self.instance_id,
            wall_ms=wall_ms(),
            wants=wants,
            channels=channels,
            subscribed_models=subscribed_models,
            retained=self.resume_log,
        )

    # -- sessions -------------------------------------------------------------------------------

    def submit(
        self,
        prompt: str,
        model_ids: Sequence[str] | None = None,
        *,
        max_tokens: int | None = None,
    ) -> list[Session]:
        """Start one session per model; each generation runs in the engine's nursery.

        ``max_tokens`` (at most :attr:`max_tokens`, the default) bounds each generation.
        """
        if self._nursery is None:
            raise RuntimeError("the engine is not running")
        bound = self.max_tokens if max_tokens is None else max_tokens
        if not 1 <= bound <= self.max_tokens:
            raise ValueError(f"max_tokens must be between 1 and {self.max_tokens}")
        wanted = list(dict.fromkeys(model_ids)) if model_ids else [self.default_model]
        unknown = [m for m in wanted if m not in self.models]
        if unknown:
            raise UnknownModelError(", ".join(unknown))
        now = trio.current_time()
        sessions = [self.decipher.start_session(model_id, now) for model_id in wanted]
        self.decipher.council_started(len(sessions))
        for session in sessions:
            scope = trio.CancelScope()
            self._generations[session.id] = scope
            self._nursery.start_soon(self._generate, session, scope, prompt, bound)
        return sessions

    def cancel(self, session_id: str) -> Session:
        """Cancel a live session: its runtime stream is closed and it completes at once."""
        session = self.decipher.sessions.get(session_id)
        if session is None:
            raise UnknownSessionError(session_id)
        scope = self._generations.get(session_id)
        if scope is not None:
            scope.cancel()
        return session

    async def _generate(
        self, session: Session, scope: trio.CancelScope, prompt: str, max_tokens: int
    ) -> None:
        entry = self.models[session.model_id]
        failure: SourceError | None = None
        with scope:
            try:
                failure = await self._stream(session, entry, prompt, max_tokens)
            except SourceError as exc:
                failure = exc
            except Exception as exc:  # a broken source ends its session, never the server
                log.exception("model %s failed in session %s", session.model_id, session.id)
                failure = SourceError(
                    "MODEL_ERROR",
                    f"the {entry.source.kind} source failed ({type(exc).__name__})",
                    "see the server log",
                )
        self._generations.pop(session.id, None)
        cancelled = scope.cancelled_caught and failure is None
        self.decipher.end_session(session, trio.current_time(), failure, cancelled=cancelled)
        if failure is not None:
            log.warning(
                "session %s of model %s ended: %s", session.id, session.model_id, failure.code
            )
            if failure.code in (MODEL_UNAVAILABLE, MODEL_NOT_FOUND):
                self._mark_unavailable(entry, failure, announce=False)
            if failure.code in RECHECK_CODES:
                self._watch(entry.model_id, announce=False)
        elif cancelled:
            log.info("session %s cancelled", session.id)

    async def _stream(
        self, session: Session, entry: ModelEntry, prompt: str, max_tokens: int
    ) -> SourceError | None:
        """Feed the source's tokens to the Decipher; a token overdue ends it as a stall, and
        the stream is closed (the runtime sees it go) once ``max_tokens`` have come."""
        timeout = self.first_token_timeout
        source = entry.source
        stream = (
            source.generate(prompt, max_tokens=max_tokens)
            if entry.takes_max_tokens
            else source.generate(prompt)
        )
        async with aclosing(stream) as tokens:  # type: ignore[type-var]
            while len(session.tokens) < max_tokens:
                with trio.move_on_after(timeout) as waiting:
                    try:
                        token = await anext(tokens)
                    except StopAsyncIteration:
                        return None
                if waiting.cancelled_caught:
                    first = timeout == self.first_token_timeout and not session.tokens
                    return SourceError(
                        MODEL_TIMEOUT,
                        f"no {'first ' if first else ''}token for {timeout:g} s; the session "
                        "was ended",
                        "check the runtime (is it overloaded or still loading the model?) "
                        "or raise WIRTHFORGE_FIRST_TOKEN_TIMEOUT / WIRTHFORGE_STALL_TIMEOUT",
                    )
                self.decipher.on_token(session, token)
                timeout = self.stall_timeout
        return None

    # -- the frame ------------------------------------------------------------------------------

    def _on_tick(self, frame_number: int, now: float) -> None:
        started = time.perf_counter()
        # Pattern analysis is the first thing shed when the previous frame ran late.
        shed = self._last_tick_over_budget or self.clock.skipped > self._last_skipped
        self._last_skipped = self.clock.skipped
        if shed:
            self.analyses_shed += 1
        at_rest = self.decipher.tick_as_text(frame_number, now)
        if at_rest is not None:  # the common case of an idle server, as short as it can be
            if len(self.publisher):  # the clock woke early to have the frame ready when due
                self.clock.hold_until_due()
            self.publisher.publish_frame_text(frame_number, at_rest)
        else:
            output = self.decipher.tick(frame_number, now, shed_analysis=shed)
            if len(self.publisher):
                self.clock.hold_until_due()
            for event in output.lossless_events:
                self.publisher.publish(event)
            self.publisher.publish_frame(frame_number, output.frame_events)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self._last_tick_over_budget = elapsed_ms > FRAME_BUDGET_MS
        if self._last_tick_over_budget:
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
