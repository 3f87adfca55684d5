"""The Decipher: turns models' tokens into the frame's events. Pure; time is passed in.

Tokens arrive whenever the sources produce them; the Decipher accounts for each at once
(energy, session text) and holds them until the next frame, where each session's tokens of
that frame become one ``token_stream`` and each active model one ``energy_update``. The
prompt never reaches this module: sessions keep only what the model wrote.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final, Literal

import attrs

from ..contract.codec import decode_event, encode
from ..contract.events import (
    FRAME_BUDGET_MS,
    EnergyField,
    EnergyFieldPayload,
    ErrorEvent,
    ErrorPayload,
    Event,
    FieldPoint,
    FrameEvent,
    TokenStream,
    TokenStreamPayload,
    wall_ms,
)
from ..sources.base import SourceError, Token, with_hint
from .council import CouncilAnalyzer, ensemble_energy
from .energy import EU_PER_TOKEN, EnergyProfile, FlowState, ModelEnergy, energy_update
from .rest_text import RestFrameText
from .resume_log import Recovered, ResumeLog
from .rewards import RewardLedger

FIELD_CHANGE: Final = 0.01
"""An energy_field is sent when a model's intensity moved by at least this much."""

IDLE_VISIBLE: Final = 0.001
"""Below this intensity a model with no open stream no longer gets energy_update frames."""


REST_INTENSITY: Final = 5e-7
"""Below this a model's E rounds to 0 wherever the server shows it (at most 6 decimals), so
leaving its decay unsettled at rest changes nothing anyone can see."""

REST_RETENTION_INTERVAL: Final = 1.0
"""At rest, retention by age is applied once a second rather than on every frame."""

COUNCIL_ID: Final = "council"
"""The modelId of the ensemble's energy_update and interference field (reserved)."""

_FLOW_STATES: Final = frozenset({FlowState.FLOWING, FlowState.SATURATED})
_REST_STATES: Final = frozenset({FlowState.IDLE, FlowState.DRAINED})

_INVALID_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")

SessionStatus = Literal["streaming", "complete", "failed", "cancelled"]


def model_id_for(name: str) -> str:
    """A contract-valid modelId for a runtime's model name: ``qwen3:0.6b`` → ``qwen3-0_6b``."""
    mapped = _INVALID_ID_CHARS.sub("_", name.replace(":", "-"))
    return mapped or "model"


@attrs.frozen
class Retention:
    """How much history the server keeps for clients that reconnect (count and age)."""

    sessions: int = 64
    """Finished sessions kept with their full text (live ones are always kept)."""
    events: int = 1000
    """Lossless events other than tokens (rewards, council, errors) kept for replay."""
    seconds: float = 900.0
    """Nothing finished longer ago than this is kept."""


@attrs.frozen
class Logged:
    """A lossless event as it was published: in which frame, at what time."""

    frame_number: int
    at: float
    event: Event
    run: int = 0
    """The run of the server's resume log it was published in (``resume_log.py``)."""


@attrs.define
class Session:
    """One model's answer to one prompt: its text so far and what the next frame must send."""

    id: str
    model_id: str
    started_at: float
    start_frame: int = 0
    """The frame during which it started."""
    first_sent_frame: int | None = None
    """The frame whose token_stream first carried it: a client that saw that frame (or a
    later one) has heard of it; before that there was nothing of it to hear."""
    tokens: list[str] = attrs.field(factory=list)
    pending: list[str] = attrs.field(factory=list)
    status: SessionStatus = "streaming"
    completion_sent: bool = False
    ended_at: float | None = None
    run: int = 0
    """The run of the resume log it started in (``resume_log.py``)."""
    interrupted: bool = False
    """It was live when its server stopped (recovered from a store): ended, as failed."""

    @property
    def published(self) -> int:
        """Tokens already handed to the transport (the rest go out with the next frame)."""
        return len(self.tokens) - len(self.pending)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@attrs.frozen
class FrameOutput:
    """What one tick produced: frame events (may be superseded) and lossless events."""

    frame_number: int
    frame_events: tuple[FrameEvent, ...]
    lossless_events: tuple[Event, ...]
    processing_ms: float


