"""The wire contract: one attrs class per event, in the shape WF-TECH-003 publishes.

Python names are snake_case; the converter in :mod:`.codec` renames them to the camelCase the
wire uses. Constraints that the JSON Schema must carry (bounds, patterns, lengths) live in
each field's ``metadata["schema"]`` so that :mod:`.schema` can generate the schema from these
classes alone. ``TYPE`` and ``CHANNEL`` are class constants: they are fixed per event and
written into the envelope by the converter.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Final, Literal, get_args

import attrs

MODEL_ID_PATTERN: Final = r"^[a-zA-Z0-9_-]+$"
ERROR_CODE_PATTERN: Final = r"^[A-Z0-9_]+$"
SEMVER_PATTERN: Final = r"^\d+\.\d+\.\d+$"
FRAME_RATE: Final = 60
FRAME_BUDGET_MS: Final = 16.67

Channel = Literal["energy", "experience", "council", "reward", "system"]
CHANNELS: Final[tuple[Channel, ...]] = get_args(Channel)
Tier = Literal["Low-Tier", "Mid-Tier", "High-Tier"]
Capability = Literal["council", "turbo", "visualization", "plugins"]
Severity = Literal["info", "warning", "error", "critical"]
Component = Literal["orchestrator", "decipher", "websocket", "model", "ui"]


def wall_ms() -> int:
    """Milliseconds since the Unix epoch: every envelope's ``timestamp``."""
    return time.time_ns() // 1_000_000


def _c(**schema: Any) -> dict[str, Any]:
    """Field metadata holding extra JSON Schema keywords for the generator."""
    return {"schema": schema}


def _field(**schema: Any) -> Any:
    return attrs.field(metadata=_c(**schema))


def _optional(**schema: Any) -> Any:
    return attrs.field(default=None, metadata=_c(**schema))


_MODEL_ID = {"pattern": MODEL_ID_PATTERN}
_UNIT = {"minimum": 0, "maximum": 1}
_NON_NEGATIVE = {"minimum": 0}


# --- payloads -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StartupCompletePayload:
    model: str = _field(**_MODEL_ID)
    tier: Tier
    version: str = _field(pattern=SEMVER_PATTERN)
    frame_rate: Literal[60] = FRAME_RATE
    # Optional in the published schema, yet browser clients read it unconditionally: it is
    # never None, so it is always sent (an empty list at worst).
    capabilities: tuple[Capability, ...] = attrs.field(default=(), metadata={"optional": True})


