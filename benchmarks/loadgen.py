"""The load generator: many raw WebSocket clients in one ``select.epoll`` loop, in its own process.

Started by the runner as ``python -m benchmarks.loadgen CONFIG_JSON``; it talks to the runner in
JSON lines (stdout out, stdin in):

1. it connects its clients (hand-made upgrade handshakes, a bounded number in flight) and
   prints ``{"event": "connected", ...}``;
2. it answers every ``heartbeat`` with a ``heartbeat_response`` (so the server keeps it alive;
   ``answer_heartbeats: false`` turns that off, to measure what the answers cost the server),
   the pinging client sends ``ping`` at a steady mean rate (each interval drawn between half
   and one and a half of the mean, so the pings' phase against the frame clock varies), and
   it waits for the measurement window
   on stdin: ``{"start_ns": ..., "end_ns": ...}`` (``time.monotonic_ns()``, CLOCK_MONOTONIC,
   shared by every process of the machine);
3. ``grace`` seconds after the window it prints ``{"event": "result", ...}`` and exits. It also
   exits when stdin closes (the runner is gone) or when its own deadline passes.

Receipt time is the kernel's: ``SO_TIMESTAMPNS`` stamps each TCP segment when it reaches the
client socket, so the load generator's own queueing (reading 1000 sockets one after the other)
does not count as server latency. The user-space receipt time is recorded too, as a check.
Only what is needed is parsed: the ``type`` by prefix, ``frameNumber`` / ``sequence`` / the
ping's ``t`` by a bytes search; no JSON decoding on the hot path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import resource
import select
import socket
import struct
import sys
import termios
import time
from collections import deque
from typing import Any, Final

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    HandshakeError,
    ProtocolError,
    encode_client_frame,
    handshake_request,
    new_key,
    parse_handshake_response,
)

SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: SO_TIMESTAMPNS_OLD
SCM_TIMESTAMPNS: Final = SO_TIMESTAMPNS
_TIMESPEC: Final = struct.Struct("@qq")
ANCILLARY_SIZE: Final = socket.CMSG_SPACE(_TIMESPEC.size)
RECV_SIZE: Final = 16384
BIN_NS: Final = 10_000
"""Latency histogram bins: 10 µs."""

EU_PREFIX: Final = b'{"type":"energy_update"'
HB_PREFIX: Final = b'{"type":"heartbeat"'
PONG_PREFIX: Final = b'{"type":"pong"'
FRAME_KEY: Final = b'"frameNumber":'
SEQ_KEY: Final = b'"sequence":'
PING_T_KEY: Final = b'"t":'
COMPLETE: Final = b'"isComplete":true'

NEW, CONNECTING, HANDSHAKE, OPEN, CLOSED, FAILED = range(6)


def realtime_offset_ns() -> int:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC, from the tightest of a few bracketed readings."""
    best: tuple[int, int] | None = None
    for _ in range(7):
        before = time.monotonic_ns()
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, real - (before + after) // 2)
    assert best is not None
    return best[1]


def cpu_ns() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int((usage.ru_utime + usage.ru_stime) * 1e9)


def _int_after(payload: bytes, key: bytes) -> int | None:
    i = payload.find(key)
    if i < 0:
        return None
    i += len(key)
    j = i
    n = len(payload)
    while j < n and payload[j] in b"0123456789-":
        j += 1
    return int(payload[i:j]) if j > i else None


def message_type(payload: bytes) -> str:
    """The ``type`` of a server message (slow path: only for samples and unknown shapes)."""
    try:
        value = json.loads(payload)
    except ValueError:
        return "?"
    return str(value.get("type", "?")) if isinstance(value, dict) else "?"