class Decipher:
    """Energy and sessions of every model the server runs."""

    def __init__(
        self,
        model_ids: list[str],
        profile: EnergyProfile,
        default_model: str,
        *,
        retention: Retention | None = None,
    ) -> None:
        if default_model not in model_ids:
            raise ValueError(f"default model {default_model!r} is not among {model_ids}")
        self.profile = profile
        self.default_model = default_model
        self.energies: dict[str, ModelEnergy] = {m: ModelEnergy(profile) for m in model_ids}
        self.retention = retention or Retention()
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.history: deque[Logged] = deque()
        """Lossless events other than tokens, kept for clients that resume."""
        self.frame_number = 0
        self._live: dict[str, Session] = {}
        self._field_sent: dict[str, float] = {}
        self._pending_events: list[Event] = []
        self._pending_frame_events: list[FrameEvent] = []
        self._flow_since: dict[str, float] = {}
        self.council = CouncilAnalyzer()
        self.rewards = RewardLedger()
        self.tokens_elsewhere: Callable[[], int] = lambda: 0
        """Tokens generated by the other processes of a cluster (``broker/``): token
        milestones and levels count the cluster's tokens."""
        self.rest_enabled = True
        """Whether frames at rest take the short path (tests compare it with the long one)."""
        self.rest_frames = 0
        """Frames built on the short path: nothing generating, nothing pending, all dark."""
        self._at_rest = False
        self._retention_due = 0.0
        self._rest_text: RestFrameText | None = None
        self.log: ResumeLog | None = None
        """Where the resume log is also written (a store); None: memory only."""
        self.run = 0
        """This run's number in the resume log: earlier runs' instances are ``predecessors``."""
        self.predecessors: tuple[str, ...] = ()

    # -- inputs -----------------------------------------------------------------------------

    def start_session(self, model_id: str, now: float) -> Session:
        energy = self.energies[model_id]
        session = Session(
            id=f"s-{uuid.uuid4().hex[:16]}",
            model_id=model_id,
            started_at=now,
            start_frame=self.frame_number,
        )
        energy.start_prompt(now)
        session.run = self.run
        self.sessions[session.id] = session
        self._live[session.id] = session
        if self.log is not None:
            self.log.session_started(session.id, model_id, self.run)
        return session

    def restore(self, recovered: Recovered, now: float, wall: float) -> None:
        """Take back what a store kept of earlier runs, before the first frame: their sessions
        (a live one ended, as interrupted) and lossless events, aged by the wall clock."""
        self.predecessors = recovered.runs
        self.run = len(recovered.runs)
        for stored in recovered.sessions:
            if stored.model_id not in self.energies:
                # A model this server no longer runs: no snapshot could describe it.
                if self.log is not None:
                    self.log.sessions_forgotten([stored.session_id])
                continue
            interrupted = stored.status in ("streaming", "interrupted")
            ended = stored.ended_wall if stored.ended_wall is not None else wall
            self.sessions[stored.session_id] = Session(
                id=stored.session_id,
                model_id=stored.model_id,
                started_at=now,
                first_sent_frame=stored.first_sent_frame,
                tokens=list(stored.tokens),
                status="failed" if interrupted else stored.status,  # type: ignore[arg-type]
                completion_sent=True,
                ended_at=now - max(wall - ended, 0.0),
                run=stored.run,
                interrupted=interrupted,
            )
            if stored.status == "streaming" and self.log is not None:
                self.log.session_ended(stored.session_id, "interrupted", wall)
        for event in recovered.events:
            self.history.append(
                Logged(
                    event.frame_number,
                    now - max(wall - event.wall, 0.0),
                    decode_event(event.text),
                    event.run,
                )
            )
        self._remember(self.frame_number, now, [])

    def on_token(self, session: Session, token: Token) -> None:
        if session.status != "streaming":
            return
        self.energies[session.model_id].on_token(token)
        self.council.observe_token(session.model_id, token)
        session.tokens.append(token.text)
        session.pending.append(token.text)

    def end_session(
        self,
        session: Session,
        now: float,
        failure: SourceError | None = None,
        *,
        cancelled: bool = False,
    ) -> None:
        """The source finished, failed or was cancelled: the next frame sends the last batch."""
        if session.status != "streaming":
            return
        session.status = "cancelled" if cancelled else "failed" if failure else "complete"
        self.energies[session.model_id].end_stream(now)
        if failure is not None:
            self.report(
                model_error(
                    failure,
                    session.model_id,
                    details={
                        "sessionId": session.id,
                        "modelId": session.model_id,
                        "tokensReceived": len(session.tokens),
                    },
                )
            )

    def report_frame_event(self, event: FrameEvent) -> None:
        """Add an energy event of the embedding program's own to the next frame."""
        self._pending_frame_events.append(event)

    def report(self, event: Event) -> None:
        """Queue a lossless event (an error, a reward) for the next frame."""
        self._pending_events.append(event)

    # -- the frame ----------------------------------------------------------------------------

    def tick(self, frame_number: int, now: float, *, shed_analysis: bool = False) -> FrameOutput:
        """Advance every model to ``now`` and build the frame's events.

        ``shed_analysis`` skips the council's pattern analysis (the first thing to go when
        the previous frame ran over budget); tokens, energy and rewards are never shed.
        """
        started = time.perf_counter()
        wall = wall_ms()
        self.frame_number = frame_number
        if self._still_at_rest():
            return self._rest_frame(frame_number, now, wall, started)
        # Errors go before the token batches: a failed session's error_event precedes its
        # final token_stream (isComplete), so a client that stops reading there knows why
        # (docs/decisions.md, "error before the last batch").
        errors = [e for e in self._pending_events if isinstance(e, ErrorEvent)]
        lossless: list[Event] = [*errors, *self._token_batches(wall, now)]
        lossless.extend(e for e in self._pending_events if not isinstance(e, ErrorEvent))
        self._pending_events.clear()

        counts: dict[str, int] = {}
        visible: list[str] = []
        generating: list[str] = []
        for model_id, energy in self.energies.items():
            energy.advance(now)
            counts[model_id] = energy.take_frame_tokens()
            if energy.active_streams > 0:
                generating.append(model_id)
            if counts[model_id] or energy.active_streams > 0 or energy.intensity > IDLE_VISIBLE:
                visible.append(model_id)
            self._track_flow(model_id, energy, now, wall)
        lossless.extend(self.rewards.on_tokens(self._total_tokens(), wall))

        fields: list[FrameEvent] = []
        for model_id, energy in self.energies.items():
            # A model fading out still gets the field that brings its intensity to 0.
            if model_id in visible or self._field_sent.get(model_id, 0.0) > 0.0:
                fields.extend(
                    self._field_event(
                        model_id,
                        energy.intensity,
                        energy.recent_intensities,
                        "lightning" if energy.is_burst else "stream",
                        frame_number,
                        wall,
                    )
                )
        council = len(visible) >= 2
        if council or self._field_sent.get(COUNCIL_ID, 0.0) > 0.0:
            members = [self.energies[m].intensity for m in visible]
            fields.extend(
                self._field_event(
                    COUNCIL_ID,
                    ensemble_energy(members) if council else 0.0,
                    tuple(members),
                    "interference",
                    frame_number,
                    wall,
                )
            )
        if len(generating) >= 2 and not shed_analysis:
            # Council events are history, not state: they travel lossless.
            lossless.extend(
                self.council.analyze(frame_number, now, wall, self.energies, generating)
            )
        else:
            # The analyzer must see models stop even when it does not run (a council that
            # meets again starts afresh: docs/decisions.md, The Council).
            self.council.retain(generating)

        processing_ms = min((time.perf_counter() - started) * 1000.0, FRAME_BUDGET_MS)
        # At idle the default model's (decaying) energy keeps the lifeline lit.
        rows = [(m, self.energies[m].total_eu, counts[m]) for m in visible or [self.default_model]]
        if council:  # the ensemble as one more row: the council's summed energy
            rows.append((COUNCIL_ID, sum(t for _, t, _ in rows), sum(c for _, _, c in rows)))
        updates: list[FrameEvent] = [
            energy_update(model_id, total, tokens, processing_ms, frame_number, wall)
            for model_id, total, tokens in rows
        ]
        self._remember(frame_number, now, lossless)
        external = [attrs.evolve(e, frame_number=frame_number) for e in self._pending_frame_events]
        self._pending_frame_events.clear()
        self._at_rest = self.rest_enabled and self._resting()
        self._retention_due = now + REST_RETENTION_INTERVAL
        return FrameOutput(
            frame_number=frame_number,
            frame_events=tuple(updates + fields + external),
            lossless_events=tuple(lossless),
            processing_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _resting(self) -> bool:
        """Whether the next frames, until an input arrives, can only be the default model's
        unchanging energy_update: no session live, no stream open, no model lit or flowing,
        no field left to fade out (the inputs that end rest are checked on every tick)."""
        return (
            not self._live
            and not self._flow_since
            and not any(self._field_sent.values())
            and all(
                energy.active_streams == 0
                and energy.state in _REST_STATES
                and energy.intensity < REST_INTENSITY
                for energy in self.energies.values()
            )
        )

    def _still_at_rest(self) -> bool:
        """At rest, and no input since the last frame has ended it."""
        return self._at_rest and not (
            self._live or self._pending_events or self._pending_frame_events
        )

    def tick_as_text(
        self, frame_number: int, now: float
    ) -> tuple[str, tuple[str, ...], str] | None:
        """The frame at rest as (channel, modelIds, wire text) of its one message: what
        :meth:`tick` would build, encoded, without building it (``rest_text.py``). None when
        not at rest, and nothing is done: then the frame is :meth:`tick`'s."""
        if not self._still_at_rest():
            return None
        started = time.perf_counter_ns()
        wall = wall_ms()
        total = self.energies[self.default_model].total_eu
        text = self._rest_text
        if text is None or text.total != total:
            try:
                text = self._rest_text = RestFrameText(self.default_model, total)
            except ValueError:  # a model id holding a placeholder's digits: build it then
                return None
        self.frame_number = frame_number
        self._rest_bookkeeping(frame_number, now)
        processing_ns = time.perf_counter_ns() - started
        return text.channel, text.model_ids, text.render(wall, frame_number, processing_ns)

    def _rest_bookkeeping(self, frame_number: int, now: float) -> None:
        """What a frame at rest still does: count, and age sessions out of retention."""
        self.rest_frames += 1
        if now >= self._retention_due:
            self._retention_due = now + REST_RETENTION_INTERVAL
            self._remember(frame_number, now, [])

    def _rest_frame(self, frame_number: int, now: float, wall: int, started: float) -> FrameOutput:
        """The frame at rest: what :meth:`tick` would build, without the work that cannot
        change it (decay below :data:`REST_INTENSITY` is settled by the next input)."""
        self._rest_bookkeeping(frame_number, now)
        model_id = self.default_model
        processing_ms = min((time.perf_counter() - started) * 1000.0, FRAME_BUDGET_MS)
        total = self.energies[model_id].total_eu
        return FrameOutput(
            frame_number=frame_number,
            frame_events=(energy_update(model_id, total, 0, processing_ms, frame_number, wall),),
            lossless_events=(),
            processing_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _token_batches(self, wall: int, now: float) -> list[Event]:
        """One token_stream per live session with this frame's tokens; the last says complete."""
        events: list[Event] = []
        for session in list(self._live.values()):
            finished = session.status != "streaming"
            if session.pending or finished:
                if session.first_sent_frame is None:
                    session.first_sent_frame = self.frame_number
                tokens = tuple(session.pending)
                session.pending.clear()
                if self.log is not None:
                    self.log.tokens_published(session.id, tokens, session.first_sent_frame)
                events.append(
                    TokenStream(
                        timestamp=wall,
                        payload=TokenStreamPayload(
                            tokens=tokens,
                            is_complete=finished,
                            session_id=session.id,
                            model_id=session.model_id,
                            energy_cost=round(len(tokens) * EU_PER_TOKEN, 6),
                        ),
                    )
                )
            if finished:
                session.completion_sent = True
                session.ended_at = now
                del self._live[session.id]
                if self.log is not None:
                    self.log.session_ended(session.id, session.status, wall / 1000.0)
                events.extend(
                    self.rewards.on_session_complete(
                        session.model_id,
                        len(session.tokens),
                        session.status != "complete",
                        wall,
                    )
                )
        return events

    def _track_flow(self, model_id: str, energy: ModelEnergy, now: float, wall: int) -> None:
        """Long flow without a stall earns its reward once per session."""
        flowing = energy.active_streams > 0 and energy.state in _FLOW_STATES
        if not flowing:
            self._flow_since.pop(model_id, None)
            return
        since = self._flow_since.setdefault(model_id, now)
        for session in self._live.values():
            if session.model_id == model_id and session.status == "streaming":
                self._pending_events.extend(
                    self.rewards.on_flow(session.id, now - max(since, session.started_at), wall)
                )

    def _total_tokens(self) -> int:
        own = sum(energy.token_count for energy in self.energies.values())
        return own + self.tokens_elsewhere()

    def council_started(self, model_count: int) -> None:
        """A prompt went to ``model_count`` models at once (rewards the first council)."""
        self._pending_events.extend(self.rewards.on_council_started(model_count, wall_ms()))

    def _field_event(
        self,
        key: str,
        intensity: float,
        samples: tuple[float, ...],
        field_type: Literal["lightning", "stream", "interference"],
        frame_number: int,
        wall: int,
    ) -> list[EnergyField]:
        """The energy_field for ``key`` if its intensity moved enough since the last one."""
        intensity = min(max(intensity, 0.0), 1.0)
        if intensity <= IDLE_VISIBLE:
            intensity = 0.0
        last = self._field_sent.get(key)
        fading_out = intensity == 0.0 and last not in (None, 0.0)
        if last is not None and abs(intensity - last) < FIELD_CHANGE and not fading_out:
            return []
        self._field_sent[key] = intensity
        samples = samples or (intensity,)
        span = max(len(samples) - 1, 1)
        points = tuple(
            FieldPoint(x=round(i / span, 4), y=round(e, 4), energy=round(e, 4))
            for i, e in enumerate(samples)
        )
        return [
            EnergyField(
                timestamp=wall,
                frame_number=frame_number,
                payload=EnergyFieldPayload(
                    field_type=field_type,
                    intensity=round(intensity, 4),
                    coordinates=points,
                    model_id=key,
                ),
            )
        ]

    def _remember(self, frame_number: int, now: float, lossless: list[Event]) -> None:
        """Log this frame's lossless events (tokens live in their sessions) and forget what
        is past retention: the oldest first, by count and by age."""
        log = self.log
        for event in lossless:
            if not isinstance(event, TokenStream):
                self.history.append(Logged(frame_number, now, event, self.run))
                if log is not None:
                    log.event_logged(self.run, frame_number, time.time(), encode(event))
        keep = self.retention
        history = self.history
        dropped = 0
        while history and (len(history) > keep.events or now - history[0].at > keep.seconds):
            history.popleft()
            dropped += 1
        finished = [s for s in self.sessions.values() if s.ended_at is not None]
        excess = len(self.sessions) - keep.sessions
        forgotten: list[str] = []
        for session in finished:
            assert session.ended_at is not None
            if excess <= 0 and now - session.ended_at <= keep.seconds:
                break
            del self.sessions[session.id]
            forgotten.append(session.id)
            excess -= 1
        if log is not None and (dropped or forgotten):
            log.events_forgotten(dropped)
            log.sessions_forgotten(forgotten)

    # -- views ----------------------------------------------------------------------------------

    @property
    def live_sessions(self) -> int:
        return len(self._live)


def model_error(
    failure: SourceError, model_id: str, details: dict[str, object] | None = None
) -> ErrorEvent:
    """The error_event (component ``model``) that tells the user what happened and what to do."""
    text = with_hint(f"model {model_id}: {failure.message}", failure.hint)
    return ErrorEvent(
        timestamp=wall_ms(),
        payload=ErrorPayload(
            severity="error",
            code=failure.code,
            message=text[:1000],
            component="model",
            details=dict(details or {"modelId": model_id}),
            recoverable=True,
        ),
    )
