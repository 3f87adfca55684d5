"""Council analysis: how several models running side by side relate (WF-FND-002, WF-FND-004).

Pure: no I/O, no clock of its own. Token times (``Token.at``) and ``now`` are float seconds
from the caller's clock; ``wall_ms`` (integer Unix epoch milliseconds) only stamps events.
The rules, in plain words:

Interference (``interference_event``)
    * Every ``sample_every`` frames (6, i.e. 10 Hz at 60 Hz; counted from the last sampled
      frame, so skipped frames do not stall sampling) each active model's intensity ``E`` is
      sampled into a window of its last 5 samples. The first call to ``analyze`` samples.
    * For each pair of active models (ids sorted, so pairs and their order are stable) whose
      windows are both full: ``r`` = Pearson correlation of the two windows (None when
      either window is flat). ``r > 0.7`` is constructive, ``r < -0.7`` destructive,
      anything else (None included) neutral.
    * ``intensity = |r|`` clipped to [0, 1] (0 when r is None): how strongly the two energy
      curves move together or against each other, whatever the pattern.
    * ``coherenceScore``: see Coherence below.
    * An event is emitted for a pair only on change: the first analysis of the pair, a new
      patternType, or intensity or coherence moved by at least 0.1 since that pair's last
      emitted event. Repeating the same state emits nothing.

Coherence (``coherenceScore``: do the two models write the same text?)
    * Each model's text in this run is compared character by character at the same offsets
      (tokenizer-independent). With ``m`` the length of the shorter text, the window is the
      last (up to) 256 common offsets ``[max(0, m - 256), m)``; ``p_o`` is the share of
      offsets where the two characters are equal, and ``p_e`` the share expected by chance
      from the two windows' character frequencies: ``p_e = sum_c f_a(c) f_b(c)``.
    * ``coherenceScore = (p_o - p_e) / (1 - p_e)`` (Cohen's kappa), clipped to [0, 1]:
      identical texts score 1, unrelated ones about 0 (equal only as often as chance has
      it). When ``p_e = 1`` (both windows one repeated character), it is 1 if they are
      equal, else 0. Before both models have written anything, it is 0.5: no evidence.

Resonance (``resonance_event``: the models' cadences lock)
    * Checked at every sample for each pair of active models that are both FLOWING or
      SATURATED with tps > 0. ``ratio = faster tps / slower tps`` (>= 1).
    * fundamental: ratio <= 1.1. harmonic: within 10 % of n for n in {2, 3, 4}
      (``|ratio - n| <= 0.1 n``). overtone: within 5 % of 3/2, 4/3 or 5/4
      (``|ratio - p/q| <= 0.05 p/q``); the 4/3 and 5/4 windows overlap, and the nearest ratio
      (relative distance) wins. Anything else is no lock.
    * A lock must hold with the same type for 3 consecutive samples before its event is
      emitted. It is emitted again only when the type changes (the new type held for 3
      samples) or after the lock was lost (any sample without a lock) and regained.
    * frequency = the slower model's tps; for an overtone p/q, slower tps / q (the common
      fundamental of the two cadences). amplitude = the smaller of the two intensities,
      clipped to [0, 1]. participants = the pair. phase = the offset of the two models'
      last token times within one period (``1 / frequency``) in degrees, in [0, 360); left
      out when either model has no token yet.

Activity
    * ``analyze`` only considers models that are in ``active`` and in ``energies``. A known
      model missing from them at a sampling frame is treated as stopped and forgotten (its
      samples, text, last token time and pair history dropped, as :meth:`forget` does), so a
      window never spans a pause and a pair that meets again starts afresh.
    * On frames where ``analyze`` does not run (fewer than two models generate), the caller
      passes the generating models to ``retain``, which forgets the others at once: a
      council that meets again never sees its previous run's samples.
    * Output order: every interference event (pair order), then every resonance event.

Ensemble energy
    * ``E_ens = sum(gamma_m * E_m)``, equal weights ``1 / n`` by default (the mean),
      clamped to [0, 1].
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal, Protocol

import attrs

from ..contract.events import (
    InterferenceEvent,
    InterferencePayload,
    ResonanceEvent,
    ResonancePayload,
)
from ..sources.base import Token
from .energy import FlowState

__all__ = [
    "CHANGE_THRESHOLD",
    "CORRELATION_THRESHOLD",
    "FUNDAMENTAL_MAX_RATIO",
    "HARMONICS",
    "HARMONIC_TOLERANCE",
    "LOCK_HOLD_SAMPLES",
    "OVERTONES",
    "OVERTONE_TOLERANCE",
    "SAMPLE_WINDOW",
    "TEXT_WINDOW",
    "UNKNOWN_COHERENCE",
    "CouncilAnalyzer",
    "CouncilEvent",
    "EnergyView",
    "PatternType",
    "ResonanceType",
    "classify_resonance",
    "ensemble_energy",
    "pearson",
    "text_coherence",
]

SAMPLE_WINDOW: Final = 5
"""Intensity samples per model that the Pearson correlation looks at."""

TEXT_WINDOW: Final = 256
"""Aligned character offsets (the latest common ones) that coherence compares."""

UNKNOWN_COHERENCE: Final = 0.5
"""coherenceScore before both models of a pair have written a character."""

CORRELATION_THRESHOLD: Final = 0.7
"""``|r|`` above this is constructive (r > 0) or destructive (r < 0)."""

CHANGE_THRESHOLD: Final = 0.1
"""Intensity or coherence must move this much before a pair's event is sent again."""

