"""Sans-IO per-connection protocol: what to answer, refuse or close, with no sockets and no Trio.

The transport feeds it the client's raw messages and the clock's readings; it hands back
:class:`Reply` and :class:`Close` actions. Heartbeat bookkeeping (sequence numbers, round
trips, the liveness deadline) and channel subscriptions live here too, so the rules can be
tested without a running loop.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any, Final

import attrs

from ..contract.close_codes import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
)
from ..contract.codec import ClientMessageError, decode_client_message
from ..contract.events import (
    CHANNELS,
    EXTENSION_TOPICS,
    ErrorEvent,
    ErrorPayload,
    Event,
    Heartbeat,
    HeartbeatPayload,
    HeartbeatResponse,
    Ping,
    Pong,
    Resume,
    ResumePayload,
    Subscribe,
    Subscriptions,
    SubscriptionsPayload,
    Unsubscribe,
)
from .limits import MessageRateLimiter, RateLimit, Verdict

SUBSCRIBABLE: Final = CHANNELS + EXTENSION_TOPICS
"""The five standard channels (on by default) and the opt-in extension topics."""
_EVERY_CHANNEL: Final = frozenset(CHANNELS)
"""The channels a frame's events may be on."""

ALWAYS_ON: Final = frozenset({"system"})
"""Channels a connection cannot leave: the handshake, heartbeats, errors and replies."""


@attrs.frozen
class Reply:
    """Send this event to the client on the lossless queue."""

    event: Event


@attrs.frozen
class Close:
    """Close the connection with this code once the queued replies are sent."""

    code: int
    reason: str


@attrs.frozen
class CatchUp:
    """The client just subscribed to an extension topic: send it the topic's current state."""

    topic: str


@attrs.frozen
class Join:
    """Start the live stream for this connection; with ``resume``, catch it up first."""

    resume: ResumePayload | None


Action = Reply | Close | CatchUp | Join


def error_event(
    code: str,
    message: str,
    *,
    timestamp: int,
    severity: str = "warning",
    recoverable: bool = True,
    details: dict[str, Any] | None = None,
) -> ErrorEvent:
    """An ``error_event`` from the WebSocket layer."""
    return ErrorEvent(
        timestamp=timestamp,
        payload=ErrorPayload(
            severity=severity,  # type: ignore[arg-type]
            code=code,
            message=message[:1000],
            component="websocket",
            details=details or None,
            recoverable=recoverable,
        ),
    )


