"""Every reward rule in one place, so what a user can earn is readable at a glance.

Pure: no I/O, no clock; ``wall_ms`` (integer Unix epoch milliseconds) is passed in and only
stamps the events. :class:`RewardLedger` keeps what has been earned in memory and each
``on_*`` method returns the ``reward_event`` objects to send now (usually none). A reward
key is paid at most once: calling a trigger again never returns its event twice.

===========================  ================  ===========  ================  ======
Trigger                      Key               Type         Title             Points
===========================  ================  ===========  ================  ======
first completed generation   first_light       achievement  First Light       10
100 tokens in total          milestone_100     milestone    100 tokens        10
1,000 tokens in total        milestone_1000    milestone    1,000 tokens      100
10,000 tokens in total       milestone_10000   milestone    10,000 tokens     1000
100,000 tokens in total      milestone_100000  milestone    100,000 tokens    10000
10 EU (100 tokens)           level_2           level_up     Level 2           50
50 EU (500 tokens)           level_3           level_up     Level 3           75
200 EU (2,000 tokens)        level_4           level_up     Level 4           100
1,000 EU (10,000 tokens)     level_5           level_up     Level 5           125
first council (>= 2 models)  council_convened  achievement  Council Convened  25
a session flows 10 s         steady_current    feedback     Steady Current    5
===========================  ================  ===========  ================  ======

Details:

* First Light needs a generation that completed (not failed) with at least one token.
* Token totals are the cumulative count over all models; EU = 0.1 per token
  (``EU_PER_TOKEN``), so levels are computed from token counts exactly. Level 1 (0 EU) is
  where everyone starts and is never an event. A jump over several thresholds returns
  every milestone and level it passed, ordered by threshold (milestone before level at
  the same threshold). A level_up carries ``level`` and ``energyBonus`` = its threshold EU.
* Council runs count calls with at least two models; the first one earns Council Convened.
* Steady Current is paid once per session, when that session has flowed for 10 s without
  a stall; ``unlocked`` lists ``steady_current`` once, while the sessions already paid are
  remembered (the last 4,096) so a session never earns it twice.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, Literal

import attrs

from ..contract.events import RewardEvent, RewardPayload
from .energy import EU_PER_TOKEN

__all__ = [
    "FLOW_REWARD_SECONDS",
    "LEVEL_THRESHOLDS_EU",
    "MILESTONES",
    "RULES",
    "RULES_BY_KEY",
    "RewardLedger",
    "RewardRule",
    "RewardType",
    "level_for_tokens",
]

RewardType = Literal["achievement", "milestone", "feedback", "level_up"]

TITLE_MAX: Final = 100
DESCRIPTION_MAX: Final = 500
MAX_LEVEL: Final = 5

MILESTONES: Final = (100, 1_000, 10_000, 100_000)
"""Total token counts that earn a milestone, each once."""

LEVEL_THRESHOLDS_EU: Final = (0, 10, 50, 200, 1_000)
"""EU needed for levels 1..5."""

FLOW_REWARD_SECONDS: Final = 10.0
"""Seconds a session must flow without a stall to earn Steady Current."""

REMEMBERED_SESSIONS: Final = 4_096
"""Sessions remembered as already paid Steady Current; bounds memory on long runs."""


def _tokens_for_eu(eu: float) -> int:
    """The token count at which ``eu`` is reached, in integers to dodge float drift."""
    return round(eu / EU_PER_TOKEN)


_LEVEL_TOKENS: Final = tuple(_tokens_for_eu(eu) for eu in LEVEL_THRESHOLDS_EU)


def level_for_tokens(total_tokens: int) -> int:
    """The level (1..5) that ``total_tokens`` tokens of energy reach."""
    level = 1
    for n, needed in enumerate(_LEVEL_TOKENS, start=1):
        if total_tokens >= needed:
            level = n
    return level


def _fit(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters so a long model id cannot break the contract."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@attrs.frozen(kw_only=True)
class RewardRule:
    """One reward: what triggers it and the payload it pays; checked against the contract."""

    key: str
    trigger: str
    reward_type: RewardType
    title: str
    points: int
    description: str
    level: int | None = None
    energy_bonus: float | None = None

    def __attrs_post_init__(self) -> None:
        # Fail at import rather than send a reward_event the schema rejects.
        if len(self.title) > TITLE_MAX or len(self.description) > DESCRIPTION_MAX:
            raise ValueError(f"reward {self.key}: title or description too long")
        if self.points < 0:
            raise ValueError(f"reward {self.key}: points must be >= 0")
        if self.level is not None and not 1 <= self.level <= MAX_LEVEL:
            raise ValueError(f"reward {self.key}: level must lie in 1..{MAX_LEVEL}")
        if self.energy_bonus is not None and not self.energy_bonus >= 0:
            raise ValueError(f"reward {self.key}: energyBonus must be >= 0")

    def event(self, wall_ms: int, description: str | None = None) -> RewardEvent:
        """The reward_event paying this rule, optionally with a more specific description."""
        return RewardEvent(
            timestamp=wall_ms,
            payload=RewardPayload(
                reward_type=self.reward_type,
                title=self.title,
                points=self.points,
                description=_fit(description or self.description, DESCRIPTION_MAX),
                level=self.level,
                energy_bonus=self.energy_bonus,
            ),
        )


def _milestone(n: int) -> RewardRule:
    return RewardRule(
        key=f"milestone_{n}",
        trigger=f"{n:,} tokens in total",
        reward_type="milestone",
        title=f"{n:,} tokens",
        points=n // 10,
        description=f"{n:,} tokens generated across all models.",
    )


def _level(n: int) -> RewardRule:
    eu = LEVEL_THRESHOLDS_EU[n - 1]
    return RewardRule(
        key=f"level_{n}",
        trigger=f"{eu:,} EU ({_tokens_for_eu(eu):,} tokens) in total",
        reward_type="level_up",
        title=f"Level {n}",
        points=25 * n,
        description=f"Reached level {n}: {eu:,} EU of generated energy.",
        level=n,
        energy_bonus=float(eu),
    )


FIRST_LIGHT: Final = RewardRule(
    key="first_light",
    trigger="first completed generation",
    reward_type="achievement",
    title="First Light",
    points=10,
    description="A model completed its first generation.",
)
COUNCIL_CONVENED: Final = RewardRule(
    key="council_convened",
    trigger="first council run with at least 2 models",
    reward_type="achievement",
    title="Council Convened",
    points=25,
    description="Several models answered side by side for the first time.",
)
STEADY_CURRENT: Final = RewardRule(
    key="steady_current",
    trigger=f"a session flows {FLOW_REWARD_SECONDS:g} s without a stall (once per session)",
    reward_type="feedback",
    title="Steady Current",
    points=5,
    description=f"The stream flowed for {FLOW_REWARD_SECONDS:g} seconds without stalling.",
)

RULES: Final[tuple[RewardRule, ...]] = (
    FIRST_LIGHT,
    *(_milestone(n) for n in MILESTONES),
    *(_level(n) for n in range(2, MAX_LEVEL + 1)),
    COUNCIL_CONVENED,
    STEADY_CURRENT,
)
"""Every reward the server can pay, in the order of the table above."""

RULES_BY_KEY: Final[dict[str, RewardRule]] = {rule.key: rule for rule in RULES}
RULES_BY_TITLE: Final[dict[str, RewardRule]] = {rule.title: rule for rule in RULES}


class RewardLedger:
    """What this server has paid so far, and the triggers that pay more.

    In memory only: a restart starts a new ledger. Each ``on_*`` method returns the events
    to send now, in order.
    """

    def __init__(self) -> None:
        self._unlocked: dict[str, None] = {}  # insertion-ordered set
        self._total_tokens = 0
        self._level = 1
        self._council_runs = 0
        self._flow_sessions: OrderedDict[str, None] = OrderedDict()

    @property
    def unlocked(self) -> tuple[str, ...]:
        """Reward keys earned so far, in the order they were earned."""
        return tuple(self._unlocked)

    @property
    def level(self) -> int:
        """Current level, 1..5."""
        return self._level

    @property
    def total_tokens(self) -> int:
        """Highest total token count seen."""
        return self._total_tokens

    @property
    def council_runs(self) -> int:
        """Council runs (with at least two models) started."""
        return self._council_runs

    def earned_elsewhere(self, title: str) -> None:
        """Another process of a cluster paid the reward titled ``title``: count it as
        unlocked here too (not paid again, and listed in the snapshot). A feedback reward
        is per session, so it stays each process's own."""
        rule = RULES_BY_TITLE.get(title)
        if rule is not None and rule.reward_type != "feedback":
            self._unlocked.setdefault(rule.key, None)

    def _pay(self, rule: RewardRule, wall_ms: int, description: str | None = None) -> RewardEvent:
        self._unlocked[rule.key] = None
        return rule.event(wall_ms, description)

    def on_session_complete(
        self, model_id: str, tokens_in_session: int, failed: bool, wall_ms: int
    ) -> list[RewardEvent]:
        """A generation ended; the first one that completed with tokens earns First Light."""
        if failed or tokens_in_session < 1 or FIRST_LIGHT.key in self._unlocked:
            return []
        noun = "token" if tokens_in_session == 1 else "tokens"
        text = f"{model_id} completed its first generation: {tokens_in_session:,} {noun}."
        return [self._pay(FIRST_LIGHT, wall_ms, text)]

    def on_tokens(self, total_tokens_all_models: int, wall_ms: int) -> list[RewardEvent]:
        """The running token total changed: pay the milestones and levels it has passed."""
        if total_tokens_all_models <= self._total_tokens:
            return []  # called every frame: nothing passed since the last call (none is at 0)
        total = self._total_tokens = total_tokens_all_models
        due: list[tuple[int, int, RewardRule]] = []
        for n in MILESTONES:
            rule = RULES_BY_KEY[f"milestone_{n}"]
            if total >= n and rule.key not in self._unlocked:
                due.append((n, 0, rule))
        new_level = level_for_tokens(total)
        for n in range(self._level + 1, new_level + 1):
            rule = RULES_BY_KEY[f"level_{n}"]
            if rule.key not in self._unlocked:
                due.append((_LEVEL_TOKENS[n - 1], 1, rule))
        self._level = max(self._level, new_level)
        due.sort(key=lambda item: (item[0], item[1]))
        return [self._pay(rule, wall_ms) for _, _, rule in due]

    def on_council_started(self, model_count: int, wall_ms: int) -> list[RewardEvent]:
        """A council run began; the first with at least two models earns Council Convened."""
        if model_count < 2:
            return []
        self._council_runs += 1
        if COUNCIL_CONVENED.key in self._unlocked:
            return []
        return [self._pay(COUNCIL_CONVENED, wall_ms)]

    def on_flow(
        self, session_id: str, flowing_seconds_without_stall: float, wall_ms: int
    ) -> list[RewardEvent]:
        """A session has flowed this long without a stall; 10 s earns Steady Current once."""
        if not flowing_seconds_without_stall >= FLOW_REWARD_SECONDS:
            return []
        if session_id in self._flow_sessions:
            return []
        self._flow_sessions[session_id] = None
        while len(self._flow_sessions) > REMEMBERED_SESSIONS:
            self._flow_sessions.popitem(last=False)
        return [self._pay(STEADY_CURRENT, wall_ms)]
