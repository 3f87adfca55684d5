"""Server events encoded as the server sends them, for scripted servers and for the client core
fed by hand: the opening startup and snapshot, token text, energy frames, rewards and errors."""

from __future__ import annotations

from wirthforge_trio.contract.codec import encode
from wirthforge_trio.contract.events import (
    EnergyUpdate,
    EnergyUpdatePayload,
    ErrorEvent,
    ErrorPayload,
    RewardEvent,
    RewardPayload,
    SnapshotSession,
    StartupComplete,
    StartupCompletePayload,
    StateSnapshot,
    StateSnapshotPayload,
    TokenStream,
    TokenStreamPayload,
)


def startup() -> str:
    return encode(
        StartupComplete(
            timestamp=1,
            payload=StartupCompletePayload(model="demo", tier="Low-Tier", version="0.1.0"),
        )
    )


def snapshot(
    instance: str,
    *,
    resumed: bool,
    sessions: tuple[SnapshotSession, ...] = (),
    reason: str | None = None,
    timestamp: int = 2,
) -> str:
    return encode(
        StateSnapshot(
            timestamp=timestamp,
            payload=StateSnapshotPayload(
                server_instance=instance,
                resumed=resumed,
                reason=reason,
                frame_number=1,
                models=(),
                sessions=sessions,
                rewards=(),
                channels=("energy", "experience", "council", "reward", "system"),
                retention_sessions=64,
                retention_seconds=900.0,
            ),
        )
    )


def row(
    sid: str, tokens: int, *, status: str = "streaming", resumable: bool = True
) -> SnapshotSession:
    return SnapshotSession(
        session_id=sid,
        model_id="demo",
        status=status,  # type: ignore[arg-type]
        tokens=tokens,
        resumable=resumable,
    )


def token_text(sid: str, tokens: list[str], *, complete: bool = False, timestamp: int = 3) -> str:
    return encode(
        TokenStream(
            timestamp=timestamp,
            payload=TokenStreamPayload(
                tokens=tuple(tokens), is_complete=complete, session_id=sid, model_id="demo"
            ),
        )
    )


def frame_event(number: int) -> EnergyUpdate:
    """The demo model's energy_update at rest, as frame ``number``."""
    return EnergyUpdate(
        timestamp=4,
        frame_number=number,
        payload=EnergyUpdatePayload(
            total_energy=0.0,
            delta_energy=0.0,
            tokens_generated=0,
            processing_time=0.1,
            model_id="demo",
        ),
    )


def frame(number: int) -> str:
    return encode(frame_event(number))


def reward_event(title: str = "First Light", timestamp: int = 1) -> RewardEvent:
    return RewardEvent(
        timestamp=timestamp,
        payload=RewardPayload(reward_type="achievement", title=title, points=10),
    )


def reward_text(title: str, timestamp: int = 5) -> str:
    return encode(reward_event(title, timestamp))


def error_event(timestamp: int = 1) -> ErrorEvent:
    """A model's error_event."""
    return ErrorEvent(
        timestamp=timestamp,
        payload=ErrorPayload(severity="error", code="MODEL_ERROR", message="m", component="model"),
    )
