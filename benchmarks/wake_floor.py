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

Then the same loops with the idle scenario's I/O and nothing else, the least any server can
do for it: one client on loopback TCP (a process on another CPU, as the load generator is)
gets each tick's frame (the idle ``energy_update``, 196 bytes, framed once at start) and a
heartbeat every 60th tick, and sends a ping ten times a second and a heartbeat response to
each heartbeat; each ping is answered with a pong written at once. No JSON, no WebSocket
parsing, no framework: what remains is the wake-ups, the reads and the writes.

- ``epoll+client``: the bare Python loop, the client's socket in the same ``epoll``;
- ``trio+client``: Trio, a task waiting on the timerfd for the frames and one on the socket;
- ``asyncio+client``: asyncio, ``sleep`` for the frames and ``add_reader`` for the socket.

    python benchmarks/wake_floor.py [--seconds 8] [--cpu 0] [--client-cpu 1] [--modes ...]

Linux only. The figures are % of one core; compare them with the benchmark's idle CPU.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.peers.common import CAPTURED
from benchmarks.wsframes import encode_client_frame
from wirthforge_trio.protocol.rfc6455 import text_frame

RATE = 60.0
EMPTY_MODES = ("epoll", "trio-timerfd", "trio-sleep", "asyncio-sleep")
CLIENT_MODES = ("epoll+client", "trio+client", "asyncio+client")
MODES = EMPTY_MODES + CLIENT_MODES
PING_HZ = 10.0
HEARTBEAT_EVERY = 60
"""Ticks between two heartbeats (the contract's: about 1 s)."""


FRAME = text_frame(CAPTURED["energy_update"].encode())
HEARTBEAT = text_frame(CAPTURED["heartbeat"].encode())
PONG = text_frame(CAPTURED["pong"].encode())
PING = encode_client_frame(b'{"type":"ping","payload":{"t":123456789,"x":"abc"}}', mask=b"wf03")
HEARTBEAT_START = b'{"type":"heartbeat"'
RESPONSE = encode_client_frame(b'{"type":"heartbeat_response","payload":{"sequence":0}}')


class _Pings:
    """Counts whole pings in what the client sent (its heartbeat responses are read and
    dropped: they need no answer)."""

    def __init__(self) -> None:
        self.pending = b""

    def answers(self, data: bytes) -> bytes:
        """The pongs owed for the pings completed by ``data``."""
        data = self.pending + data
        count = data.count(PING)
        rest = data[data.rfind(PING) + len(PING) :] if count else data
        self.pending = rest[-(len(PING) - 1) :]  # at most the start of the next ping
        return PONG * count


def _loop(mode: str, seconds: float) -> None:
    """The empty loop (in the child process)."""
    period = 1.0 / RATE
    end = time.monotonic() + seconds
    if mode == "epoll":
        poller = select.epoll()
        origin, n = time.monotonic(), 0
        while time.monotonic() < end:
            n += 1
            poller.poll(max(origin + n * period - time.monotonic(), 0.0))
    elif mode.startswith("trio"):
        import trio

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


def _tick(fd: int, n: int) -> None:
    """Frame ``n`` to the client, and the heartbeat when one is due, as two writes (as the
    server sends them)."""
    os.write(fd, FRAME)
    if n % HEARTBEAT_EVERY == 0:
        os.write(fd, HEARTBEAT)


def _serve(mode: str, listener: socket.socket, seconds: float) -> None:
    """The loop with one client (in the child process): frames, heartbeats, pongs."""
    conn, _ = listener.accept()
    listener.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fd, pings, period = conn.fileno(), _Pings(), 1.0 / RATE

    def on_readable() -> bool:
        """Answer what the client sent; False once it has gone."""
        data = os.read(fd, 65536)
        answer = pings.answers(data)
        if answer:
            os.write(fd, answer)
        return bool(data)

    if mode == "epoll+client":
        poller = select.epoll()
        poller.register(fd, select.EPOLLIN)
        origin = time.monotonic()
        end, n = origin + seconds, 1
        while (now := time.monotonic()) < end:
            due = origin + n * period
            if now >= due:
                _tick(fd, n)
                n = max(n + 1, int((now - origin) / period) + 1)  # late: skip, never burst
            elif poller.poll(due - now) and not on_readable():
                break
    elif mode == "trio+client":
        import trio

        from wirthforge_trio.engine.timer import open_timer

        async def ticks() -> None:
            timer = open_timer(round(period * 1e9))
            origin_ns, n = time.monotonic_ns(), 1
            while True:
                await timer.wait_until_ns(origin_ns + round(n * period * 1e9))
                _tick(fd, n)
                n += 1

        async def reads() -> None:
            while True:
                await trio.lowlevel.wait_readable(fd)
                if not on_readable():
                    return

        async def run() -> None:
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ticks)
                    await reads()
                    nursery.cancel_scope.cancel()

        trio.run(run)
    else:
        import asyncio

        async def run_asyncio() -> None:
            loop = asyncio.get_running_loop()
            gone = asyncio.Event()
            loop.add_reader(fd, lambda: on_readable() or gone.set())
            start, n = loop.time(), 1
            while loop.time() < start + seconds and not gone.is_set():
                await asyncio.sleep(max(start + n * period - loop.time(), 0.0))
                _tick(fd, n)
                n += 1
            loop.remove_reader(fd)

        asyncio.run(run_asyncio())
    conn.close()


