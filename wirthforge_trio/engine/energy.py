"""Per-model energy state for WIRTHFORGE (WF-FND-002 / WF-FND-004).

Turns measured token timing and top-K probabilities into one intensity value ``E``
in ``[0, 1]`` plus a coarse flow state the UI can react to. Everything here is pure:
the caller passes time in as float seconds (normally ``trio.current_time()``), so the
model can be driven by a real clock, a mock clock or a test with literal numbers.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Sequence

import attrs

from ..contract.events import EnergyUpdate, EnergyUpdatePayload
from ..sources.base import Token

__all__ = [
    "BURST_TPS",
    "DECAY_HALF_LIFE_S",
    "EU_PER_TOKEN",
    "FIRST_TOKEN_TIMEOUT_S",
    "FRICTION_FULL_S",
    "PROFILES",
    "RECENT_INTENSITIES",
    "SATURATION_ENTER",
    "SATURATION_EXIT",
    "SATURATION_HOLD_S",
    "STALL_STREAK",
    "TPS_WINDOW_S",
    "EnergyProfile",
    "FlowState",
    "ModelEnergy",
    "certainty",
    "friction",
    "velocity",
]

EU_PER_TOKEN = 0.1
"""Energy units credited for every output token."""

TPS_WINDOW_S = 1.0
"""Tokens per second are counted over this sliding window: times in ``(now - 1, now]``."""

FRICTION_FULL_S = 1.5
"""Inter-token time at which friction is total (``f = 0``)."""

DECAY_HALF_LIFE_S = 0.7
"""Half-life of ``E`` while no tokens are flowing."""

FIRST_TOKEN_TIMEOUT_S = 1.5
"""A prompt with no first token after this long falls back from CHARGING to IDLE."""

STALL_STREAK = 2
"""Consecutive slow tokens (``dt > stall_s``) that turn FLOWING into STALLING."""

SATURATION_ENTER = 0.85
"""``E`` at or above this for :data:`SATURATION_HOLD_S` turns FLOWING into SATURATED."""

SATURATION_EXIT = 0.7
"""SATURATED returns to FLOWING once ``E`` falls below this (hysteresis)."""

SATURATION_HOLD_S = 0.8
"""How long ``E`` must stay at or above :data:`SATURATION_ENTER` to saturate."""

BURST_TPS = 12.0
"""Tokens per second above which the stream counts as a burst."""

RECENT_INTENSITIES = 8
"""How many per-token ``E`` values are kept for drawing the field."""


def _clamp01(x: float) -> float:
    """Clamp to ``[0, 1]``; NaN becomes 0 so a bad input can never poison ``E``."""
    if math.isnan(x):
        return 0.0
    return min(1.0, max(0.0, x))


@attrs.frozen
class EnergyProfile:
    """Tuning constants for one class of hardware; frozen so profiles can be shared."""

    name: str
    tps_max: float
    stall_s: float
    alpha: float

    def __attrs_post_init__(self) -> None:
        # Reject values that would divide by zero or make the EMA diverge.
        if not self.tps_max > 0:
            raise ValueError("tps_max must be positive")
        if not 0 < self.stall_s < FRICTION_FULL_S:
            raise ValueError(f"stall_s must lie in (0, {FRICTION_FULL_S})")
        if not 0 < self.alpha <= 1:
            raise ValueError("alpha must lie in (0, 1]")


PROFILES: dict[str, EnergyProfile] = {
    "default": EnergyProfile(name="default", tps_max=20.0, stall_s=0.400, alpha=0.35),
    "lite": EnergyProfile(name="lite", tps_max=10.0, stall_s=0.500, alpha=0.30),
    "studio": EnergyProfile(name="studio", tps_max=20.0, stall_s=0.350, alpha=0.40),
}


def velocity(tps: float, tps_max: float) -> float:
    """``v = clamp(TPS / TPS_max, 0, 1)``: how fast the model writes relative to the profile."""
    if not tps_max > 0:
        raise ValueError("tps_max must be positive")
    return _clamp01(tps / tps_max)


def certainty(probs: Sequence[float]) -> float:
    """``c = 1 - H / log K`` over the normalised top-K probabilities.

    A single dominant candidate gives ``c`` near 1, a flat spread gives 0. Fewer than two
    candidates carry no spread to measure, so they count as fully certain. Negative or
    non-finite entries are treated as 0; if nothing usable is left the distribution is
    taken as flat (``c = 0``) rather than inventing confidence.
    """
    k = len(probs)
    if k < 2:
        return 1.0
    cleaned = [p if math.isfinite(p) and p > 0 else 0.0 for p in probs]
    total = math.fsum(cleaned)
    if total <= 0:
        return 0.0
    entropy = -math.fsum((p / total) * math.log(p / total) for p in cleaned if p > 0)
    return _clamp01(1.0 - entropy / math.log(k))


def friction(dt: float, stall_s: float) -> float:
    """``f = 1 - clamp((dt - stall) / (1.5 - stall), 0, 1)``: 1 while tokens come on time."""
    if not 0 < stall_s < FRICTION_FULL_S:
        raise ValueError(f"stall_s must lie in (0, {FRICTION_FULL_S})")
    return 1.0 - _clamp01((dt - stall_s) / (FRICTION_FULL_S - stall_s))


class FlowState(enum.StrEnum):
    """Coarse state of a model's stream; string values go on the wire unchanged."""

    IDLE = "IDLE"
    CHARGING = "CHARGING"
    FLOWING = "FLOWING"
    STALLING = "STALLING"
    SATURATED = "SATURATED"
    DRAINED = "DRAINED"


