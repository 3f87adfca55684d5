"""Reward rules: each fires once, at its threshold, in order, within the contract's limits."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import jsonschema
import pytest

from tests.support.paths import PUBLISHED_SCHEMA
from wirthforge_trio.contract import codec
from wirthforge_trio.contract.events import RewardEvent
from wirthforge_trio.engine.rewards import (
    LEVEL_THRESHOLDS_EU,
    MILESTONES,
    RULES,
    RULES_BY_KEY,
    RewardLedger,
    RewardRule,
    level_for_tokens,
)

WALL = 1_726_000_000_000

_validator: jsonschema.Draft7Validator | None = (
    jsonschema.Draft7Validator(json.loads(PUBLISHED_SCHEMA.read_text(encoding="utf-8")))
    if PUBLISHED_SCHEMA.exists()
    else None
)


def check(events: Sequence[RewardEvent]) -> list[RewardEvent]:
    """Contract limits always; the published schema too when it is present."""
    for event in events:
        p = event.payload
        assert len(p.title) <= 100
        assert p.description is None or len(p.description) <= 500
        assert isinstance(p.points, int)
        assert p.points >= 0
        assert p.level is None or 1 <= p.level <= 5
        assert p.energy_bonus is None or p.energy_bonus >= 0
        assert event.timestamp == WALL
        if _validator is not None:
            message: dict[str, Any] = json.loads(codec.encode(event))
            errors = [e.message for e in _validator.iter_errors(message)]
            assert not errors, (errors, message)
    return list(events)


def titles(events: Sequence[RewardEvent]) -> list[str]:
    return [e.payload.title for e in check(events)]


# -- the table -----------------------------------------------------------------------------


def test_rules_table() -> None:
    table = {(r.key, r.reward_type, r.title, r.points) for r in RULES}
    assert table == {
        ("first_light", "achievement", "First Light", 10),
        ("milestone_100", "milestone", "100 tokens", 10),
        ("milestone_1000", "milestone", "1,000 tokens", 100),
        ("milestone_10000", "milestone", "10,000 tokens", 1000),
        ("milestone_100000", "milestone", "100,000 tokens", 10000),
        ("level_2", "level_up", "Level 2", 50),
        ("level_3", "level_up", "Level 3", 75),
        ("level_4", "level_up", "Level 4", 100),
        ("level_5", "level_up", "Level 5", 125),
        ("council_convened", "achievement", "Council Convened", 25),
        ("steady_current", "feedback", "Steady Current", 5),
    }
    assert len(RULES_BY_KEY) == len(RULES)
    assert all(r.trigger for r in RULES)
    check([r.event(WALL) for r in RULES])


def test_rule_limits_are_enforced() -> None:
    base: dict[str, Any] = {
        "key": "k",
        "trigger": "t",
        "reward_type": "feedback",
        "title": "T",
        "points": 1,
        "description": "d",
    }
    RewardRule(**base)
    for bad in (
        {"title": "x" * 101},
        {"description": "x" * 501},
        {"points": -1},
        {"level": 0},
        {"level": 6},
        {"energy_bonus": -0.1},
    ):
        with pytest.raises(ValueError):
            RewardRule(**(base | bad))


def test_level_for_tokens() -> None:
    # 0.1 EU per token: 10 EU = 100 tokens, 50 EU = 500, 200 EU = 2,000, 1,000 EU = 10,000.
    assert LEVEL_THRESHOLDS_EU == (0, 10, 50, 200, 1_000)
    cases = {0: 1, 99: 1, 100: 2, 499: 2, 500: 3, 1_999: 3, 2_000: 4, 9_999: 4, 10_000: 5}
    for tokens, level in cases.items():
        assert level_for_tokens(tokens) == level, tokens
    assert level_for_tokens(10**9) == 5


# -- First Light ---------------------------------------------------------------------------


def test_first_light_once_for_the_first_completed_generation() -> None:
    ledger = RewardLedger()
    assert ledger.on_session_complete("demo", 12, True, WALL) == []  # failed
    assert ledger.on_session_complete("demo", 0, False, WALL) == []  # nothing written
    (event,) = check(ledger.on_session_complete("qwen3-0_6b", 12, False, WALL))
    p = event.payload
    assert (p.reward_type, p.title, p.points) == ("achievement", "First Light", 10)
    assert p.description is not None
    assert "qwen3-0_6b" in p.description
    assert ledger.on_session_complete("qwen3-0_6b", 40, False, WALL) == []
    assert ledger.on_session_complete("other", 40, False, WALL) == []
    assert ledger.unlocked == ("first_light",)


def test_first_light_description_stays_within_limit() -> None:
    ledger = RewardLedger()
    (event,) = check(ledger.on_session_complete("m" * 600, 3, False, WALL))
    assert event.payload.description is not None
    assert len(event.payload.description) == 500


# -- milestones and levels -----------------------------------------------------------------


def test_milestones_and_levels_at_their_thresholds() -> None:
    ledger = RewardLedger()
    assert ledger.on_tokens(0, WALL) == []
    assert ledger.on_tokens(99, WALL) == []
    assert titles(ledger.on_tokens(100, WALL)) == ["100 tokens", "Level 2"]
    assert ledger.level == 2
    assert ledger.on_tokens(100, WALL) == []
    assert ledger.on_tokens(499, WALL) == []
    assert titles(ledger.on_tokens(500, WALL)) == ["Level 3"]
    assert titles(ledger.on_tokens(1_000, WALL)) == ["1,000 tokens"]
    assert titles(ledger.on_tokens(2_000, WALL)) == ["Level 4"]
    assert titles(ledger.on_tokens(10_000, WALL)) == ["10,000 tokens", "Level 5"]
    assert ledger.on_tokens(99_999, WALL) == []
    assert titles(ledger.on_tokens(100_000, WALL)) == ["100,000 tokens"]
    assert ledger.on_tokens(10**7, WALL) == []
    assert ledger.level == 5
    assert ledger.total_tokens == 10**7


def test_milestone_payloads() -> None:
    ledger = RewardLedger()
    events = [e for e in ledger.on_tokens(100_000, WALL) if e.payload.reward_type == "milestone"]
    assert [(e.payload.title, e.payload.points) for e in check(events)] == [
        ("100 tokens", 10),
        ("1,000 tokens", 100),
        ("10,000 tokens", 1_000),
        ("100,000 tokens", 10_000),
    ]
    assert [m // 10 for m in MILESTONES] == [e.payload.points for e in events]


def test_level_up_payloads() -> None:
    ledger = RewardLedger()
    events = [e for e in ledger.on_tokens(10_000, WALL) if e.payload.reward_type == "level_up"]
    got = [
        (e.payload.title, e.payload.level, e.payload.points, e.payload.energy_bonus)
        for e in check(events)
    ]
    assert got == [
        ("Level 2", 2, 50, 10.0),
        ("Level 3", 3, 75, 50.0),
        ("Level 4", 4, 100, 200.0),
        ("Level 5", 5, 125, 1_000.0),
    ]


def test_skipped_levels_each_get_an_event_in_order() -> None:
    ledger = RewardLedger()
    assert titles(ledger.on_tokens(50, WALL)) == []
    assert titles(ledger.on_tokens(2_500, WALL)) == [
        "100 tokens",
        "Level 2",
        "Level 3",
        "1,000 tokens",
        "Level 4",
    ]
    assert ledger.level == 4


def test_level_one_is_never_an_event() -> None:
    ledger = RewardLedger()
    assert ledger.level == 1
    events = ledger.on_tokens(10**6, WALL)
    assert all(e.payload.level != 1 for e in events)
    assert "level_1" not in ledger.unlocked


def test_a_lower_total_never_takes_anything_back() -> None:
    ledger = RewardLedger()
    ledger.on_tokens(600, WALL)
    assert ledger.on_tokens(50, WALL) == []
    assert ledger.level == 3
    assert ledger.total_tokens == 600
    assert ledger.on_tokens(600, WALL) == []


# -- council and flow ----------------------------------------------------------------------


def test_council_convened_once_for_two_or_more_models() -> None:
    ledger = RewardLedger()
    assert ledger.on_council_started(1, WALL) == []
    assert ledger.council_runs == 0
    (event,) = check(ledger.on_council_started(3, WALL))
    assert (event.payload.reward_type, event.payload.title, event.payload.points) == (
        "achievement",
        "Council Convened",
        25,
    )
    assert ledger.on_council_started(2, WALL) == []
    assert ledger.council_runs == 2


def test_steady_current_once_per_session() -> None:
    ledger = RewardLedger()
    assert ledger.on_flow("s-1", 9.99, WALL) == []
    (event,) = check(ledger.on_flow("s-1", 10.0, WALL))
    assert (event.payload.reward_type, event.payload.title, event.payload.points) == (
        "feedback",
        "Steady Current",
        5,
    )
    assert ledger.on_flow("s-1", 30.0, WALL) == []
    assert titles(ledger.on_flow("s-2", 12.0, WALL)) == ["Steady Current"]
    assert ledger.on_flow("s-2", 12.0, WALL) == []
    assert ledger.unlocked == ("steady_current",)


# -- the ledger as a whole -----------------------------------------------------------------


def test_every_trigger_twice_never_pays_twice() -> None:
    ledger = RewardLedger()
    calls: list[Callable[[], list[RewardEvent]]] = [
        lambda: ledger.on_session_complete("demo", 5, False, WALL),
        lambda: ledger.on_tokens(200_000, WALL),
        lambda: ledger.on_council_started(2, WALL),
        lambda: ledger.on_flow("s-1", 11.0, WALL),
    ]
    first = [e for call in calls for e in call()]
    second = [e for call in calls for e in call()]
    assert second == []
    assert len(check(first)) == 1 + 4 + 4 + 1 + 1
    assert ledger.unlocked == (
        "first_light",
        "milestone_100",
        "level_2",
        "level_3",
        "milestone_1000",
        "level_4",
        "milestone_10000",
        "level_5",
        "milestone_100000",
        "council_convened",
        "steady_current",
    )
    assert set(ledger.unlocked) == set(RULES_BY_KEY)


def test_every_reward_validates_against_published_schema() -> None:
    if _validator is None:
        pytest.skip(f"published contract not found at {PUBLISHED_SCHEMA}")
    ledger = RewardLedger()
    events = ledger.on_session_complete("demo", 1, False, WALL)
    events += ledger.on_tokens(100_000, WALL)
    events += ledger.on_council_started(2, WALL)
    events += ledger.on_flow("s-1", 10.0, WALL)
    assert {e.payload.reward_type for e in events} == {
        "achievement",
        "milestone",
        "feedback",
        "level_up",
    }
    check(events)
    for event in events:
        wire = json.loads(codec.encode(event))
        assert wire["type"] == "reward_event"
        assert wire["channel"] == "reward"
        assert "frameNumber" not in wire


def test_a_reward_another_process_paid_is_unlocked_here_and_not_paid_again() -> None:
    ledger = RewardLedger()
    ledger.earned_elsewhere("First Light")
    ledger.earned_elsewhere("Level 2")
    ledger.earned_elsewhere("Steady Current")  # per session: stays this process's own
    ledger.earned_elsewhere("Not A Reward")
    assert ledger.unlocked == ("first_light", "level_2")
    assert ledger.on_session_complete("demo", 5, failed=False, wall_ms=1) == []
    assert [e.payload.title for e in ledger.on_tokens(150, 1)] == ["100 tokens"]
