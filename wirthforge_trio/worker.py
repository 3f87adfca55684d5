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
    """Stop this worker with ``message`` on stderr (once for all workers) and make the
    supervisor exit non-zero. Never returns.

    Hypercorn's supervisor (0.18) exits 0 whatever its workers' statuses: it recomputes the
    status from the workers still running after it has stopped them. So the worker that
    prints ends the supervisor itself, with SIGKILL (it holds no state; its other workers
    refuse on their own).
    """
    import errno
    import multiprocessing
    import os
    import signal
    import socket

    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None else None
    first = True
    if parent_pid is not None:
        # One line for all workers: the first to bind this abstract (Linux, no file) name
        # speaks; a worker whose supervisor is already gone has nothing to add.
        if os.getppid() != parent_pid:
            first = False
        else:
            try:
                elect = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                elect.bind(f"\0wirthforge-refusal-{parent_pid}")
            except OSError as exc:
                first = exc.errno != errno.EADDRINUSE  # another worker speaks
    if first:
        print(message, file=sys.stderr, flush=True)
        supervised = hypercorn_workers() is not None
        if supervised and parent_pid is not None and os.getppid() == parent_pid:
            _release_shutdown_event()
            os.kill(parent_pid, signal.SIGKILL)
    os._exit(status)


def _release_shutdown_event() -> None:
    """Unlink the named semaphores of the supervisor's shutdown Event, as the supervisor would
    on its way out; else its resource tracker, outliving it, warns of them as leaked."""
    import multiprocessing
    from multiprocessing import resource_tracker

    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None) or {}
    event = kwargs.get("shutdown_event")
    condition = getattr(event, "_cond", None)
    parts = [getattr(event, "_flag", None)] + [
        getattr(condition, name, None)
        for name in ("_lock", "_sleeping_count", "_woken_count", "_wait_semaphore")
    ]
    for part in parts:
        name = getattr(getattr(part, "_semlock", None), "name", None)
        if not isinstance(name, str):
            continue
        try:
            resource_tracker.unregister(name, "semaphore")
            from _multiprocessing import sem_unlink  # type: ignore[import-not-found]

            sem_unlink(name)
        except Exception:  # a leak warning at worst, never a reason to stay
            pass
