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
from collections import OrderedDict
from typing import Final, Literal

import attrs

from ..contract.events import (
    FRAME_BUDGET_MS,
    EnergyField,
    EnergyFieldPayload,
    EnergyUpdate,
    EnergyUpdatePayload,
    ErrorEvent,
    ErrorPayload,
    Event,
    FieldPoint,
    FrameEvent,
    TokenStream,
    TokenStreamPayload,
)
from ..sources.base import Token
from .energy import EU_PER_TOKEN, EnergyProfile, ModelEnergy

FIELD_CHANGE: Final = 0.01
"""An energy_field is sent when a model's intensity moved by at least this much."""

IDLE_VISIBLE: Final = 0.001
"""Below this intensity a model with no open stream no longer gets energy_update frames."""

RETAINED_SESSIONS: Final = 256
"""Finished sessions kept (with their text) before the oldest are forgotten."""

_INVALID_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")

SessionStatus = Literal["streaming", "complete", "failed"]


def model_id_for(name: str) -> str:
    """A contract-valid modelId for a runtime's model name: ``qwen3:0.6b`` → ``qwen3-0_6b``."""
    mapped = _INVALID_ID_CHARS.sub("_", name.replace(":", "-"))
    return mapped or "model"


@attrs.define
class Session:
    """One model's answer to one prompt: its text so far and what the next frame must send."""

    id: str
    model_id: str
    started_at: float
    tokens: list[str] = attrs.field(factory=list)
    pending: list[str] = attrs.field(factory=list)
    status: SessionStatus = "streaming"
    completion_sent: bool = False

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

    def __init__(self, model_ids: list[str], profile: EnergyProfile, default_model: str) -> None:
        if default_model not in model_ids:
            raise ValueError(f"default model {default_model!r} is not among {model_ids}")
        self.profile = profile
        self.default_model = default_model
        self.energies: dict[str, ModelEnergy] = {m: ModelEnergy(profile) for m in model_ids}
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self._live: dict[str, Session] = {}
        self._field_sent: dict[str, float] = {}
        self._errors: list[ErrorEvent] = []

    # -- inputs -----------------------------------------------------------------------------

    def start_session(self, model_id: str, now: float) -> Session:
        energy = self.energies[model_id]
        session = Session(id=f"s-{uuid.uuid4().hex[:16]}", model_id=model_id, started_at=now)
        energy.start_prompt(now)
        self.sessions[session.id] = session
        self._live[session.id] = session
        self._forget_old_sessions()
        return session

    def on_token(self, session: Session, token: Token) -> None:
        if session.status != "streaming":
            return
        self.energies[session.model_id].on_token(token)
        session.tokens.append(token.text)
        session.pending.append(token.text)

    def end_session(self, session: Session, now: float, error: str | None = None) -> None:
        """The source finished (or failed): the next frame sends the final batch."""
        if session.status != "streaming":
            return
        session.status = "complete" if error is None else "failed"
        self.energies[session.model_id].end_stream(now)
        if error is not None:
            self._errors.append(
                ErrorEvent(
                    timestamp=_wall_ms(),
                    payload=ErrorPayload(
                        severity="error",
                        code="MODEL_ERROR",
                        message=f"model {session.model_id} stopped: {error}"[:1000],
                        component="model",
                        details={"sessionId": session.id, "modelId": session.model_id},
                        recoverable=True,
                    ),
                )
            )

    # -- the frame ----------------------------------------------------------------------------

    def tick(self, frame_number: int, now: float) -> FrameOutput:
        """Advance every model to ``now`` and build the frame's events."""
        started = time.perf_counter()
        wall = _wall_ms()
        lossless: list[Event] = []
        for session in list(self._live.values()):
            finished = session.status != "streaming"
            if session.pending or finished:
                tokens = tuple(session.pending)
                session.pending.clear()
                lossless.append(
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
                del self._live[session.id]
        lossless.extend(self._errors)
        self._errors.clear()

        fields: list[FrameEvent] = []
        counts: dict[str, int] = {}
        visible: list[str] = []
        for model_id, energy in self.energies.items():
            energy.advance(now)
            counts[model_id] = energy.take_frame_tokens()
            shown = bool(counts[model_id]) or energy.active_streams > 0
            if shown or energy.intensity > IDLE_VISIBLE:
                visible.append(model_id)
            # A model fading out still gets the field that brings its intensity to 0.
            if model_id in visible or self._field_sent.get(model_id, 0.0) > 0.0:
                field = self._field_event(model_id, energy, frame_number, wall)
                if field is not None:
                    fields.append(field)

        processing_ms = min((time.perf_counter() - started) * 1000.0, FRAME_BUDGET_MS)
        updates: list[FrameEvent] = []
        # At idle the default model's (decaying) energy keeps the lifeline lit.
        for model_id in visible or [self.default_model]:
            energy = self.energies[model_id]
            updates.append(
                EnergyUpdate(
                    timestamp=wall,
                    frame_number=frame_number,
                    payload=EnergyUpdatePayload(
                        total_energy=round(energy.total_eu, 6),
                        delta_energy=round(counts[model_id] * EU_PER_TOKEN, 6),
                        tokens_generated=counts[model_id],
                        processing_time=round(processing_ms, 4),
                        model_id=model_id,
                    ),
                )
            )
        return FrameOutput(
            frame_number=frame_number,
            frame_events=tuple(updates + fields),
            lossless_events=tuple(lossless),
            processing_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _field_event(
        self, model_id: str, energy: ModelEnergy, frame_number: int, wall: int
    ) -> EnergyField | None:
        intensity = min(max(energy.intensity, 0.0), 1.0)
        if intensity <= IDLE_VISIBLE:
            intensity = 0.0
        last = self._field_sent.get(model_id)
        fading_out = intensity == 0.0 and last not in (None, 0.0)
        if last is not None and abs(intensity - last) < FIELD_CHANGE and not fading_out:
            return None
        self._field_sent[model_id] = intensity
        samples = energy.recent_intensities or (intensity,)
        span = max(len(samples) - 1, 1)
        points = tuple(
            FieldPoint(x=round(i / span, 4), y=round(e, 4), energy=round(e, 4))
            for i, e in enumerate(samples)
        )
        return EnergyField(
            timestamp=wall,
            frame_number=frame_number,
            payload=EnergyFieldPayload(
                field_type="lightning" if energy.is_burst else "stream",
                intensity=round(intensity, 4),
                coordinates=points,
                model_id=model_id,
            ),
        )

    def _forget_old_sessions(self) -> None:
        finished = [s for s in self.sessions.values() if s.completion_sent]
        for session in finished[: max(0, len(self.sessions) - RETAINED_SESSIONS)]:
            del self.sessions[session.id]

    # -- views ----------------------------------------------------------------------------------

    @property
    def live_sessions(self) -> int:
        return len(self._live)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000