def _client(port: int, seconds: float) -> None:
    """The client (in its own process): reads everything, pings ten times a second and
    answers every heartbeat, until the server closes or ``seconds`` have passed; then prints
    what it received (``frames F heartbeats H pongs P``)."""
    received = dict.fromkeys((b'{"type":"energy_update"', HEARTBEAT_START, b'{"type":"pong"'), 0)
    tail = b""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    end = time.monotonic() + seconds
    next_ping = time.monotonic() + 1.0 / PING_HZ
    while (now := time.monotonic()) < end:
        readable, _, _ = select.select([sock], [], [], max(next_ping - now, 0.0))
        if readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:  # the server closed with a ping unread
                break
            if not data:
                break
            # Messages whose start was cut in two by the reads are found in ``seen``; those
            # wholly in ``tail`` were counted with the read before.
            seen = tail + data
            for prefix in received:
                received[prefix] += seen.count(prefix) - tail.count(prefix)
            beats = seen.count(HEARTBEAT_START) - tail.count(HEARTBEAT_START)
            tail = seen[-32:]
            sock.sendall(RESPONSE * beats)
        if time.monotonic() >= next_ping:
            sock.sendall(PING)
            next_ping += 1.0 / PING_HZ
    sock.close()
    frames, heartbeats, pongs = received.values()
    print(f"frames {frames} heartbeats {heartbeats} pongs {pongs}")


def _cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


@dataclass(frozen=True)
class Floor:
    """What one loop used, and (with a client) what its client received in all."""

    mode: str
    percent: float
    """% of one core, in the window after a second of warm-up."""
    received: dict[str, int] | None = None
    """frames, heartbeats, pongs (modes with a client)."""


def measure(mode: str, seconds: float, cpu: int, client_cpu: int | None = None) -> Floor:
    """Run the 60 Hz loop of ``mode`` pinned to ``cpu`` and measure it."""
    me = [sys.executable, os.path.abspath(__file__), "--seconds", str(seconds + 2)]
    client = None
    if mode in CLIENT_MODES:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port, fd = listener.getsockname()[1], listener.fileno()
            child = subprocess.Popen([*me, "--child", mode, "--listen-fd", str(fd)], pass_fds=[fd])
            client = subprocess.Popen([*me, "--client", str(port)], stdout=subprocess.PIPE)
    else:
        child = subprocess.Popen([*me, "--child", mode])
    try:
        os.sched_setaffinity(child.pid, {cpu})
        if client is not None and client_cpu is not None:
            os.sched_setaffinity(client.pid, {client_cpu})
        time.sleep(1.0)
        before, started = _cpu_ns(child.pid), time.monotonic()
        time.sleep(seconds)
        used, elapsed = _cpu_ns(child.pid) - before, time.monotonic() - started
        report = client.communicate(timeout=30)[0].decode() if client is not None else ""
        child.wait(timeout=30)
    finally:
        for process in (child, client):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    if child.returncode or (client is not None and client.returncode):
        raise RuntimeError(f"{mode}: a child process failed")
    received = None
    if client is not None:
        words = report.split()
        received = dict(zip(words[::2], map(int, words[1::2]), strict=True))
    return Floor(mode, 100.0 * used / (elapsed * 1e9), received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin the loops to")
    parser.add_argument(
        "--client-cpu", type=int, default=1, help="the CPU to pin the client to (-1: not pinned)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}"
    )
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        _client(args.client, args.seconds + 2)
    elif args.child in CLIENT_MODES:
        _serve(args.child, socket.socket(fileno=args.listen_fd), args.seconds)
    elif args.child:
        _loop(args.child, args.seconds)
    else:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
        client_cpu = None if args.client_cpu < 0 else args.client_cpu
        for mode in modes:
            floor = measure(mode, args.seconds, args.cpu, client_cpu)
            got = "" if floor.received is None else f"  (the client got {floor.received})"
            print(f"{mode:15} {floor.percent:5.2f} % of a core at 60 Hz{got}")


if __name__ == "__main__":
    main()
