"""Hypercorn's trio worker process, waiting for its supervisor's word to stop without polling.

``hypercorn -k trio`` runs the app in a worker process and tells it to stop through a
``multiprocessing`` Event, which nothing can wait for asynchronously: Hypercorn's worker
checks it ten times a second. Each check is a wake-up of the whole process, on top of the
frame clock's sixty; on the machines this was measured on the ten cost about 0.4 % of a core
with one idle client, through the checks and everything else then running colder
(``docs/benchmarks/README.md``). Blocked in a thread instead, the wait costs
nothing until the Event is set, and the worker hears of it at once rather than up to 0.1 s
later. This is the one thread the server starts, and only in that worker: the Event leaves
no other way short of polling.

Hypercorn builds its shutdown trigger from ``hypercorn.trio.run.check_multiprocess_shutdown_event``
after it has imported the app, so :func:`wait_without_polling`, called when ``app.py`` is
imported, can put :func:`wait_for_event` there. It does so only if the name still holds
Hypercorn's own function; any other Hypercorn keeps its polling.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio


class _Waitable(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


async def wait_for_event(event: _Waitable, sleep: Callable[[float], Awaitable[Any]]) -> None:
    """Return once the supervisor has set ``event``: blocked in a worker thread, which is left
    behind (a daemon, blocked on the Event until the process exits) if this is cancelled."""
    await trio.to_thread.run_sync(event.wait, abandon_on_cancel=True)


def wait_without_polling() -> bool:
    """Have Hypercorn's trio worker wait for its shutdown Event in a thread; False when this
    is not Hypercorn's trio worker as this was written for (nothing is changed then)."""
    run = sys.modules.get("hypercorn.trio.run")
    utils = sys.modules.get("hypercorn.utils")
    if run is None or utils is None:
        return False
    current = getattr(run, "check_multiprocess_shutdown_event", None)
    if current is wait_for_event:
        return True
    if current is None or current is not getattr(utils, "check_multiprocess_shutdown_event", None):
        return False
    run.check_multiprocess_shutdown_event = wait_for_event  # type: ignore[attr-defined]
    return True


# -- how many workers share the listening socket -----------------------------------------------
#
# Hypercorn's supervisor starts each worker with ``multiprocessing`` (spawn) and hands it its
# Config as an argument of the process; in the worker that process object is
# ``multiprocessing.current_process()``. Reading ``workers`` there is exact (it is the number
# the supervisor starts) and needs no file or probe (docs/decisions.md, "One worker unless a
# broker"). Only this module knows it.


def hypercorn_workers() -> int | None:
    """How many workers the Hypercorn supervisor that started this process runs; None when
    this process is not a worker started by Hypercorn's supervisor (``wirthforge serve``, an
    embedding program, ``hypercorn --workers 0``)."""
    import multiprocessing

    process = multiprocessing.current_process()
    target = getattr(process, "_target", None)
    if getattr(target, "__module__", "").split(".")[0] != "hypercorn":
        return None
    config = (getattr(process, "_kwargs", None) or {}).get("config")
    workers = getattr(config, "workers", None)
    return workers if isinstance(workers, int) else None


def refuse_to_start(message: str, *, status: int = 2) -> None:
    """Stop this worker with ``message`` on stderr, printed once for all the workers of one
    supervisor (docs/decisions.md, "One worker unless a broker"). Never returns."""
    import multiprocessing
    import os
    import socket

    parent = multiprocessing.parent_process()
    speaks = True
    if parent is not None and hypercorn_workers() is not None:
        # The first worker to bind this abstract (Linux, no file) name speaks for all.
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0wirthforge-refusal-{parent.pid}")
        except OSError:
            speaks = False
    if speaks:
        print(message, file=sys.stderr, flush=True)
    os._exit(status)
