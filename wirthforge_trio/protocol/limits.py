"""The client message rate limit: a token bucket per connection, with time passed in.

A connection may send ``rate`` messages per second, sustained, and ``burst`` at once. Over
that, messages are dropped unread; the first drop starts an *episode* (the client is told
once), which ends when the bucket has refilled completely. A message dropped ``close_after``
seconds or more into an episode closes the connection (1008).
"""

from __future__ import annotations

import enum

import attrs


@attrs.frozen
class RateLimit:
    rate: float
    """Messages per second, sustained."""
    burst: int
    """Messages at once: the bucket's size."""
    close_after: float
    """Seconds over the limit before the connection is closed."""


class Verdict(enum.Enum):
    PASS = "pass"
    """Within the limit: handle the message."""
    WARN = "warn"
    """The first message over the limit in this episode: drop it, tell the client."""
    DROP = "drop"
    """Still over the limit: drop it quietly."""
    CLOSE = "close"
    """Over the limit for ``close_after`` seconds: drop it and close the connection."""


class MessageRateLimiter:
    """One connection's bucket. :meth:`check` once per client message, with its arrival time."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._updated: float | None = None
        self.over_since: float | None = None
        """When the current episode began (None: within the limit)."""
        self.dropped = 0
        """Messages dropped over the connection's life."""

    def check(self, now: float) -> Verdict:
        limit = self.limit
        if self._updated is not None:
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(float(limit.burst), self._tokens + elapsed * limit.rate)
        self._updated = now
        if self.over_since is not None and self._tokens >= limit.burst - 1e-9:
            self.over_since = None  # refilled: the episode is over
        if self._tokens >= 1.0 - 1e-9:  # (a client exactly at the rate, despite rounding)
            self._tokens = max(0.0, self._tokens - 1.0)
            return Verdict.PASS
        self.dropped += 1
        if self.over_since is None:
            self.over_since = now
            return Verdict.WARN
        if now - self.over_since >= limit.close_after:
            return Verdict.CLOSE
        return Verdict.DROP