class Client:
    __slots__ = (
        "attempts",
        "deadline",
        "fd",
        "handshake",
        "index",
        "key",
        "last_heartbeat",
        "out",
        "port",
        "reader",
        "sock",
        "stalled",
        "state",
        "window_frames",
    )

    def __init__(self, index: int, stalled: bool) -> None:
        self.index = index
        self.stalled = stalled
        self.state = NEW
        self.sock: socket.socket | None = None
        self.fd = -1
        self.key = b""
        self.handshake = b""
        self.reader = FrameReader()
        self.out = b""
        self.attempts = 0
        self.deadline = 0
        self.port = 0
        self.window_frames = 0
        self.last_heartbeat = 0


class LoadGenerator:
    def __init__(self, config: dict[str, Any], stdin_fd: int, stdout: Any) -> None:
        self.host: str = config["host"]
        self.port: int = config["port"]
        self.path: str = config.get("path", "/ws")
        self.origin_ns: int = config["origin_ns"]
        self.period: float = 1e9 / float(config.get("rate", 60.0))
        self.answer_heartbeats: bool = config.get("answer_heartbeats", True)
        """False: heartbeats go unanswered (the servers here enforce no deadline until a
        first answer), to measure what answering them costs the server."""
        self.ping_interval_ns = int(1e9 / config["ping_hz"]) if config.get("ping_hz", 0) > 0 else 0
        # A fixed interval that is a whole number of frames (100 ms: six) would keep the pings
        # at one phase against the frame clock for a whole run; seeded, so runs compare.
        self.ping_jitter = random.Random(config.get("seed", 6003))
        self.connect_timeout_ns = int(config.get("connect_timeout", 30.0) * 1e9)
        self.attempt_timeout_ns = int(config.get("attempt_timeout", 5.0) * 1e9)
        self.max_in_flight: int = config.get("max_in_flight", 32)
        self.grace_ns = int(config.get("grace", 1.0) * 1e9)
        self.regenerate: bool = config.get("regenerate", False)
        self.stall_pings: int = config.get("stall_pings", 16)
        self.stall_ping_bytes: int = config.get("stall_ping_bytes", 60_000)
        self.stall_rcvbuf: int = config.get("stall_rcvbuf", 4096)
        self.deadline_ns = time.monotonic_ns() + int(config.get("max_seconds", 300.0) * 1e9)
        self.stdin_fd = stdin_fd
        self.stdout = stdout
        self.stdin_buffer = b""
        self.epoll = select.epoll()
        self.clients = [Client(i, False) for i in range(config["clients"])] + [
            Client(i, True) for i in range(config.get("stalled", 0))
        ]
        self.by_fd: dict[int, Client] = {}
        self.to_connect: deque[Client] = deque(self.clients)
        self.in_flight = 0
        self.errors: list[str] = []
        self.offset_ns = realtime_offset_ns()
        # the window
        self.window: tuple[int, int] | None = None
        self.n_lo = 0
        self.n_hi = 0
        self.window_started = False
        self.window_ended = False
        self.cpu_start = 0
        self.cpu_end = 0
        self.stalled_rx = [0, 0]
        # what was measured
        self.lat_hist: dict[int, int] = {}
        self.lat_user_hist: dict[int, int] = {}
        self.lat_max = 0
        self.lat_user_max = 0
        self.negative = 0
        self.earliest: dict[int, int] = {}
        self.msgs = 0
        self.msg_bytes = 0
        self.msgs_total = 0
        self.heartbeats = 0
        self.responses = 0
        self.heartbeat_intervals: list[int] = []
        self.rtts: list[int] = []
        self.pings_sent = 0
        self.next_ping = 0
        self.closed_during = 0
        self.close_codes: list[int] = []
        self.samples: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.kernel_stamps = 0
        self.user_stamps = 0
        self.prompts = 0
        self.last_prompt = 0
        self.server_pings = 0

    # -- output --------------------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        self.stdout.flush()

    # -- connecting ----------------------------------------------------------------------------

    def start_connect(self, c: Client, now: int) -> None:
        c.attempts += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if c.stalled:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.stall_rcvbuf)
        else:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        c.sock = sock
        c.fd = sock.fileno()
        c.key = new_key()
        c.handshake = b""
        c.out = b""
        c.reader = FrameReader()
        c.deadline = now + self.attempt_timeout_ns
        self.by_fd[c.fd] = c
        self.in_flight += 1
        err = sock.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            self.fail_attempt(c, f"connect: {os.strerror(err)}")
            return
        c.state = CONNECTING
        self.epoll.register(c.fd, select.EPOLLOUT)

    def fail_attempt(self, c: Client, reason: str) -> None:
        self.drop(c)
        self.in_flight -= 1
        if c.attempts < 4:
            c.state = NEW
            self.to_connect.append(c)
        else:
            c.state = FAILED
            if len(self.errors) < 20:
                self.errors.append(f"client {c.index}: {reason}")

    def drop(self, c: Client) -> None:
        if c.sock is not None:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(c.fd)
            self.by_fd.pop(c.fd, None)
            c.sock.close()
            c.sock = None

    def on_connecting(self, c: Client, events: int) -> None:
        assert c.sock is not None
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail_attempt(c, f"connect: {os.strerror(err)}")
            return
        try:
            c.sock.send(handshake_request(self.host, self.port, self.path, c.key))
        except OSError as exc:
            self.fail_attempt(c, f"send handshake: {exc}")
            return
        c.port = c.sock.getsockname()[1]
        c.state = HANDSHAKE
        self.epoll.modify(c.fd, select.EPOLLIN)

    def on_handshake(self, c: Client) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail_attempt(c, f"handshake: {exc}")
            return
        if not data:
            self.fail_attempt(c, "closed during the handshake")
            return
        c.handshake += data
        try:
            size = parse_handshake_response(c.handshake, c.key)
        except HandshakeError as exc:
            self.fail_attempt(c, str(exc))
            return
        if size < 0:
            return
        self.in_flight -= 1
        c.state = OPEN
        rest = c.handshake[size:]
        c.handshake = b""
        if c.stalled:
            # Fill the pipe at once: pongs the size of the pings pile up in the (small) receive
            # buffer and the server's send buffer, as if the client had stopped reading long ago.
            pad = b"x" * self.stall_ping_bytes
            c.out = b"".join(
                encode_client_frame(b'{"type":"ping","payload":{"stall":%d,"pad":"%s"}}' % (i, pad))
                for i in range(self.stall_pings)
            )
            self.flush_stalled(c)
            return
        if rest:
            self.on_data(c, rest, time.monotonic_ns(), time.monotonic_ns())

    def flush_stalled(self, c: Client) -> None:
        assert c.sock is not None
        try:
            sent = c.sock.send(c.out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.errors.append(f"stalled client {c.index}: {exc}")
            c.out = b""
            sent = 0
        c.out = c.out[sent:]
        if c.out:
            self.epoll.modify(c.fd, select.EPOLLOUT)
        else:  # never read again
            with contextlib.suppress(OSError):
                self.epoll.unregister(c.fd)

    # -- sending -------------------------------------------------------------------------------

    def send(self, c: Client, frame: bytes) -> None:
        if c.sock is None or c.state != OPEN:
            return
        if c.out:
            c.out += frame
            return
        try:
            sent = c.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(c)
            return
        if sent < len(frame):
            c.out = frame[sent:]
            self.epoll.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)

    def on_writable(self, c: Client) -> None:
        if c.stalled:
            self.flush_stalled(c)
            return
        assert c.sock is not None
        try:
            sent = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError:
            self.close(c)
            return
        c.out = c.out[sent:]
        if not c.out:
            self.epoll.modify(c.fd, select.EPOLLIN)

    def close(self, c: Client, code: int | None = None) -> None:
        if c.state == OPEN and self.window is not None and not self.window_ended:
            self.closed_during += 1
        if code is not None and len(self.close_codes) < 20:
            self.close_codes.append(code)
        c.state = CLOSED
        self.drop(c)

    # -- receiving -----------------------------------------------------------------------------

    def on_readable(self, c: Client) -> None:
        sock = c.sock
        assert sock is not None
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(RECV_SIZE, ANCILLARY_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.close(c)
            return
        user = time.monotonic_ns()
        if not data:
            self.close(c)
            return
        kernel = user
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(value)
                kernel = sec * 1_000_000_000 + nsec - self.offset_ns
                self.kernel_stamps += 1
                break
        else:
            self.user_stamps += 1
        self.on_data(c, data, kernel, user)

    def on_data(self, c: Client, data: bytes, kernel: int, user: int) -> None:
        try:
            messages = c.reader.feed(data)
        except ProtocolError as exc:
            self.errors.append(f"client {c.index}: {exc}")
            self.close(c)
            return
        window = self.window
        in_window = window is not None and window[0] <= kernel < window[1]
        for opcode, payload in messages:
            if opcode == OP_TEXT or opcode == OP_BINARY:
                self.msgs_total += 1
                if in_window:
                    self.msgs += 1
                    self.msg_bytes += len(payload)
                if payload.startswith(EU_PREFIX):
                    i = payload.find(FRAME_KEY, 40) + 14
                    n = int(payload[i : payload.find(b",", i)])
                    if self.n_lo <= n < self.n_hi:
                        due = self.origin_ns + int(n * self.period)
                        latency = kernel - due
                        if latency < 0:
                            self.negative += 1
                            latency = 0
                        b = latency // BIN_NS
                        self.lat_hist[b] = self.lat_hist.get(b, 0) + 1
                        if latency > self.lat_max:
                            self.lat_max = latency
                        lu = user - due
                        lu = lu if lu > 0 else 0
                        b = lu // BIN_NS
                        self.lat_user_hist[b] = self.lat_user_hist.get(b, 0) + 1
                        if lu > self.lat_user_max:
                            self.lat_user_max = lu
                        first = self.earliest.get(n)
                        if first is None or latency < first:
                            self.earliest[n] = latency
                        c.window_frames += 1
                    if c.index == 0 and "energy_update" not in self.samples:
                        self.sample(payload)
                elif payload.startswith(HB_PREFIX):
                    if self.answer_heartbeats:
                        seq = _int_after(payload, SEQ_KEY)
                        self.send(
                            c,
                            encode_client_frame(
                                b'{"type":"heartbeat_response","payload":{"sequence":%d}}'
                                % (seq if seq is not None else 0)
                            ),
                        )
                        if in_window:
                            self.responses += 1
                    if in_window:
                        self.heartbeats += 1
                        if c.last_heartbeat:
                            self.heartbeat_intervals.append(kernel - c.last_heartbeat)
                    c.last_heartbeat = kernel
                    if c.index == 0 and "heartbeat" not in self.samples:
                        self.sample(payload)
                elif payload.startswith(PONG_PREFIX):
                    sent = _int_after(payload, PING_T_KEY)
                    if sent is not None and window is not None and window[0] <= sent < window[1]:
                        self.rtts.append(kernel - sent)
                    if "pong" not in self.samples:
                        self.sample(payload)
                else:
                    if c.index == 0 and len(self.samples) < 8:
                        self.sample(payload)
                    if self.regenerate and c.index == 0 and COMPLETE in payload:
                        self.post_prompt()
            elif opcode == OP_PING:
                self.server_pings += 1
                self.send(c, encode_client_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send(c, encode_client_frame(payload[:2], OP_CLOSE))
                self.close(c, code)
                return

    def sample(self, payload: bytes) -> None:
        kind = message_type(payload)
        if kind not in self.samples:
            self.samples[kind] = payload.decode("utf-8", "replace")[:2000]
            self.sizes[kind] = len(payload)

    # -- generation ("generation on") ----------------------------------------------------------

    def post_prompt(self) -> None:
        """Start a new generation (POST /prompt); blocking, a few ms, only in that scenario."""
        body = json.dumps({"prompt": f"benchmark prompt {self.prompts}"}).encode()
        request = (
            f"POST /prompt HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        self.last_prompt = time.monotonic_ns()
        try:
            with socket.create_connection((self.host, self.port), timeout=2.0) as sock:
                sock.sendall(request)
                answer = sock.recv(4096)
        except OSError as exc:
            self.errors.append(f"POST /prompt: {exc}")
            return
        if answer.startswith((b"HTTP/1.1 202", b"HTTP/1.0 202")):
            self.prompts += 1
        elif len(self.errors) < 20:
            self.errors.append(f"POST /prompt: {answer[:80]!r}")

    # -- control -------------------------------------------------------------------------------

    def on_stdin(self) -> bool:
        """Read the runner's commands; False when stdin closed (the runner is gone)."""
        data = os.read(self.stdin_fd, 65536)
        if not data:
            return False
        self.stdin_buffer += data
        while b"\n" in self.stdin_buffer:
            line, self.stdin_buffer = self.stdin_buffer.split(b"\n", 1)
            if not line.strip():
                continue
            command = json.loads(line)
            if command.get("quit"):
                return False
            start, end = int(command["start_ns"]), int(command["end_ns"])
            self.offset_ns = realtime_offset_ns()
            self.window = (start, end)
            # frames due in [start, end): n from ceil((start-origin)/period) to that of end
            self.n_lo = max(0, -(-(start - self.origin_ns) // int(self.period)))
            while self.origin_ns + int(self.n_lo * self.period) < start:
                self.n_lo += 1
            while self.n_lo > 0 and self.origin_ns + int((self.n_lo - 1) * self.period) >= start:
                self.n_lo -= 1
            self.n_hi = self.n_lo
            while self.origin_ns + int(self.n_hi * self.period) < end:
                self.n_hi += 1
        return True

    def stalled_backlog(self) -> int:
        """Bytes waiting, unread, in the stalled clients' receive buffers."""
        total = 0
        buf = bytearray(4)
        for c in self.clients:
            if c.stalled and c.sock is not None:
                try:
                    fcntl.ioctl(c.fd, termios.FIONREAD, buf)
                except OSError:
                    continue
                total += int.from_bytes(buf, sys.byteorder)
        return total

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        self.epoll.register(self.stdin_fd, select.EPOLLIN | select.EPOLLHUP)
        started = time.monotonic_ns()
        connect_deadline = started + self.connect_timeout_ns
        connected = False
        pinger = next((c for c in self.clients if not c.stalled), None)
        by_fd = self.by_fd
        while True:
            now = time.monotonic_ns()
            if now > self.deadline_ns:
                self.errors.append("load generator deadline passed")
                self.emit_result()
                return 1
            if not connected:
                while self.to_connect and self.in_flight < self.max_in_flight:
                    self.start_connect(self.to_connect.popleft(), now)
                for c in self.clients:
                    if c.state in (CONNECTING, HANDSHAKE) and now > c.deadline:
                        self.fail_attempt(c, "attempt timed out")
                if (not self.to_connect and self.in_flight == 0) or now > connect_deadline:
                    connected = True
                    self.emit_connected((now - started) / 1e9)
                    if self.regenerate:
                        self.post_prompt()
                    self.next_ping = now
            else:
                if (
                    self.ping_interval_ns
                    and pinger is not None
                    and pinger.state == OPEN
                    and now >= self.next_ping
                ):
                    self.pings_sent += 1
                    t = time.monotonic_ns()
                    self.send(
                        pinger,
                        encode_client_frame(
                            b'{"type":"ping","payload":{"i":%d,"t":%d}}' % (self.pings_sent, t)
                        ),
                    )
                    self.next_ping += int(self.ping_interval_ns * (0.5 + self.ping_jitter.random()))
                    if self.next_ping < now:
                        self.next_ping = now + self.ping_interval_ns
                if self.regenerate and now - self.last_prompt > 30e9:
                    self.post_prompt()  # no completion seen for a long time: try again
                window = self.window
                if window is not None:
                    if not self.window_started and now >= window[0]:
                        self.window_started = True
                        self.cpu_start = cpu_ns()
                        self.stalled_rx[0] = self.stalled_backlog()
                    if self.window_started and not self.window_ended and now >= window[1]:
                        self.window_ended = True
                        self.cpu_end = cpu_ns()
                        self.stalled_rx[1] = self.stalled_backlog()
                    if now >= window[1] + self.grace_ns:
                        self.emit_result()
                        return 0
            timeout = self.timeout(now, connected)
            for fd, events in self.epoll.poll(timeout):
                if fd == self.stdin_fd:
                    if not self.on_stdin():
                        return 0
                    continue
                client = by_fd.get(fd)
                if client is None:
                    continue
                state = client.state
                if state == OPEN:
                    if events & select.EPOLLIN:
                        self.on_readable(client)
                    if events & select.EPOLLOUT and client.state == OPEN:
                        self.on_writable(client)
                    if events & (select.EPOLLHUP | select.EPOLLERR) and not events & select.EPOLLIN:
                        self.close(client)
                elif state == CONNECTING:
                    self.on_connecting(client, events)
                elif state == HANDSHAKE:
                    self.on_handshake(client)

    def timeout(self, now: int, connected: bool) -> float:
        if not connected:
            return 0.01
        wake = now + 100_000_000
        if self.ping_interval_ns:
            wake = min(wake, self.next_ping)
        window = self.window
        if window is not None:
            for edge in (window[0], window[1], window[1] + self.grace_ns):
                if edge > now:
                    wake = min(wake, edge)
                    break
        return max(0.0, (wake - now) / 1e9)

    def emit_connected(self, seconds: float) -> None:
        self.emit(
            {
                "event": "connected",
                "open": sum(1 for c in self.clients if c.state == OPEN and not c.stalled),
                "stalled_open": sum(1 for c in self.clients if c.state == OPEN and c.stalled),
                "failed": sum(1 for c in self.clients if c.state != OPEN),
                "seconds": round(seconds, 3),
                "errors": self.errors[:5],
            }
        )

    def emit_result(self) -> None:
        normal = [c for c in self.clients if not c.stalled]
        self.emit(
            {
                "event": "result",
                "clients": len(normal),
                "open": sum(1 for c in normal if c.state == OPEN),
                "stalled": sum(1 for c in self.clients if c.stalled and c.sock is not None),
                "frames_due": self.n_hi - self.n_lo,
                "frames_received": [c.window_frames for c in normal],
                "lat_hist": self.lat_hist,
                "lat_user_hist": self.lat_user_hist,
                "lat_max_ns": self.lat_max,
                "lat_user_max_ns": self.lat_user_max,
                "negative": self.negative,
                "earliest": self.earliest,
                "msgs": self.msgs,
                "msg_bytes": self.msg_bytes,
                "msgs_total": self.msgs_total,
                "heartbeats": self.heartbeats,
                "heartbeat_responses": self.responses,
                "heartbeat_intervals_ns": self.heartbeat_intervals,
                "rtt_ns": self.rtts,
                "pings_sent": self.pings_sent,
                "cpu_ns": self.cpu_end - self.cpu_start if self.window_ended else None,
                "stalled_rx": self.stalled_rx,
                "closed_during_window": self.closed_during,
                "close_codes": self.close_codes,
                "samples": self.samples,
                "sizes": self.sizes,
                "kernel_stamps": self.kernel_stamps,
                "user_stamps": self.user_stamps,
                "prompts": self.prompts,
                "server_pings": self.server_pings,
                "errors": self.errors,
            }
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.loadgen CONFIG_JSON", file=sys.stderr)
        return 2
    generator = LoadGenerator(json.loads(args[0]), sys.stdin.fileno(), sys.stdout)
    try:
        return generator.run()
    except Exception as exc:
        generator.emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        for c in generator.clients:
            generator.drop(c)


if __name__ == "__main__":
    sys.exit(main())
