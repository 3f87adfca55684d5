"""The energy model against hand-computed numbers and every flow-state transition."""

from __future__ import annotations

import math

import pytest

from wirthforge_trio.engine.energy import (
    EU_PER_TOKEN,
    PROFILES,
    EnergyProfile,
    FlowState,
    ModelEnergy,
    certainty,
    friction,
    velocity,
)
from wirthforge_trio.sources.base import Token

UNIFORM5 = (0.2, 0.2, 0.2, 0.2, 0.2)


def tok(at: float, top_k: tuple[float, ...] | None = None) -> Token:
    """A token at ``at`` seconds; the text does not matter to the energy model."""
    return Token(text=" x", at=at, top_k=top_k)


def state_of(model: ModelEnergy) -> FlowState:
    """Read the state through a call so the type checker does not pin it between events."""
    return model.state


def feed(model: ModelEnergy, times: list[float]) -> None:
    """Feed tokens without top-K at the given times."""
    for t in times:
        model.on_token(tok(t))


# -- profiles and formulas -------------------------------------------------------------


def test_profiles_match_the_design() -> None:
    assert PROFILES["default"] == EnergyProfile("default", 20.0, 0.400, 0.35)
    assert PROFILES["lite"] == EnergyProfile("lite", 10.0, 0.500, 0.30)
    assert PROFILES["studio"] == EnergyProfile("studio", 20.0, 0.350, 0.40)
    assert EU_PER_TOKEN == 0.1
    assert ModelEnergy().profile is PROFILES["default"]


@pytest.mark.parametrize(
    ("tps_max", "stall_s", "alpha"),
    [(0.0, 0.4, 0.35), (20.0, 0.0, 0.35), (20.0, 1.5, 0.35), (20.0, 0.4, 0.0), (20.0, 0.4, 1.1)],
)
def test_profile_rejects_unusable_constants(tps_max: float, stall_s: float, alpha: float) -> None:
    with pytest.raises(ValueError):
        EnergyProfile("bad", tps_max, stall_s, alpha)


def test_velocity() -> None:
    assert velocity(10, 20) == pytest.approx(0.5)
    assert velocity(5, 10) == pytest.approx(0.5)
    assert velocity(0, 20) == 0.0
    assert velocity(30, 20) == 1.0
    assert velocity(-3, 20) == 0.0


def test_certainty_uniform_is_zero_and_one_hot_is_one() -> None:
    assert certainty(UNIFORM5) == pytest.approx(0.0, abs=1e-12)
    assert certainty((0.5, 0.5)) == pytest.approx(0.0, abs=1e-12)
    assert certainty((1.0, 0.0, 0.0, 0.0, 0.0)) == pytest.approx(1.0)


def test_certainty_peaked_hand_computed() -> None:
    # H = -(0.7 ln 0.7 + 3 * 0.1 ln 0.1) = 0.249673 + 0.690776 = 0.940448; ln 4 = 1.386294
    # c = 1 - 0.940448 / 1.386294 = 0.321610
    assert certainty((0.7, 0.1, 0.1, 0.1)) == pytest.approx(0.321610, abs=1e-6)


def test_certainty_normalises_first() -> None:
    assert certainty((7.0, 1.0, 1.0, 1.0)) == pytest.approx(certainty((0.7, 0.1, 0.1, 0.1)))
    assert certainty((3.0, 3.0, 3.0)) == pytest.approx(0.0, abs=1e-12)


def test_certainty_with_fewer_than_two_candidates_is_one() -> None:
    assert certainty(()) == 1.0
    assert certainty((0.42,)) == 1.0


def test_certainty_ignores_garbage_entries() -> None:
    assert certainty((0.0, 0.0, 0.0)) == 0.0
    assert certainty((1.0, -1.0, math.nan)) == pytest.approx(1.0)


def test_friction_default_stall() -> None:
    assert friction(0.3, 0.4) == 1.0
    assert friction(0.95, 0.4) == pytest.approx(0.5)  # (0.95 - 0.4) / 1.1 = 0.5
    assert friction(2.0, 0.4) == 0.0
    assert friction(0.4, 0.4) == 1.0
    assert friction(1.5, 0.4) == 0.0


