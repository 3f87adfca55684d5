"""Wake-ups on time to the microsecond, for the frame clock.

Trio sleeps in ``epoll_wait``, whose timeout is whole milliseconds rounded up, so a tick
would wake up to a millisecond after it is due. A Linux timerfd armed at the absolute due
time on CLOCK_MONOTONIC becomes readable when the kernel's high-resolution timer fires, and
Trio's epoll loop wakes for it like for any socket.
``os.timerfd_*`` exists from Python 3.13; before that the same two libc calls are made through
ctypes. Where neither works (not Linux), :func:`open_timer` returns None and the clock sleeps
as before.

The frame clock's wake-ups are one period apart, so the timer is armed as a periodic one and
left running while each wake-up it is asked for falls within :data:`SLACK_NS` of one of its
expiries: most ticks then cost no call to arm it. It is armed again when the clock's lead
changes or the expiries drift out of the slack.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from typing import Final, Protocol

import trio

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1

SLACK_NS: Final = 10_000
"""How far a periodic expiry may lie from the wake-up asked for and still serve it: early, the
clock waits the rest before sending; late, it learns the lateness into its lead."""


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Arm(Protocol):
    def __call__(self, fd: int, when_ns: int, interval_ns: int) -> None: ...


def _ctypes_timerfd() -> tuple[int, _Arm] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    fd = int(libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
    if fd < 0:
        return None

    # One spec, filled in place for every call (no allocation when the clock re-arms it).
    spec = _Itimerspec()
    value = spec.it_value
    interval = spec.it_interval
    spec_ref = ctypes.byref(spec)
    settime = libc.timerfd_settime

    def arm(fd: int, when_ns: int, interval_ns: int) -> None:
        value.tv_sec, value.tv_nsec = divmod(when_ns, 1_000_000_000)
        interval.tv_sec, interval.tv_nsec = divmod(interval_ns, 1_000_000_000)
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

    def arm(fd: int, when_ns: int, interval_ns: int) -> None:
        settime(fd, flags=os.TFD_TIMER_ABSTIME, initial=when_ns, interval=interval_ns)  # type: ignore[attr-defined]

    return fd, arm


class PreciseTimer:
    """One timerfd; :meth:`wait_until_ns` sleeps until an absolute CLOCK_MONOTONIC time.

    With ``interval_ns`` the timer runs periodically from the last time it was armed for, and a
    wait for a time within :data:`SLACK_NS` of its next expiry takes that expiry as it is."""

    def __init__(self, fd: int, arm: _Arm, interval_ns: int = 0) -> None:
        self._fd = fd
        self._arm = arm
        self._interval_ns = interval_ns
        self._first_ns: int | None = None
        """The expiry the timer was last armed for (None: not running)."""
        self.armed = 0
        """How many times the timer was armed (a periodic one: rarely)."""

    def _next_expiry(self, now_ns: int) -> int | None:
        first, interval = self._first_ns, self._interval_ns
        if first is None or now_ns < first:
            return first
        if not interval:
            return None
        return first + ((now_ns - first) // interval + 1) * interval

    async def wait_until_ns(self, when_ns: int) -> None:
        while True:
            now = time.monotonic_ns()
            if when_ns <= now:
                await trio.lowlevel.checkpoint()
                return
            expiry = self._next_expiry(now)
            if expiry is None or abs(expiry - when_ns) > SLACK_NS:
                self._arm(self._fd, when_ns, self._interval_ns)
                self._first_ns = when_ns
                self.armed += 1
            await trio.lowlevel.wait_readable(self._fd)
            try:
                os.read(self._fd, 8)
            except BlockingIOError:
                continue
            # An expiry that passed while nobody waited (a late tick) left the timer readable:
            # it is not this wake-up, unless this one is due too.
            if time.monotonic_ns() >= when_ns - SLACK_NS:
                return

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._fd)
        os.close(self._fd)


def open_timer(interval_ns: int = 0) -> PreciseTimer | None:
    """A timer for this process (periodic with ``interval_ns``), or None where timerfd is not
    available."""
    if not hasattr(trio.lowlevel, "wait_readable"):
        return None
    for make in (_os_timerfd, _ctypes_timerfd):
        try:
            made = make()
        except (OSError, AttributeError):
            made = None
        if made is not None:
            return PreciseTimer(*made, interval_ns)
    return None