FUNDAMENTAL_MAX_RATIO: Final = 1.1
"""Tempo ratio up to which two models count as writing at the same cadence."""

HARMONICS: Final = (2, 3, 4)
"""Integer tempo ratios that count as a harmonic lock."""

HARMONIC_TOLERANCE: Final = 0.10
"""Relative distance from an integer ratio still counted as a harmonic."""

OVERTONES: Final = ((3, 2), (4, 3), (5, 4))
"""Tempo ratios ``p/q`` that count as an overtone lock, simplest first."""

OVERTONE_TOLERANCE: Final = 0.05
"""Relative distance from an overtone ratio still counted as that overtone."""

LOCK_HOLD_SAMPLES: Final = 3
"""Consecutive samples a lock must hold before it is reported."""

_EPS: Final = 1e-9
"""Slack for threshold comparisons, so 0.6 - 0.5 still counts as a move of 0.1."""

PatternType = Literal["constructive", "destructive", "neutral"]
ResonanceType = Literal["harmonic", "fundamental", "overtone"]
CouncilEvent = InterferenceEvent | ResonanceEvent

_LOCKING_STATES: Final = frozenset({FlowState.FLOWING, FlowState.SATURATED})


class EnergyView(Protocol):
    """What the analyzer reads of a model's energy (:class:`.energy.ModelEnergy` fits)."""

    @property
    def intensity(self) -> float: ...

    @property
    def tps(self) -> float: ...

    @property
    def state(self) -> FlowState: ...


def _clamp01(x: float) -> float:
    """Clamp to ``[0, 1]``; NaN becomes 0 so a bad value never reaches the wire."""
    if math.isnan(x):
        return 0.0
    return min(1.0, max(0.0, x))


