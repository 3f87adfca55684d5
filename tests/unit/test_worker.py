"""Hypercorn's trio worker waits for its supervisor's shutdown Event in a thread instead of
checking it ten times a second (``fastpath.patch_hypercorn_worker``). Stopping through the
supervisor, end to end, is in test_commands (SIGTERM to ``hypercorn -k trio``, clients told
1001)."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import hypercorn.trio.run
import hypercorn.utils
import pytest
import trio

from tests.support.instruments import StepCounter
from wirthforge_trio.transport import fastpath
from wirthforge_trio.transport.fastpath import patch_hypercorn_worker, wait_for_event


@pytest.mark.parametrize(
    "waiter", [wait_for_event, hypercorn.utils.check_multiprocess_shutdown_event]
)
async def test_the_wait_never_wakes_until_the_event_is_set(waiter: Any) -> None:
    """Hypercorn's own check, measured the same way, wakes about five times in the half
    second: the comparison shows the counter would see a poll."""
    event = multiprocessing.get_context("spawn").Event()
    counter = StepCounter()
    done = trio.Event()

    async def wait() -> None:
        await waiter(event, trio.sleep)
        done.set()

    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, name="waiter")
            await trio.sleep(0.1)  # started, and waiting
            before = counter.steps.get("waiter", 0)
            await trio.sleep(0.5)
            steps_while_waiting = counter.steps.get("waiter", 0) - before
            threading.Timer(0.05, event.set).start()  # the supervisor, from elsewhere
            with trio.fail_after(2):
                await done.wait()
    finally:
        trio.lowlevel.remove_instrument(counter)
    if waiter is wait_for_event:
        assert steps_while_waiting == 0  # parked until the thread returned
    else:
        assert steps_while_waiting >= 3


async def test_a_cancelled_wait_returns_at_once() -> None:
    event = multiprocessing.get_context("spawn").Event()
    with trio.move_on_after(0.1) as scope:
        await wait_for_event(event, trio.sleep)
    assert scope.cancelled_caught
    event.set()  # lets the abandoned thread finish


def test_the_patch_replaces_only_hypercorns_own_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Hypercorn whose worker uses something else is left alone.
    other = object()
    monkeypatch.setattr(hypercorn.trio.run, "check_multiprocess_shutdown_event", other)
    assert not patch_hypercorn_worker()
    assert hypercorn.trio.run.check_multiprocess_shutdown_event is other
    # Hypercorn's own function is replaced.
    monkeypatch.setattr(
        hypercorn.trio.run,
        "check_multiprocess_shutdown_event",
        hypercorn.utils.check_multiprocess_shutdown_event,
    )
    assert patch_hypercorn_worker()
    assert hypercorn.trio.run.check_multiprocess_shutdown_event is wait_for_event


def test_only_a_worker_started_by_hypercorns_supervisor_is_patched() -> None:
    """The entry module (``wirthforge_trio.app``) patches only where this holds; pytest's own
    process was not started by Hypercorn (the patch in a real worker: test_commands)."""
    assert not fastpath.in_hypercorn_worker()
    assert fastpath.hypercorn_workers() is None
