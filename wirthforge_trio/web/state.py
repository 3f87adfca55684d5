"""What one running server shares between its routes: the engine, the hub, the access rules,
and the questions routes ask of them (which model a name means, what a client that just
subscribed needs to catch up)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import attrs
from quart import current_app

from ..config import Settings
from ..contract.codec import encode
from ..contract.events import Capability, Event, ResumePayload, Tier
from ..engine.recovery import wants_for
from ..engine.runtime import Engine
from ..protocol.limits import RateLimit
from ..security import AccessPolicy, BrowserPolicy, ConnectionLimiter, LogThrottle, Refusal
from ..transport.connection import Connection
from ..transport.hub import Hub

if TYPE_CHECKING:  # the broker needs its extra (coredis) only when one is configured
    from ..broker.wiring import Broker
else:
    Broker = Any

log = logging.getLogger("wirthforge_trio")


@attrs.define
class ServerState:
    """Everything one running server shares between its routes (``app.wirthforge``)."""

    settings: Settings
    tier: Tier
    hub: Hub
    engine: Engine
    access: AccessPolicy
    browser: BrowserPolicy
    """The Host allowlist and the origins (DNS rebinding, cross-site requests)."""
    limiter: ConnectionLimiter
    rate_limit: RateLimit
    body_cap: int
    """Largest request body accepted, in bytes (a prompt's bytes, JSON-escaped, and more)."""
    started_at: float = attrs.field(factory=time.monotonic)
    startup_capabilities: tuple[Capability, ...] = ("visualization",)
    throttle: LogThrottle = attrs.field(factory=LogThrottle)
    broker: Broker | None = None
    """The Redis broker, when several processes share one stream (``broker/``)."""

    def log_refusal(self, refusal: Refusal, remote: str | None, what: str) -> None:
        """One line per kind of refusal per 10 s; the token itself is never logged."""
        quiet = self.throttle.allow(refusal.reason, time.monotonic())
        if quiet is not None:
            more = f" ({quiet} more since the last)" if quiet else ""
            log.warning("refused %s from %s: %s%s", what, remote, refusal.reason, more)

    def join(self, connection: Connection, resume: ResumePayload | None) -> None:
        """Queue a resuming client's catch-up and add it to the hub in one step (no await
        between), so every event is either in the catch-up or live, never both or neither."""
        if resume is not None:
            protocol = connection.protocol
            connection.queue_catch_up(
                encode(event)
                for event in self.engine.catch_up(
                    resume,
                    wants=wants_for(protocol.wants, protocol.wants_models),
                    channels=protocol.channels,
                    subscribed_models=protocol.subscribed_models,
                )
            )
        self.hub.add(connection)

    def resolve_model(self, name: str) -> str:
        """A modelId from what a client may say: the id, the runtime's name, or the spec."""
        models = self.engine.models
        if name in models:
            return name
        for model_id, entry in models.items():
            if name in (entry.source.name, f"{entry.source.kind}:{entry.source.name}"):
                return model_id
        return name

    def current_state(self, topic: str) -> list[Event]:
        """What a client that just subscribed to an extension topic needs to catch up."""
        if topic == "models":
            return [entry.status_event() for entry in self.engine.models.values()]
        return []

    def models_view(self) -> list[dict[str, Any]]:
        """Each model's source, status and energy, as ``/models`` and ``/status`` show them."""
        engine = self.engine
        return [
            {
                "modelId": model_id,
                "name": entry.source.name,
                "source": entry.source.kind,
                "status": entry.status,
                "message": entry.message,
                "state": str(engine.decipher.energies[model_id].state),
                "intensity": round(engine.decipher.energies[model_id].intensity, 4),
                "totalEnergy": round(engine.decipher.energies[model_id].total_eu, 6),
            }
            for model_id, entry in engine.models.items()
        ]


def server_state() -> ServerState:
    """The running app's state, from inside a request or WebSocket handler."""
    state: ServerState = current_app.extensions["wirthforge"]
    return state