class ConnectionProtocol:
    """The rules of one client connection."""

    def __init__(
        self,
        connection_id: str,
        *,
        max_message_bytes: int,
        heartbeat_timeout: float,
        rtt_samples: int = 32,
        expect_resume: bool = False,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.max_message_bytes = max_message_bytes
        self.heartbeat_timeout = heartbeat_timeout
        self.subscriptions: set[str] = set(CHANNELS)
        self.models_included: set[str] | None = None
        """Only these modelIds' events (None: every model), minus ``models_excluded``."""
        self.models_excluded: set[str] = set()
        self.awaiting_resume = expect_resume
        """Opened with ``?resume=1``: the first message decides how the stream starts."""
        self._heartbeat_sequence = 0
        self._heartbeats_in_flight: dict[int, float] = {}
        self._rtts: deque[float] = deque(maxlen=rtt_samples)
        self._last_response: float | None = None
        self.closed: Close | None = None
        self.rate_limiter = MessageRateLimiter(rate_limit) if rate_limit is not None else None

    # -- heartbeats ---------------------------------------------------------------------------

    def heartbeat(self, now: float, wall_ms: int, frame_rate: float) -> Heartbeat:
        """The next heartbeat to send; remembers when it left for round-trip timing."""
        sequence = self._heartbeat_sequence
        self._heartbeat_sequence += 1
        self._heartbeats_in_flight[sequence] = now
        # Only the recent ones can still be answered meaningfully.
        while len(self._heartbeats_in_flight) > 16:
            del self._heartbeats_in_flight[next(iter(self._heartbeats_in_flight))]
        return Heartbeat(
            timestamp=wall_ms,
            payload=HeartbeatPayload(
                sequence=sequence,
                server_time=wall_ms,
                frame_rate=round(frame_rate, 2),
                connection_id=self.connection_id,
            ),
        )

    @property
    def liveness_deadline(self) -> float | None:
        """When the client counts as gone, or None until it has answered a heartbeat."""
        if self._last_response is None:
            return None
        return self._last_response + self.heartbeat_timeout

    @property
    def round_trips_ms(self) -> tuple[float, ...]:
        return tuple(self._rtts)

    def rtt_summary(self) -> dict[str, float | int | None]:
        """Heartbeat round trips in ms: count, last, median."""
        rtts = self._rtts
        return {
            "samples": len(rtts),
            "lastMs": round(rtts[-1], 3) if rtts else None,
            "medianMs": round(statistics.median(rtts), 3) if rtts else None,
        }

    # -- client messages ----------------------------------------------------------------------

    def receive(self, data: str | bytes, now: float, wall_ms: int) -> list[Action]:
        """Everything the server does in answer to one client message."""
        if self.closed is not None:
            return []
        if self.rate_limiter is not None:
            verdict = self.rate_limiter.check(now)
            if verdict is not Verdict.PASS:
                return self._over_rate(verdict, wall_ms)
        size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "replace"))
        if size > self.max_message_bytes:
            self.closed = Close(CLOSE_TOO_BIG, "message too big")
            return [
                Reply(
                    error_event(
                        "MESSAGE_TOO_LARGE",
                        f"message of {size} bytes is over this server's limit of "
                        f"{self.max_message_bytes} bytes; the connection is closed (1009)",
                        timestamp=wall_ms,
                        severity="error",
                        details={"size": size, "limit": self.max_message_bytes},
                    )
                ),
                self.closed,
            ]
        try:
            message = decode_client_message(data)
        except ClientMessageError as exc:
            error = error_event(exc.code, exc.message, timestamp=wall_ms, details=exc.details)
            return [*self.join(), Reply(error)]
        if isinstance(message, Resume):
            return self._resume(message, wall_ms)
        return self.join() + self._handle(message, now, wall_ms)

    def _over_rate(self, verdict: Verdict, wall_ms: int) -> list[Action]:
        """A message over the rate limit is dropped unread: said once, then 1008 if it lasts."""
        assert self.rate_limiter is not None
        limit = self.rate_limiter.limit
        details = {
            "rate": limit.rate,
            "burst": limit.burst,
            "closeAfterSeconds": limit.close_after,
            "dropped": self.rate_limiter.dropped,
        }
        if verdict is Verdict.WARN:
            message = (
                f"over this server's limit of {limit.rate:g} messages/s (bursts of "
                f"{limit.burst}): messages are dropped unanswered until the rate falls; "
                f"{limit.close_after:g} s over it closes the connection (1008)"
            )
            return [Reply(error_event("RATE_LIMITED", message, timestamp=wall_ms, details=details))]
        if verdict is Verdict.DROP:
            return []
        self.closed = Close(CLOSE_POLICY, "message rate limit exceeded")
        message = (
            f"over the limit of {limit.rate:g} messages/s for {limit.close_after:g} s; "
            "the connection is closed (1008)"
        )
        error = error_event(
            "RATE_LIMIT_EXCEEDED", message, timestamp=wall_ms, severity="error", details=details
        )
        return [Reply(error), self.closed]

    def join(self) -> list[Action]:
        """The live stream starts now, without a resume (also when the wait for one expires)."""
        if not self.awaiting_resume:
            return []
        self.awaiting_resume = False
        return [Join(None)]

    def _resume(self, message: Resume, wall_ms: int) -> list[Action]:
        if not self.awaiting_resume:
            return [
                Reply(
                    error_event(
                        "RESUME_NOT_EXPECTED",
                        "resume: send it as the first message of a connection opened with "
                        "/ws?resume=1 (this connection is already live)",
                        timestamp=wall_ms,
                    )
                )
            ]
        self.awaiting_resume = False
        replies: list[Action] = []
        payload = message.payload
        if payload.channels is not None:
            wanted = set(payload.channels) | ALWAYS_ON
            unknown = sorted(wanted - set(SUBSCRIBABLE))
            if unknown:
                replies.append(Reply(self._unknown_channels("resume", unknown, wall_ms)))
            self.subscriptions = wanted & set(SUBSCRIBABLE)
        if payload.models is not None:
            self.models_included = set(payload.models)
            self.models_excluded = set()
        return [Join(payload), *replies]

    def _handle(self, message: object, now: float, wall_ms: int) -> list[Action]:
        if isinstance(message, HeartbeatResponse):
            self._last_response = now
            sequence = message.payload.sequence
            sent = None if sequence is None else self._heartbeats_in_flight.pop(sequence, None)
            if sent is not None:
                self._rtts.append((now - sent) * 1000.0)
            return []
        if isinstance(message, Ping):
            return [Reply(Pong(timestamp=wall_ms, payload=message.payload))]
        if isinstance(message, Subscribe | Unsubscribe):
            return self._change_subscriptions(message, wall_ms)
        raise AssertionError(f"unhandled client message {message!r}")  # pragma: no cover

    def _unknown_channels(self, kind: str, unknown: list[str], wall_ms: int) -> ErrorEvent:
        return error_event(
            "UNKNOWN_CHANNEL",
            f"{kind}: unknown channel(s) {', '.join(map(repr, unknown))}; "
            f"channels are: {', '.join(CHANNELS)}; extension topics: "
            f"{', '.join(EXTENSION_TOPICS)}",
            timestamp=wall_ms,
            details={"channels": unknown},
        )

    def _change_subscriptions(self, message: Subscribe | Unsubscribe, wall_ms: int) -> list[Action]:
        requested = set(message.payload.channels)
        models = set(message.payload.models)
        if not requested and not models:
            return [
                Reply(
                    error_event(
                        "INVALID_FIELD",
                        f"{message.TYPE}: name at least one channel (payload.channels) or "
                        "modelId (payload.models)",
                        timestamp=wall_ms,
                    )
                )
            ]
        unknown = sorted(requested - set(SUBSCRIBABLE))
        if unknown:
            return [Reply(self._unknown_channels(message.TYPE, unknown, wall_ms))]
        if isinstance(message, Unsubscribe) and requested & ALWAYS_ON:
            return [
                Reply(
                    error_event(
                        "CHANNEL_REQUIRED",
                        "unsubscribe: the 'system' channel carries heartbeats and errors "
                        "and cannot be left",
                        timestamp=wall_ms,
                    )
                )
            ]
        added = sorted(requested - self.subscriptions)
        if isinstance(message, Subscribe):
            self.subscriptions |= requested
            if "*" in models:  # every model again
                self.models_included, self.models_excluded = None, set()
            elif models:
                self.models_excluded -= models
                if self.models_included is not None:
                    self.models_included |= models
                else:
                    self.models_included = models
        else:
            self.subscriptions -= requested
            added = []
            self.models_excluded |= models
            if self.models_included is not None:
                self.models_included -= models
        reply: list[Action] = [Reply(self.subscriptions_event(wall_ms))]
        return reply + [CatchUp(topic) for topic in added if topic in EXTENSION_TOPICS]

    def subscriptions_event(self, wall_ms: int) -> Subscriptions:
        """The connection's subscriptions as the ``subscriptions`` reply states them."""
        return Subscriptions(
            timestamp=wall_ms,
            payload=SubscriptionsPayload(channels=self.channels, models=self.subscribed_models),
        )

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c for c in SUBSCRIBABLE if c in self.subscriptions)

    @property
    def subscribed_models(self) -> tuple[str, ...] | None:
        """The model filter as a list when it is one (None: every model but the excluded)."""
        if self.models_included is None:
            return None
        return tuple(sorted(self.models_included - self.models_excluded))

    @property
    def wants_everything(self) -> bool:
        """Whether every event passes: every channel, no model filter (the default)."""
        return self.wants_all(_EVERY_CHANNEL)

    def wants_all(self, channels: frozenset[str]) -> bool:
        """Whether every event on these channels passes, whatever its models (the common
        case, checked once per frame rather than once per message)."""
        return (
            self.models_included is None
            and not self.models_excluded
            and channels <= self.subscriptions
        )

    def wants(self, channel: str) -> bool:
        return channel in self.subscriptions

    def wants_models(self, model_ids: tuple[str, ...]) -> bool:
        """Whether an event about these models passes the model filter (no models: yes)."""
        if not model_ids or (self.models_included is None and not self.models_excluded):
            return True
        return any(
            (self.models_included is None or m in self.models_included)
            and m not in self.models_excluded
            for m in model_ids
        )
