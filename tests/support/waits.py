"""Wait until a condition holds, within a generous deadline, instead of sleeping a fixed time:
the machine is shared and noisy, so a test waits for the event it needs, never for a guess."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import trio

POLL_SECONDS = 0.02


async def eventually(
    predicate: Callable[[], bool] | Callable[[], Awaitable[bool]],
    seconds: float = 5.0,
    what: str = "",
) -> None:
    """Poll ``predicate()`` (state that offers no event of its own; an async predicate may ask
    the server, e.g. ``/status``) until it holds; fail the test after ``seconds``, naming
    ``what`` was awaited."""
    with trio.move_on_after(seconds):
        while True:
            holds = predicate()
            if inspect.isawaitable(holds):
                holds = await holds
            if holds:
                return
            await trio.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out after {seconds} s waiting for {what or predicate}")


def wait_until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """:func:`eventually` for synchronous tests (a browser driven by Playwright's sync API);
    the failure names ``what`` was awaited."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)