def test_friction_uses_the_profile_stall() -> None:
    assert friction(0.925, 0.35) == pytest.approx(0.5)  # (0.925 - 0.35) / 1.15 = 0.5
    assert friction(0.45, 0.5) == 1.0


# -- E: EMA and decay --------------------------------------------------------------------


def test_one_ema_step_without_then_with_certainty() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    # First token 0.2 s after the prompt: TPS 1 -> v = 0.05, dt 0.2 -> f = 1.
    # E_base = 0.7 * 0.05 + 0.3 * 1 = 0.335; E = 0.35 * 0.335 = 0.11725
    model.on_token(tok(0.2))
    assert model.intensity == pytest.approx(0.11725)
    # Next token 0.1 s later with a flat top-5: v = 2 / 20 = 0.1, c = 0, f = 1.
    # E_base = 0.5 * 0.1 + 0.3 * 0 + 0.2 * 1 = 0.25; E = 0.35 * 0.25 + 0.65 * 0.11725
    model.on_token(tok(0.3, UNIFORM5))
    assert model.intensity == pytest.approx(0.0875 + 0.0762125)


def test_ema_uses_the_profile_alpha() -> None:
    model = ModelEnergy(PROFILES["studio"])
    model.start_prompt(0.0)
    model.on_token(tok(0.2, (1.0, 0.0)))
    # v = 1 / 20, c = 1, f = 1: E_base = 0.025 + 0.3 + 0.2 = 0.525; E = 0.4 * 0.525
    assert model.intensity == pytest.approx(0.21)


def test_first_token_friction_counts_from_the_prompt() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    model.on_token(tok(0.95))
    # dt = 0.95 -> f = 0.5; v = 0.05: E_base = 0.035 + 0.15 = 0.185; E = 0.35 * 0.185
    assert model.intensity == pytest.approx(0.06475)


def test_half_life_when_idle() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    feed(model, [0.1 + 0.05 * i for i in range(20)])
    model.end_stream(1.05)
    assert state_of(model) is FlowState.DRAINED
    e0 = model.intensity
    assert e0 > 0.3
    model.advance(1.75)
    assert model.intensity == pytest.approx(e0 / 2)
    model.advance(2.45)
    assert model.intensity == pytest.approx(e0 / 4)


def test_decay_does_not_depend_on_how_often_advance_runs() -> None:
    coarse, fine = ModelEnergy(), ModelEnergy()
    for model in (coarse, fine):
        model.start_prompt(0.0)
        feed(model, [0.1, 0.2, 0.3])
        model.end_stream(0.3)
    coarse.advance(1.0)
    for i in range(1, 71):
        fine.advance(0.3 + i * 0.01)
    assert fine.intensity == pytest.approx(coarse.intensity)


def test_no_decay_between_tokens_while_flowing() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    model.on_token(tok(0.2))
    e = model.intensity
    model.advance(0.4)
    model.advance(0.6)  # last token exactly at the stall threshold: still no decay
    assert model.intensity == e


def test_decay_while_generating_starts_at_the_stall_threshold() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    model.on_token(tok(0.2))
    e = model.intensity
    model.advance(0.5)
    assert model.intensity == e
    model.advance(1.3)  # stalled since 0.2 + 0.4 = 0.6, i.e. for 0.7 s
    assert model.intensity == pytest.approx(e / 2)
    assert state_of(model) is FlowState.FLOWING


def test_intensity_stays_in_unit_interval() -> None:
    model = ModelEnergy(PROFILES["studio"])
    model.start_prompt(0.0)
    t = 0.0
    for i in range(400):
        t += 0.001 if i % 7 else 0.9
        model.on_token(tok(t, (1.0,) if i % 2 else UNIFORM5))
        assert 0.0 <= model.intensity <= 1.0
    model.end_stream(t)
    model.advance(t + 100.0)
    assert 0.0 <= model.intensity < 1e-9


# -- TPS, burst, counters ----------------------------------------------------------------


