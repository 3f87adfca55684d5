"""Child processes of the benchmark: start pinned, talk to, measure, and always stop them.

Every child starts in a new session (its own process group), so stopping it reaches whatever
it spawned (Hypercorn's worker process); every child ever started is in ``_LIVE`` until it
is stopped, and :func:`stop_all` (called from the runner's ``finally``) stops what is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

ROOT = Path(__file__).resolve().parent.parent
_LIVE: list[Child] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def script(name: str) -> list[str]:
    """A console script of this environment (``hypercorn``, ``uvicorn``), as users run it."""
    path = Path(sys.executable).parent / name
    return [str(path)] if path.exists() else [sys.executable, "-m", name]


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without ``WIRTHFORGE_*`` (the server runs its defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIRTHFORGE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Child:
    """One process (group) we started."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cpus: set[int] | None,
        env: dict[str, str],
        log_path: Path,
        pipes: bool = False,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # closed in stop()

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.popen = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=pin if cpus else None,  # the runner has no threads
        )
        _LIVE.append(self)
        self._lines = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout``; idempotent."""
        if self in _LIVE:
            _LIVE.remove(self)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.popen.wait(timeout)
                # the leader is gone; make sure nothing of its group outlives it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()

    # -- JSON lines (load generators) ---------------------------------------------------------

    def send_json(self, value: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(value) + "\n").encode())
        self.popen.stdin.flush()

    def read_json(self, deadline: float) -> dict[str, Any]:
        """The next JSON line on stdout, waiting until ``deadline`` (time.monotonic())."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._lines:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {self.command[2:4]}: {self.log_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"{self.command[2:4]} exited: {self.log_tail()}")
                self._lines += chunk
        line, self._lines = self._lines.split(b"\n", 1)
        value: dict[str, Any] = json.loads(line)
        if value.get("event") == "error":
            raise RuntimeError(f"load generator: {value.get('message')}: {self.log_tail()}")
        return value


def stop_all() -> None:
    for child in list(_LIVE):
        child.stop(timeout=1.0)


# -- the server under measurement --------------------------------------------------------------


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_ready(child: Child, port: int, timeout: float) -> dict[str, Any]:
    """Poll ``GET /status`` until the clock has an origin; the status JSON."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"server exited with {child.popen.returncode}: {child.log_tail()}")
        try:
            status: dict[str, Any] = get_json(f"http://127.0.0.1:{port}/status", timeout=1.0)
            if status.get("clock", {}).get("originMonotonicNs") is not None:
                return status
            last = "no clock origin yet"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"server not ready after {timeout:g} s ({last}): {child.log_tail()}")


def process_tree(pid: int) -> list[psutil.Process]:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_time_ns(processes: Sequence[psutil.Process]) -> int:
    """CPU time of the processes, in ns: the scheduler's per-thread runtime (schedstat), which
    has ns resolution where /proc/PID/stat has 10 ms ticks; psutil's figure where unreadable."""
    import psutil

    total = 0
    for process in processes:
        try:
            tasks = os.listdir(f"/proc/{process.pid}/task")
            subtotal = 0
            for tid in tasks:
                with open(f"/proc/{process.pid}/task/{tid}/schedstat") as f:
                    subtotal += int(f.read().split()[0])
            total += subtotal
        except (OSError, ValueError, IndexError):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += int((times.user + times.system) * 1e9)
    return total


def rss_bytes(processes: Sequence[psutil.Process]) -> int:
    import psutil

    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def worker_processes(tree: Sequence[psutil.Process]) -> list[psutil.Process]:
    """The workers a Hypercorn supervisor spawned (``multiprocessing`` spawn children, which
    carry ``--multiprocessing-fork``), not its resource tracker."""
    import psutil

    found = []
    for process in tree[1:]:
        with contextlib.suppress(psutil.Error):
            if "--multiprocessing-fork" in process.cmdline():
                found.append(process)
    return found


def connections_on(process: psutil.Process, port: int) -> int:
    """Established TCP connections the process holds on its local ``port``."""
    import psutil

    with contextlib.suppress(psutil.Error):
        return sum(
            1
            for c in process.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )
    return 0


def redis_keys(port: int, pattern: str, timeout: float = 1.0) -> list[str]:
    """``KEYS pattern`` on a loopback redis-server, spoken in RESP over a plain socket (the
    runner is synchronous; this is its only Redis command)."""
    parts = [b"KEYS", pattern.encode()]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        head = reader.readline()
        if not head.startswith(b"*"):
            raise RuntimeError(f"redis answered {head.strip()!r} to KEYS")
        keys = []
        for _ in range(int(head[1:])):
            size = int(reader.readline()[1:])
            keys.append(reader.read(size + 2)[:-2].decode(errors="replace"))
        return keys


def wait_redis_keys(port: int, pattern: str, count: int, timeout: float) -> None:
    """Wait until at least ``count`` keys match ``pattern`` (each broker process keeps a
    liveness key, so this is "every worker has joined")."""
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            found = redis_keys(port, pattern)
            if len(found) >= count:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{len(found)} of {count} workers joined the broker after {timeout:g} s")
