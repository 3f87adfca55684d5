"""Wake-ups on time to the microsecond, for the frame clock.

Trio sleeps in ``epoll_wait``, whose timeout is whole milliseconds rounded up, so a tick
wakes 0-1 ms after it is due: half a millisecond of latency on every frame, on average. A
Linux timerfd armed at the absolute due time on CLOCK_MONOTONIC becomes readable when the
kernel's high-resolution timer fires, and Trio's epoll loop wakes for it like for any socket.
``os.timerfd_*`` exists from Python 3.13; before that the same two libc calls are made through
ctypes. Where neither works (not Linux), :func:`open_timer` returns None and the clock sleeps
as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from typing import Protocol

import trio

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Arm(Protocol):
    def __call__(self, fd: int, when_ns: int) -> None: ...


def _ctypes_timerfd() -> tuple[int, _Arm] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    fd = int(libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
    if fd < 0:
        return None

    # One spec, filled in place for every call: the clock arms the timer 60 times a second.
    spec = _Itimerspec()
    value = spec.it_value
    spec_ref = ctypes.byref(spec)
    settime = libc.timerfd_settime

    def arm(fd: int, when_ns: int) -> None:
        value.tv_sec, value.tv_nsec = divmod(when_ns, 1_000_000_000)
        if settime(fd, _TFD_TIMER_ABSTIME, spec_ref, None) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    return fd, arm


def _os_timerfd() -> tuple[int, _Arm] | None:
    create = getattr(os, "timerfd_create", None)
    settime = getattr(os, "timerfd_settime_ns", None)
    if create is None or settime is None:
        return None
    fd = int(create(time.CLOCK_MONOTONIC, flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC))  # type: ignore[attr-defined]

    def arm(fd: int, when_ns: int) -> None:
        settime(fd, flags=os.TFD_TIMER_ABSTIME, initial=when_ns)  # type: ignore[attr-defined]

    return fd, arm


class PreciseTimer:
    """One timerfd; :meth:`wait_until_ns` sleeps until an absolute CLOCK_MONOTONIC time."""

    def __init__(self, fd: int, arm: _Arm) -> None:
        self._fd = fd
        self._arm = arm

    async def wait_until_ns(self, when_ns: int) -> None:
        if when_ns <= time.monotonic_ns():
            await trio.lowlevel.checkpoint()
            return
        self._arm(self._fd, when_ns)
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                os.read(self._fd, 8)
            except BlockingIOError:
                continue
            return

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._fd)
        os.close(self._fd)


def open_timer() -> PreciseTimer | None:
    """A timer for this process, or None where timerfd is not available."""
    if not hasattr(trio.lowlevel, "wait_readable"):
        return None
    for make in (_os_timerfd, _ctypes_timerfd):
        try:
            made = make()
        except (OSError, AttributeError):
            made = None
        if made is not None:
            return PreciseTimer(*made)
    return None