def text_coherence(a: str, b: str, window: int = TEXT_WINDOW) -> float | None:
    """Cohen's kappa of two texts compared at the same character offsets, in ``[0, 1]``.

    Looks at the last ``window`` offsets both texts reach, so it follows what the models
    write now; chance agreement (common letters, spaces) is discounted, so unrelated text
    scores about 0 rather than the few percent of characters that match anyway. None when
    either text is empty: nothing to compare.
    """
    end = min(len(a), len(b))
    if end == 0:
        return None
    start = max(0, end - window)
    xa, xb = a[start:end], b[start:end]
    n = end - start
    observed = sum(1 for x, y in zip(xa, xb, strict=True) if x == y) / n
    counts_b = Counter(xb)
    chance = math.fsum(k * counts_b[c] for c, k in Counter(xa).items()) / (n * n)
    if chance >= 1.0 - _EPS:
        return 1.0 if observed >= 1.0 else 0.0
    return _clamp01((observed - chance) / (1.0 - chance))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation in ``[-1, 1]``; None below 3 points or when either is flat.

    A flat series has no direction to correlate with, so "no answer" is more honest than 0.
    Raises ValueError when the lengths differ.
    """
    if len(xs) != len(ys):
        raise ValueError("pearson needs two series of the same length")
    n = len(xs)
    if n < 3 or max(xs) == min(xs) or max(ys) == min(ys):
        return None
    mx = math.fsum(xs) / n
    my = math.fsum(ys) / n
    dx = [x - mx for x in xs]
    dy = [y - my for y in ys]
    sxx = math.fsum(d * d for d in dx)
    syy = math.fsum(d * d for d in dy)
    if sxx <= 0 or syy <= 0:
        return None
    sxy = math.fsum(a * b for a, b in zip(dx, dy, strict=True))
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def classify_resonance(tps_a: float, tps_b: float) -> tuple[ResonanceType, float] | None:
    """Lock type and frequency (Hz) for two cadences, or None when they do not lock.

    See the module docstring for the ratios; the frequency is the slower tps, divided by
    ``q`` for an overtone ``p/q``.
    """
    slow, fast = sorted((tps_a, tps_b))
    if not (math.isfinite(slow) and math.isfinite(fast)) or slow <= 0:
        return None
    ratio = fast / slow
    if ratio <= FUNDAMENTAL_MAX_RATIO + _EPS:
        return "fundamental", slow
    for n in HARMONICS:
        if abs(ratio - n) <= HARMONIC_TOLERANCE * n + _EPS:
            return "harmonic", slow
    best: tuple[float, int] | None = None
    for p, q in OVERTONES:
        distance = abs(ratio - p / q) / (p / q)
        if distance <= OVERTONE_TOLERANCE + _EPS and (best is None or distance < best[0]):
            best = (distance, q)
    if best is not None:
        return "overtone", slow / best[1]
    return None


def ensemble_energy(intensities: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """``E_ens = sum(gamma_m * E_m)``, clamped to ``[0, 1]``: one energy for the council.

    Equal weights ``1 / n`` by default, so the result is the mean; given weights are used
    as they are (not renormalised). No models give 0. Raises ValueError when the weights
    do not match the intensities or are negative.
    """
    n = len(intensities)
    if n == 0:
        return 0.0
    if weights is None:
        return _clamp01(math.fsum(intensities) / n)
    if len(weights) != n:
        raise ValueError("ensemble_energy needs one weight per intensity")
    if any(not w >= 0 for w in weights):
        raise ValueError("ensemble_energy weights must be non-negative")
    return _clamp01(math.fsum(w * e for w, e in zip(weights, intensities, strict=True)))


# --- the analyzer ---------------------------------------------------------------------------


@attrs.define
class _ModelState:
    """What the analyzer remembers of one model between frames."""

    samples: deque[float] = attrs.field(factory=lambda: deque(maxlen=SAMPLE_WINDOW))
    last_token_at: float | None = None
    chunks: list[str] = attrs.field(factory=list)
    """The model's text in this run, as its tokens came (joined when compared)."""

    def text(self) -> str:
        """The text so far; joined once here, so each token costs one append."""
        if len(self.chunks) > 1:
            self.chunks[:] = ["".join(self.chunks)]
        return self.chunks[0] if self.chunks else ""


@attrs.frozen
class _Emitted:
    """A pair's last interference event, the reference for "did it change"."""

    pattern: PatternType
    intensity: float
    coherence: float


@attrs.define
class _Lock:
    """A pair's resonance lock: its current type, how long it has held, what was sent."""

    kind: ResonanceType | None = None
    streak: int = 0
    emitted: ResonanceType | None = None