@attrs.frozen(kw_only=True)
class EnergyDistribution:
    generation: float | None = _optional(**_NON_NEGATIVE)
    attention: float | None = _optional(**_NON_NEGATIVE)
    reasoning: float | None = _optional(**_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class EnergyUpdatePayload:
    total_energy: float = _field(**_NON_NEGATIVE)
    delta_energy: float
    tokens_generated: int = _field(**_NON_NEGATIVE)
    processing_time: float = _field(minimum=0, maximum=FRAME_BUDGET_MS)
    model_id: str = _field(**_MODEL_ID)
    energy_distribution: EnergyDistribution | None = None


@attrs.frozen(kw_only=True)
class FieldPoint:
    x: float
    y: float
    energy: float = _field(**_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class EnergyFieldPayload:
    field_type: Literal["lightning", "stream", "interference", "resonance"]
    intensity: float = _field(**_UNIT)
    coordinates: tuple[FieldPoint, ...]
    model_id: str = _field(**_MODEL_ID)


@attrs.frozen(kw_only=True)
class TokenStreamPayload:
    tokens: tuple[str, ...]
    is_complete: bool
    session_id: str
    model_id: str = _field(**_MODEL_ID)
    energy_cost: float | None = _optional(**_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class InterferencePayload:
    pattern_type: Literal["constructive", "destructive", "neutral"]
    models: tuple[str, ...] = _field(minItems=2, items=_MODEL_ID)
    intensity: float = _field(**_UNIT)
    coherence_score: float = _field(**_UNIT)


@attrs.frozen(kw_only=True)
class ResonancePayload:
    resonance_type: Literal["harmonic", "fundamental", "overtone"]
    frequency: float = _field(**_NON_NEGATIVE)
    amplitude: float = _field(**_UNIT)
    participants: tuple[str, ...] = _field(minItems=2, items=_MODEL_ID)
    phase: float | None = _optional(minimum=0, maximum=360)


@attrs.frozen(kw_only=True)
class RewardPayload:
    reward_type: Literal["achievement", "milestone", "feedback", "level_up"]
    title: str = _field(maxLength=100)
    points: int = _field(**_NON_NEGATIVE)
    description: str | None = _optional(maxLength=500)
    level: int | None = _optional(minimum=1, maximum=5)
    energy_bonus: float | None = _optional(**_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class HeartbeatPayload:
    sequence: int = _field(**_NON_NEGATIVE)
    server_time: int = _field(**_NON_NEGATIVE)
    frame_rate: float | None = None
    connection_id: str | None = None


@attrs.frozen(kw_only=True)
class ErrorPayload:
    severity: Severity
    code: str = _field(pattern=ERROR_CODE_PATTERN)
    message: str = _field(maxLength=1000)
    component: Component
    details: dict[str, Any] | None = None
    recoverable: bool | None = None


@attrs.frozen(kw_only=True)
class SubscriptionsPayload:
    channels: tuple[str, ...]
    models: tuple[str, ...] | None = None
    """The modelIds whose events the connection receives; absent: every model."""


# --- envelopes ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Event:
    """The envelope every server message shares: type, channel, timestamp, payload."""

    TYPE: ClassVar[str]
    CHANNEL: ClassVar[Channel]
    STANDARD: ClassVar[bool] = True
    TITLE: ClassVar[str]
    TOPIC: ClassVar[str | None] = None
    """What a client subscribes to for this event: its channel, or an extension topic."""

    timestamp: int = _field(**_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class FrameEvent(Event):
    """An event that belongs to one 60 Hz frame and carries its number."""

    frame_number: int = _field(**_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class StartupComplete(Event):
    TYPE = "startup_complete"
    CHANNEL = "system"
    TITLE = "Startup Complete Event"
    payload: StartupCompletePayload


@attrs.frozen(kw_only=True)
class EnergyUpdate(FrameEvent):
    TYPE = "energy_update"
    CHANNEL = "energy"
    TITLE = "Energy Update Event"
    payload: EnergyUpdatePayload


@attrs.frozen(kw_only=True)
class EnergyField(FrameEvent):
    TYPE = "energy_field"
    CHANNEL = "energy"
    TITLE = "Energy Field Event"
    payload: EnergyFieldPayload


@attrs.frozen(kw_only=True)
class TokenStream(Event):
    TYPE = "token_stream"
    CHANNEL = "experience"
    TITLE = "Token Stream Event"
    payload: TokenStreamPayload


@attrs.frozen(kw_only=True)
class InterferenceEvent(FrameEvent):
    TYPE = "interference_event"
    CHANNEL = "council"
    TITLE = "Interference Event"
    payload: InterferencePayload


@attrs.frozen(kw_only=True)
class ResonanceEvent(FrameEvent):
    TYPE = "resonance_event"
    CHANNEL = "council"
    TITLE = "Resonance Event"
    payload: ResonancePayload


@attrs.frozen(kw_only=True)
class RewardEvent(Event):
    TYPE = "reward_event"
    CHANNEL = "reward"
    TITLE = "Reward Event"
    payload: RewardPayload


@attrs.frozen(kw_only=True)
class Heartbeat(Event):
    TYPE = "heartbeat"
    CHANNEL = "system"
    TITLE = "Heartbeat Event"
    payload: HeartbeatPayload


@attrs.frozen(kw_only=True)
class ErrorEvent(Event):
    TYPE = "error_event"
    CHANNEL = "system"
    TITLE = "Error Event"
    payload: ErrorPayload


# Extensions: same envelope, sent only in reply to a client's request.


@attrs.frozen(kw_only=True)
class Pong(Event):
    """Reply to a client ``ping``: its payload comes back untouched, for round-trip timing."""

    TYPE = "pong"
    CHANNEL = "system"
    STANDARD = False
    TITLE = "Pong (extension)"
    payload: dict[str, Any]


@attrs.frozen(kw_only=True)
class Subscriptions(Event):
    """Reply to ``subscribe``/``unsubscribe``: the channels the connection now receives."""

    TYPE = "subscriptions"
    CHANNEL = "system"
    STANDARD = False
    TITLE = "Subscriptions (extension)"
    payload: SubscriptionsPayload


ModelStatusValue = Literal["checking", "loading", "ready", "unavailable"]


@attrs.frozen(kw_only=True)
class ModelStatusPayload:
    model_id: str = _field(**_MODEL_ID)
    name: str
    source: Literal["demo", "ollama", "openai", "custom"]
    status: ModelStatusValue
    message: str | None = _optional(maxLength=1000)


@attrs.frozen(kw_only=True)
class ModelStatus(Event):
    """A model's lifecycle changed (checking, loading, ready, unavailable); topic ``models``."""

    TYPE = "model_status"
    CHANNEL = "system"
    STANDARD = False
    TITLE = "Model Status (extension)"
    TOPIC = "models"
    payload: ModelStatusPayload


SessionStatusValue = Literal["streaming", "complete", "failed", "cancelled", "unknown"]


@attrs.frozen(kw_only=True)
class SnapshotModel:
    model_id: str = _field(**_MODEL_ID)
    total_energy: float = _field(**_NON_NEGATIVE)
    intensity: float = _field(**_UNIT)
    state: Literal["IDLE", "CHARGING", "FLOWING", "STALLING", "SATURATED", "DRAINED"]


@attrs.frozen(kw_only=True)
class SnapshotSession:
    session_id: str
    model_id: str | None = _optional(**_MODEL_ID)
    status: SessionStatusValue
    tokens: int = _field(**_NON_NEGATIVE)
    """Tokens the server has sent of this session so far (live ones come after)."""
    resumable: bool
    reason: str | None = None
    """Why it cannot be resumed (expired, unknown, server restarted)."""


@attrs.frozen(kw_only=True)
class StateSnapshotPayload:
    server_instance: str
    resumed: bool
    """False when nothing could be resumed (another server instance, or no resume asked)."""
    reason: str | None = None
    frame_number: int = _field(**_NON_NEGATIVE)
    models: tuple[SnapshotModel, ...]
    sessions: tuple[SnapshotSession, ...]
    rewards: tuple[str, ...]
    channels: tuple[str, ...]
    subscribed_models: tuple[str, ...] | None = None
    retention_sessions: int = _field(**_NON_NEGATIVE)
    retention_seconds: float = _field(**_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class StateSnapshot(Event):
    """The state a resuming client needs, sent before the events it missed."""

    TYPE = "state_snapshot"
    CHANNEL = "system"
    STANDARD = False
    TITLE = "State Snapshot (extension)"
    payload: StateSnapshotPayload


EXTENSION_TOPICS: Final[tuple[str, ...]] = ("models",)
"""Opt-in streams beside the five channels: a client receives them after subscribing."""


def models_of(event: Event) -> tuple[str, ...]:
    """The modelIds an event is about (empty when it is about none), for model filters."""
    payload = getattr(event, "payload", None)
    model_id = getattr(payload, "model_id", None)
    if isinstance(model_id, str):
        return (model_id,)
    for name in ("models", "participants"):
        ids = getattr(payload, name, None)
        if isinstance(ids, tuple):
            return ids
    return ()


def topic_of(event: Event) -> str:
    """The subscription name that decides who receives ``event``."""
    return event.TOPIC or event.CHANNEL


STANDARD_EVENTS: Final[tuple[type[Event], ...]] = (
    StartupComplete,
    EnergyUpdate,
    EnergyField,
    TokenStream,
    InterferenceEvent,
    ResonanceEvent,
    RewardEvent,
    Heartbeat,
    ErrorEvent,
)
EXTENSION_EVENTS: Final[tuple[type[Event], ...]] = (
    Pong,
    Subscriptions,
    ModelStatus,
    StateSnapshot,
)
ALL_EVENTS: Final = STANDARD_EVENTS + EXTENSION_EVENTS
EVENTS_BY_TYPE: Final[dict[str, type[Event]]] = {cls.TYPE: cls for cls in ALL_EVENTS}


# --- client messages ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ClientMessage:
    """A message a client may send: ``{"type": ..., "payload": {...}}``."""

    TYPE: ClassVar[str]


@attrs.frozen(kw_only=True)
class HeartbeatResponsePayload:
    sequence: int | None = _optional(**_NON_NEGATIVE)
    client_time: int | None = _optional(**_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class HeartbeatResponse(ClientMessage):
    """The client's answer to a ``heartbeat``; it keeps the connection alive."""

    TYPE = "heartbeat_response"
    payload: HeartbeatResponsePayload = HeartbeatResponsePayload()


@attrs.frozen(kw_only=True)
class ChannelsPayload:
    """Channels and extension topics, and modelIds, to add or remove (one list may be empty)."""

    channels: tuple[str, ...] = attrs.field(default=(), metadata={"optional": True})
    models: tuple[str, ...] = attrs.field(
        default=(),
        metadata={"optional": True, "schema": {"items": {"pattern": r"^([a-zA-Z0-9_-]+|\*)$"}}},
    )
    """``["*"]`` in a subscribe: every model again."""


@attrs.frozen(kw_only=True)
class Subscribe(ClientMessage):
    TYPE = "subscribe"
    payload: ChannelsPayload


@attrs.frozen(kw_only=True)
class Unsubscribe(ClientMessage):
    TYPE = "unsubscribe"
    payload: ChannelsPayload


@attrs.frozen(kw_only=True)
class Ping(ClientMessage):
    """Round-trip probe: the server echoes ``payload`` in a ``pong``."""

    TYPE = "ping"
    payload: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class HeldSession:
    """What a reconnecting client already holds of one session."""

    session_id: str
    tokens: int = _field(**_NON_NEGATIVE)
    complete: bool = attrs.field(default=False, metadata={"optional": True})


@attrs.frozen(kw_only=True)
class ResumePayload:
    server_instance: str | None = None
    last_frame: int | None = _optional(**_NON_NEGATIVE)
    sessions: tuple[HeldSession, ...] = attrs.field(default=(), metadata={"optional": True})
    channels: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = _optional(items=_MODEL_ID)


@attrs.frozen(kw_only=True)
class Resume(ClientMessage):
    """First message on a ``/ws?resume=1`` connection: what the client has from before."""

    TYPE = "resume"
    payload: ResumePayload = ResumePayload()


CLIENT_MESSAGES: Final[tuple[type[ClientMessage], ...]] = (
    HeartbeatResponse,
    Subscribe,
    Unsubscribe,
    Ping,
    Resume,
)
CLIENT_MESSAGES_BY_TYPE: Final[dict[str, type[ClientMessage]]] = {
    cls.TYPE: cls for cls in CLIENT_MESSAGES
}