def test_tps_sliding_window_is_half_open() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    feed(model, [0.0, 0.25, 0.5, 0.75])
    assert model.tps == 4.0
    model.on_token(tok(1.0))  # window (0, 1] drops the token at exactly 0.0
    assert model.tps == 4.0
    model.advance(1.5)  # window (0.5, 1.5]
    assert model.tps == 2.0
    model.advance(3.0)
    assert model.tps == 0.0


def test_burst_above_twelve_tokens_per_second() -> None:
    slow, fast = ModelEnergy(), ModelEnergy()
    slow.start_prompt(0.0)
    fast.start_prompt(0.0)
    feed(slow, [0.1 * i for i in range(1, 21)])  # 10 TPS
    feed(fast, [0.0625 * i for i in range(1, 33)])  # 16 TPS
    assert slow.tps == 10.0
    assert not slow.is_burst
    assert fast.tps == 16.0
    assert fast.is_burst
    fast.advance(10.0)
    assert not fast.is_burst


def test_eu_accounting_and_frame_tokens() -> None:
    model = ModelEnergy()
    assert model.total_eu == 0.0
    model.start_prompt(0.0)
    feed(model, [0.1, 0.2, 0.3])
    assert model.take_frame_tokens() == 3
    assert model.take_frame_tokens() == 0
    feed(model, [0.4, 0.5, 0.6, 0.7])
    assert model.take_frame_tokens() == 4
    assert model.token_count == 7
    assert model.total_eu == pytest.approx(0.7)
    model.end_stream(1.0)
    model.advance(5.0)
    assert model.total_eu == pytest.approx(0.7)  # EU never decays


def test_recent_intensities_keep_the_last_eight_oldest_first() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    seen: list[float] = []
    for i in range(1, 11):
        model.on_token(tok(0.05 * i))
        seen.append(model.intensity)
        assert model.recent_intensities == tuple(seen[-8:])
    assert len(model.recent_intensities) == 8


# -- flow states ---------------------------------------------------------------------------


def test_flow_state_values() -> None:
    assert [s.value for s in FlowState] == [
        "IDLE",
        "CHARGING",
        "FLOWING",
        "STALLING",
        "SATURATED",
        "DRAINED",
    ]


def test_idle_charging_flowing_drained_charging() -> None:
    model = ModelEnergy()
    assert state_of(model) is FlowState.IDLE
    model.start_prompt(0.0)
    assert state_of(model) is FlowState.CHARGING
    assert model.active_streams == 1
    model.advance(1.0)
    assert state_of(model) is FlowState.CHARGING
    model.on_token(tok(1.2))
    assert state_of(model) is FlowState.FLOWING
    model.end_stream(1.3)
    assert state_of(model) is FlowState.DRAINED
    assert model.active_streams == 0
    model.start_prompt(2.0)
    assert state_of(model) is FlowState.CHARGING


def test_first_token_at_exactly_the_deadline_still_flows() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    model.advance(1.5)
    assert state_of(model) is FlowState.CHARGING
    model.on_token(tok(1.5))
    assert state_of(model) is FlowState.FLOWING


def test_charging_times_out_to_idle_and_a_late_token_flows() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    model.advance(1.51)
    assert state_of(model) is FlowState.IDLE
    assert model.active_streams == 1  # the stream is still open, only slow
    model.on_token(tok(2.0))
    assert state_of(model) is FlowState.FLOWING


def test_stalling_after_two_slow_tokens_and_back() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    feed(model, [0.2, 0.3, 0.4])
    model.on_token(tok(0.9))  # dt 0.5 > 0.4: first slow token
    assert state_of(model) is FlowState.FLOWING
    model.on_token(tok(1.0))  # a fast one breaks the streak
    model.on_token(tok(1.5))
    assert state_of(model) is FlowState.FLOWING
    model.on_token(tok(2.0))  # second slow token in a row
    assert state_of(model) is FlowState.STALLING
    model.on_token(tok(2.7))
    assert state_of(model) is FlowState.STALLING
    model.on_token(tok(2.8))  # dt 0.1 <= 0.4
    assert state_of(model) is FlowState.FLOWING


