"""The frame clock's timerfd on the real clock: on time, armed rarely, never fooled by an
expiry that nobody waited for."""

from __future__ import annotations

import time

import pytest
import trio

from wirthforge_trio.engine.timer import SLACK_NS, PreciseTimer, open_timer

PERIOD_NS = 16_666_667


def timer(interval_ns: int) -> PreciseTimer:
    made = open_timer(interval_ns)
    if made is None:
        pytest.skip("no timerfd on this platform")
    return made


async def wait_for(t: PreciseTimer, when_ns: int) -> int:
    """Wait; how late (negative: early) the wait returned, in ns."""
    await t.wait_until_ns(when_ns)
    return time.monotonic_ns() - when_ns


async def test_a_periodic_timer_serves_each_period_without_being_armed_again() -> None:
    t = timer(PERIOD_NS)
    first = time.monotonic_ns() + 5_000_000
    try:
        offsets = [await wait_for(t, first + k * PERIOD_NS) for k in range(30)]
    finally:
        t.close()
    assert t.armed == 1
    assert min(offsets) >= -SLACK_NS
    assert sorted(offsets)[15] < 2_000_000  # on time, give or take a busy machine


async def test_a_wake_up_off_the_period_arms_it_again() -> None:
    t = timer(PERIOD_NS)
    first = time.monotonic_ns() + 5_000_000
    try:
        await wait_for(t, first)
        await wait_for(t, first + PERIOD_NS)
        late = await wait_for(t, first + 2 * PERIOD_NS + 3 * SLACK_NS)  # the lead changed
        assert t.armed == 2
        assert late >= 0
        await wait_for(t, first + 3 * PERIOD_NS + 3 * SLACK_NS)  # the new phase holds
        assert t.armed == 2
    finally:
        t.close()


async def test_expiries_nobody_waited_for_do_not_end_a_later_wait_early() -> None:
    t = timer(PERIOD_NS)
    first = time.monotonic_ns() + 5_000_000
    try:
        await wait_for(t, first)
        # A tick that overran: the timer fired meanwhile, and the next wake-up is the
        # expiry after that one.
        await trio.sleep(1.4 * PERIOD_NS / 1e9)
        target = first + 2 * PERIOD_NS
        assert await wait_for(t, target) >= -SLACK_NS
        assert t.armed == 1
    finally:
        t.close()


async def test_a_one_shot_timer_is_armed_for_every_wait() -> None:
    t = timer(0)
    start = time.monotonic_ns() + 2_000_000
    try:
        offsets = [await wait_for(t, start + k * 3_000_000) for k in range(5)]
        assert await wait_for(t, time.monotonic_ns() - 1) >= 0  # already due: returns at once
    finally:
        t.close()
    assert t.armed == 5
    assert min(offsets) >= 0