_QUIET_STATES = frozenset({FlowState.IDLE, FlowState.CHARGING, FlowState.DRAINED})
"""States in which the model is not generating, so ``E`` decays freely."""


class ModelEnergy:
    """Energy and flow state of one model, fed with its tokens and a clock.

    Call :meth:`start_prompt` when a prompt is sent, :meth:`on_token` for every token,
    :meth:`end_stream` when a stream finishes, and :meth:`advance` on every frame so
    decay and timers progress while no tokens arrive. Every event first settles decay up
    to its own time, so ``E`` does not depend on how often :meth:`advance` is called.
    Times must not go backwards; an earlier time is treated as the latest time seen.
    """

    def __init__(self, profile: EnergyProfile | None = None) -> None:
        self._profile = profile if profile is not None else PROFILES["default"]
        self._e = 0.0
        self._state = FlowState.IDLE
        self._clock: float | None = None  # latest time seen by any event
        self._decay_from: float | None = None  # time up to which E is settled
        self._window: deque[float] = deque()  # token times inside the TPS window
        self._tps = 0.0
        self._last_token_at: float | None = None
        self._prompt_at: float | None = None
        self._awaiting_first = False
        self._slow_streak = 0
        self._sat_since: float | None = None  # when E last rose to >= SATURATION_ENTER
        self._active_streams = 0
        self._token_count = 0
        self._frame_tokens = 0
        self._recent: deque[float] = deque(maxlen=RECENT_INTENSITIES)

    # -- read-only views -------------------------------------------------------------

    @property
    def profile(self) -> EnergyProfile:
        """The profile whose constants drive this model."""
        return self._profile

    @property
    def intensity(self) -> float:
        """Current ``E`` in ``[0, 1]``."""
        return self._e

    @property
    def total_eu(self) -> float:
        """Cumulative energy units: ``EU_PER_TOKEN`` for every token seen."""
        return self._token_count * EU_PER_TOKEN

    @property
    def token_count(self) -> int:
        """Tokens seen in total; an exact integer behind :attr:`total_eu`."""
        return self._token_count

    @property
    def state(self) -> FlowState:
        """Current flow state."""
        return self._state

    @property
    def tps(self) -> float:
        """Tokens per second over the 1 s window ending at the last token or advance."""
        return self._tps

    @property
    def is_burst(self) -> bool:
        """True while the model writes faster than :data:`BURST_TPS`."""
        return self._tps > BURST_TPS

    @property
    def active_streams(self) -> int:
        """Streams started and not yet ended for this model."""
        return self._active_streams

    @property
    def recent_intensities(self) -> tuple[float, ...]:
        """``E`` after each of the last (up to 8) tokens, oldest first."""
        return tuple(self._recent)

    # -- events ------------------------------------------------------------------------

    def take_frame_tokens(self) -> int:
        """Return the tokens that arrived since the previous call and restart the count."""
        n = self._frame_tokens
        self._frame_tokens = 0
        return n

    def start_prompt(self, now: float) -> None:
        """A prompt was sent: open a stream and start charging unless already generating."""
        now = self._settle(now)
        self._active_streams += 1
        # A prompt that joins a model already generating keeps its state and rhythm:
        # the next token's gap is measured from that model's previous token.
        if self._state in _QUIET_STATES:
            self._state = FlowState.CHARGING
            self._prompt_at = now
            self._awaiting_first = True
            self._slow_streak = 0

    def end_stream(self, now: float) -> None:
        """A stream finished; the model drains once its last active stream has ended."""
        now = self._settle(now)
        if self._active_streams == 0:
            return  # nothing was open: ignore rather than invent a transition
        self._active_streams -= 1
        if self._active_streams == 0:
            self._state = FlowState.DRAINED
            self._awaiting_first = False
            self._slow_streak = 0

    def advance(self, now: float) -> None:
        """Move the clock to ``now``: apply decay, refresh TPS and run the state timers."""
        now = self._settle(now)
        self._update_states(now, slow=None)

    def on_token(self, token: Token) -> None:
        """Account for one output token (amortised O(1))."""
        now = self._settle(token.at)
        profile = self._profile

        dt: float | None
        if self._awaiting_first and self._prompt_at is not None:
            dt = now - self._prompt_at
        elif self._last_token_at is not None:
            dt = now - self._last_token_at
        else:
            dt = None  # a token with no prompt and no predecessor: no gap to judge

        self._window.append(now)
        self._trim_window(now)

        v = velocity(self._tps, profile.tps_max)
        f = 1.0 if dt is None else friction(dt, profile.stall_s)
        if token.top_k:
            e_base = 0.5 * v + 0.3 * certainty(token.top_k) + 0.2 * f
        else:
            e_base = 0.7 * v + 0.3 * f
        self._e = _clamp01(profile.alpha * e_base + (1.0 - profile.alpha) * self._e)

        self._token_count += 1
        self._frame_tokens += 1
        self._recent.append(self._e)
        self._last_token_at = now
        self._awaiting_first = False

        slow = dt is not None and dt > profile.stall_s
        self._slow_streak = self._slow_streak + 1 if slow else 0
        if self._state in _QUIET_STATES:
            self._state = FlowState.FLOWING
        self._update_states(now, slow=slow)

    # -- internals ---------------------------------------------------------------------

    def _settle(self, now: float) -> float:
        """Decay ``E`` up to ``now`` under the current state; return the effective time."""
        if self._clock is not None and now < self._clock:
            now = self._clock
        self._clock = now

        start = self._decay_from
        if start is not None and self._state not in _QUIET_STATES:
            # While generating, E only decays once the last token is older than the stall
            # threshold, and only for the part of the interval after that point.
            if self._last_token_at is None:
                start = None
            else:
                start = max(start, self._last_token_at + self._profile.stall_s)
        if start is not None and now > start:
            self._e *= 0.5 ** ((now - start) / DECAY_HALF_LIFE_S)
        self._decay_from = now

        self._trim_window(now)
        return now

    def _trim_window(self, now: float) -> None:
        """Drop token times at or before ``now - 1 s`` and refresh :attr:`tps`."""
        horizon = now - TPS_WINDOW_S
        window = self._window
        while window and window[0] <= horizon:
            window.popleft()
        self._tps = len(window) / TPS_WINDOW_S

    def _update_states(self, now: float, slow: bool | None) -> None:
        """Run the timer- and level-driven transitions; ``slow`` is set for token events."""
        if (
            self._state is FlowState.CHARGING
            and self._prompt_at is not None
            and now - self._prompt_at > FIRST_TOKEN_TIMEOUT_S
        ):
            self._state = FlowState.IDLE

        if self._e >= SATURATION_ENTER:
            if self._sat_since is None:
                self._sat_since = now
        else:
            self._sat_since = None

        if self._state is FlowState.SATURATED and self._e < SATURATION_EXIT:
            self._state = FlowState.FLOWING

        if slow is not None:
            if self._state is FlowState.STALLING and not slow:
                self._state = FlowState.FLOWING
            elif self._state is FlowState.FLOWING and self._slow_streak >= STALL_STREAK:
                self._state = FlowState.STALLING

        if (
            self._state is FlowState.FLOWING
            and self._sat_since is not None
            and now - self._sat_since >= SATURATION_HOLD_S
        ):
            self._state = FlowState.SATURATED


def energy_update(
    model_id: str, total: float, tokens: int, processing_ms: float, frame_number: int, wall: int
) -> EnergyUpdate:
    """One model's energy_update: its total and this frame's tokens, as the wire rounds them
    (the engine's frames, and the benchmarks' representative ones)."""
    return EnergyUpdate(
        timestamp=wall,
        frame_number=frame_number,
        payload=EnergyUpdatePayload(
            total_energy=round(total, 6),
            delta_energy=round(tokens * EU_PER_TOKEN, 6),
            tokens_generated=tokens,
            processing_time=round(processing_ms, 4),
            model_id=model_id,
        ),
    )
