"""What waking 60 times a second costs by itself, before any frame is built or sent.

The idle-CPU figure of the benchmark (one client, no generation) has a floor that no server
code can go below: the cost of the wake-ups themselves, in the kernel (on a virtual machine,
the timer interrupt and the switch in and out of the idle state) and in the event loop. This
runs an empty 60 Hz loop in a child process pinned to one CPU, in each of several ways, and
reports the CPU it used, from the kernel's per-task accounting (``/proc/PID/schedstat``):

- ``epoll``: a bare Python loop blocking in ``epoll.poll`` with the time left (no event loop);
- ``trio-timerfd``: Trio waiting on a timerfd armed at each due time, as the frame clock does;
- ``trio-sleep``: Trio's own ``sleep_until``;
- ``asyncio-sleep``: asyncio's ``sleep`` (the loop the peers run on).

    python benchmarks/wake_floor.py [--seconds 8] [--cpu 0]

Linux only. The figures are % of one core; compare them with the benchmark's idle CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

RATE = 60.0
MODES = ("epoll", "trio-timerfd", "trio-sleep", "asyncio-sleep")


def _loop(mode: str, seconds: float) -> None:
    """The empty loop (in the child process)."""
    period = 1.0 / RATE
    end = time.monotonic() + seconds
    if mode == "epoll":
        import select

        poller = select.epoll()
        origin, n = time.monotonic(), 0
        while time.monotonic() < end:
            n += 1
            poller.poll(max(origin + n * period - time.monotonic(), 0.0))
    elif mode.startswith("trio"):
        import trio

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from wirthforge_trio.engine.timer import open_timer

        async def run() -> None:
            timer = open_timer() if mode == "trio-timerfd" else None
            origin_ns, start, n = time.monotonic_ns(), trio.current_time(), 0
            with trio.move_on_after(seconds):
                while True:
                    n += 1
                    if timer is not None:
                        await timer.wait_until_ns(origin_ns + round(n * period * 1e9))
                    else:
                        await trio.sleep_until(start + n * period)

        trio.run(run)
    else:
        import asyncio

        async def run_asyncio() -> None:
            loop = asyncio.get_running_loop()
            start, n = loop.time(), 0
            while loop.time() < start + seconds:
                n += 1
                await asyncio.sleep(max(start + n * period - loop.time(), 0.0))

        asyncio.run(run_asyncio())


def _cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def measure(mode: str, seconds: float, cpu: int) -> float:
    """% of one core an empty 60 Hz loop of ``mode`` used, after a second of warm-up."""
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", mode, "--seconds", str(seconds + 2)]
    )
    try:
        os.sched_setaffinity(child.pid, {cpu})
        time.sleep(1.0)
        before, started = _cpu_ns(child.pid), time.monotonic()
        time.sleep(seconds)
        used, elapsed = _cpu_ns(child.pid) - before, time.monotonic() - started
    finally:
        child.wait(timeout=30)
    return 100.0 * used / (elapsed * 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin the loops to")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _loop(args.child, args.seconds)
        return
    for mode in MODES:
        print(f"{mode:14} {measure(mode, args.seconds, args.cpu):5.2f} % of a core at 60 Hz")


if __name__ == "__main__":
    main()