class CouncilAnalyzer:
    """Interference and resonance between the models of a council, sampled at 10 Hz.

    Feed every token through :meth:`observe_token` and call :meth:`analyze` on every frame;
    it returns the council events to send on that frame (usually none).
    """

    def __init__(self, sample_every: int = 6) -> None:
        if sample_every < 1:
            raise ValueError("sample_every must be at least 1")
        self.sample_every = sample_every
        self._models: dict[str, _ModelState] = {}
        self._emitted: dict[tuple[str, str], _Emitted] = {}
        self._locks: dict[tuple[str, str], _Lock] = {}
        self._last_sample: int | None = None

    def observe_token(self, model_id: str, token: Token) -> None:
        """Record a token's time (for the phase) and its text (for coherence)."""
        state = self._models.setdefault(model_id, _ModelState())
        last = state.last_token_at
        state.last_token_at = token.at if last is None else max(last, token.at)
        if token.text:
            state.chunks.append(token.text)

    def forget(self, model_id: str) -> None:
        """Drop everything known about a model and every pair it belongs to."""
        self._models.pop(model_id, None)
        for table in (self._emitted, self._locks):
            for pair in [p for p in table if model_id in p]:
                del table[pair]

    def retain(self, active: Iterable[str]) -> None:
        """Forget every model not in ``active`` at once, on any frame.

        The caller runs :meth:`analyze` only while two or more models generate, so it must
        tell the analyzer on the other frames who stopped: a pair that meets again then
        starts afresh instead of carrying its old windows into the new run
        (docs/decisions.md, The Council).
        """
        keep = set(active)
        for model_id in [m for m in self._models if m not in keep]:
            self.forget(model_id)
        if not self._models:
            self._last_sample = None  # a new council samples on its first frame

    def coherence(self, a: str, b: str) -> float:
        """How alike two models' texts are at aligned offsets (:func:`text_coherence`);
        0.5 before both have written something."""
        sa, sb = self._models.get(a), self._models.get(b)
        if sa is None or sb is None:
            return UNKNOWN_COHERENCE
        score = text_coherence(sa.text(), sb.text())
        return UNKNOWN_COHERENCE if score is None else score

    def analyze(
        self,
        frame_number: int,
        now: float,
        wall_ms: int,
        energies: Mapping[str, EnergyView],
        active: Sequence[str],
    ) -> list[CouncilEvent]:
        """The council events for this frame; empty except on sampling frames.

        ``now`` is accepted for symmetry with the rest of the engine; the analysis runs on
        sample counts and token times, so it does not depend on it.
        """
        del now
        last = self._last_sample
        if last is not None and last <= frame_number < last + self.sample_every:
            return []
        self._last_sample = frame_number

        current = sorted({m for m in active if m in energies})
        for model_id in [m for m in self._models if m not in current]:
            self.forget(model_id)
        for model_id in current:
            state = self._models.setdefault(model_id, _ModelState())
            state.samples.append(_clamp01(energies[model_id].intensity))

        interference: list[CouncilEvent] = []
        resonance: list[CouncilEvent] = []
        for a, b in itertools.combinations(current, 2):
            event = self._interference(a, b, frame_number, wall_ms)
            if event is not None:
                interference.append(event)
            lock = self._resonance(a, b, energies[a], energies[b], frame_number, wall_ms)
            if lock is not None:
                resonance.append(lock)
        return interference + resonance

    # -- internals ---------------------------------------------------------------------------

    def _interference(
        self, a: str, b: str, frame_number: int, wall_ms: int
    ) -> InterferenceEvent | None:
        xs, ys = self._models[a].samples, self._models[b].samples
        if len(xs) < SAMPLE_WINDOW or len(ys) < SAMPLE_WINDOW:
            return None
        r = pearson(list(xs), list(ys))
        pattern: PatternType
        if r is not None and r > CORRELATION_THRESHOLD:
            pattern = "constructive"
        elif r is not None and r < -CORRELATION_THRESHOLD:
            pattern = "destructive"
        else:
            pattern = "neutral"
        intensity = round(_clamp01(abs(r)) if r is not None else 0.0, 6)
        coherence = round(_clamp01(self.coherence(a, b)), 6)

        previous = self._emitted.get((a, b))
        if previous is not None and not (
            pattern != previous.pattern
            or abs(intensity - previous.intensity) >= CHANGE_THRESHOLD - _EPS
            or abs(coherence - previous.coherence) >= CHANGE_THRESHOLD - _EPS
        ):
            return None
        self._emitted[(a, b)] = _Emitted(pattern, intensity, coherence)
        return InterferenceEvent(
            timestamp=wall_ms,
            frame_number=frame_number,
            payload=InterferencePayload(
                pattern_type=pattern,
                models=(a, b),
                intensity=intensity,
                coherence_score=coherence,
            ),
        )

    def _resonance(
        self,
        a: str,
        b: str,
        ea: EnergyView,
        eb: EnergyView,
        frame_number: int,
        wall_ms: int,
    ) -> ResonanceEvent | None:
        lock = self._locks.setdefault((a, b), _Lock())
        found = None
        if ea.state in _LOCKING_STATES and eb.state in _LOCKING_STATES:
            found = classify_resonance(ea.tps, eb.tps)
        if found is None:
            lock.kind, lock.streak, lock.emitted = None, 0, None
            return None
        kind, frequency = found
        if kind == lock.kind:
            lock.streak += 1
        else:
            lock.kind, lock.streak = kind, 1
        if lock.streak < LOCK_HOLD_SAMPLES or lock.emitted == kind:
            return None
        lock.emitted = kind
        return ResonanceEvent(
            timestamp=wall_ms,
            frame_number=frame_number,
            payload=ResonancePayload(
                resonance_type=kind,
                frequency=round(frequency, 6),
                amplitude=round(_clamp01(min(ea.intensity, eb.intensity)), 6),
                participants=(a, b),
                phase=self._phase(a, b, frequency),
            ),
        )

    def _phase(self, a: str, b: str, frequency: float) -> float | None:
        """Offset of the two last token times within one period, in degrees ``[0, 360)``."""
        ta = self._models[a].last_token_at
        tb = self._models[b].last_token_at
        if ta is None or tb is None or not frequency > 0:
            return None
        period = 1.0 / frequency
        degrees = round(((ta - tb) % period) / period * 360.0, 6)
        return degrees if 0.0 <= degrees < 360.0 else 0.0