def test_slow_first_token_counts_towards_a_stall() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    model.on_token(tok(0.6))  # 0.6 s after the prompt
    assert state_of(model) is FlowState.FLOWING
    model.on_token(tok(1.1))
    assert state_of(model) is FlowState.STALLING


def test_stall_threshold_follows_the_profile() -> None:
    times = [0.1, 0.55, 1.0]  # gaps of 0.45 s
    lite, default = ModelEnergy(PROFILES["lite"]), ModelEnergy(PROFILES["default"])
    for model in (lite, default):
        model.start_prompt(0.0)
        feed(model, times)
    assert state_of(lite) is FlowState.FLOWING
    assert state_of(default) is FlowState.STALLING


def saturate(model: ModelEnergy, step: float = 0.03, count: int = 80) -> list[float]:
    """Feed fast tokens; return the times and assert SATURATED comes 0.8 s after E >= 0.85."""
    model.start_prompt(0.0)
    crossed: float | None = None
    times = [step * (i + 1) for i in range(count)]
    for t in times:
        model.on_token(tok(t))
        if crossed is None and model.intensity >= 0.85:
            crossed = t
        if crossed is not None:
            assert model.intensity >= 0.85
        expected = (
            FlowState.SATURATED if crossed is not None and t - crossed >= 0.8 else FlowState.FLOWING
        )
        assert state_of(model) is expected, t
    assert crossed is not None
    assert state_of(model) is FlowState.SATURATED
    return times


def test_saturated_after_800_ms_at_high_energy_and_back_below_0_7() -> None:
    model = ModelEnergy()
    times = saturate(model)
    last = times[-1]
    e_last = model.intensity
    assert e_last == pytest.approx(1.0, abs=1e-3)
    # Tokens stop: E decays from last + 0.4 s and drops below 0.7 after
    # 0.7 * log2(e_last / 0.7) more seconds.
    below = last + 0.4 + 0.7 * math.log2(e_last / 0.7)
    model.advance(below - 0.01)
    assert model.intensity >= 0.7
    assert state_of(model) is FlowState.SATURATED
    model.advance(below + 0.01)
    assert model.intensity < 0.7
    assert state_of(model) is FlowState.FLOWING


def test_saturation_hold_is_measured_by_advance_too() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    t = 0.0
    while model.intensity < 0.85:
        t += 0.03
        model.on_token(tok(t))
    crossed = t
    # Keep tokens coming but check the state only from advance in between.
    while t < crossed + 0.75:
        t += 0.03
        model.on_token(tok(t))
    assert state_of(model) is FlowState.FLOWING
    model.advance(crossed + 0.801)
    assert state_of(model) is FlowState.SATURATED


def test_slow_tokens_end_saturation_then_stall() -> None:
    model = ModelEnergy()
    times = saturate(model)
    t = times[-1]
    states = []
    for _ in range(6):
        t += 1.0
        model.on_token(tok(t))
        states.append(model.state)
    assert FlowState.STALLING in states
    assert states[-1] is FlowState.STALLING


def test_drained_only_when_the_last_concurrent_stream_ends() -> None:
    model = ModelEnergy()
    model.start_prompt(0.0)
    model.start_prompt(0.05)
    assert state_of(model) is FlowState.CHARGING
    assert model.active_streams == 2
    model.on_token(tok(0.2))
    model.start_prompt(0.25)  # a prompt joining a flowing model does not recharge it
    assert state_of(model) is FlowState.FLOWING
    model.end_stream(0.5)
    model.end_stream(0.6)
    assert state_of(model) is FlowState.FLOWING
    model.end_stream(0.7)
    assert state_of(model) is FlowState.DRAINED
    model.end_stream(0.8)  # nothing left to end: ignored
    assert model.active_streams == 0
    assert state_of(model) is FlowState.DRAINED


def test_time_never_runs_backwards() -> None:
    model = ModelEnergy()
    model.start_prompt(1.0)
    model.on_token(tok(1.2))
    e = model.intensity
    model.advance(0.5)
    assert model.intensity == e
    assert model.tps == 1.0
