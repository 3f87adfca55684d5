"""One process's link to the Redis broker: its tasks, in one nursery, and their faults.

Every lossless event the engine publishes goes to the outbox and from there to one Redis
Stream (XADD); every process, this one included, reads that stream (XREAD BLOCK) and hands
each event to its own hub, so all clients everywhere get the same events in the same order.
Energy frames of lit models go by pub/sub, latest wins (``frames.py``). A liveness key per
process lets the others end the sessions of a process that died; a Redis outage degrades
``/health``, tells the clients, keeps the outbox and reconnects with backoff
(docs/decisions.md, "Broker").
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import anyio
import attrs
import coredis
import coredis.exceptions
import orjson
import trio
from coredis.tokens import PureToken

from ..contract.codec import encode
from ..contract.events import (
    ErrorEvent,
    ErrorPayload,
    Event,
    FrameEvent,
    ResumePayload,
    RewardEvent,
    TokenStream,
    TokenStreamPayload,
    wall_ms,
)
from ..engine.decipher import Retention
from ..transport.hub import Hub
from .entries import (
    LOSSLESS_FRAME_EVENTS,
    Entry,
    Refused,
    cancel_message,
    entry_fields,
    frame_message,
    parse_cancel,
    parse_entry,
    parse_frame,
    stamped,
)
from .frames import OutgoingFrame, RemoteFrames
from .log import StreamLog
from .url import BrokerURL

log = logging.getLogger("wirthforge_trio.broker")

ALIVE_TTL_MS: Final = 2000
"""How long a process's liveness key outlives its last refresh."""
REFRESH_INTERVAL: Final = 0.5
DEAD_AFTER: Final = 3.0
"""Seconds a live session's origin must stay without a liveness key to count as dead: longer
than the longest reconnection backoff, so a Redis restart (which loses every key) does not
make live processes look dead."""
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 2.0
CLOSE_TIMEOUT: Final = 1.0
ALONE_RECHECK: Final = 1.0
"""Seconds between frames published while no other process listens (a newcomer's energy
view waits at most this long)."""
STARTUP_TIMEOUT: Final = 10.0
READ_BLOCK_MS: Final = 5000
"""An idle reader wakes this often (a lost connection ends the wait at once anyway)."""
TRIM_EVERY: Final = 10
"""Refreshes between two trims of the stream by age (5 s)."""
READ_COUNT: Final = 512
BATCHES_PER_SESSION: Final = 1000
"""Stream entries allowed per retained session in the count bound (MAXLEN ~)."""
REFUSAL_LOG_INTERVAL: Final = 10.0
RELEASE_LAG: Final = 4
"""Frames between the frame an entry is written at and the frame every process sends it
with (a token batch goes at once): the time every process has to read it, with room for a
machine whose cores are busy (docs/decisions.md, "Broker")."""
HOLD_LIMIT: Final = 10_000
"""Events held for a Redis that is down beyond which new prompts are refused (503): the
generations already running end by themselves (max tokens, timeouts), so the outbox stays
bounded (docs/decisions.md, "Broker")."""
READY_TIMEOUT: Final = 1.0
"""The longest a resuming client waits for this process to catch up with the one it left."""

BROKER_UNAVAILABLE: Final = "BROKER_UNAVAILABLE"
BROKER_RESTORED: Final = "BROKER_RESTORED"
SESSION_INTERRUPTED: Final = "SESSION_INTERRUPTED"

ERROR_CODES: Final = {
    BROKER_UNAVAILABLE: ("orchestrator", "error"),
    BROKER_RESTORED: ("orchestrator", "info"),
    SESSION_INTERRUPTED: ("orchestrator", "error"),
}
"""The codes of the error_events the broker sends: (component, severity), as documented in
docs/protocol.md, "Error codes"."""

BrokerStatus = Literal["connecting", "up", "down"]

_REDIS_ERRORS: Final = (
    coredis.exceptions.RedisError,
    OSError,
    trio.TooSlowError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)
"""What a lost connection, a refused command or the client's own teardown raise."""


class BrokerStartError(RuntimeError):
    """The broker could not be reached at start-up; the message names the fix."""


def _only_redis_errors(exc: BaseException) -> bool:
    """Whether ``exc`` (a group, maybe) holds nothing but connection or command failures."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_redis_errors(e) for e in exc.exceptions)
    return isinstance(exc, _REDIS_ERRORS)


def _position(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a comparable (milliseconds, sequence)."""
    millis, _, sequence = entry_id.partition("-")
    return (int(millis or 0), int(sequence or 0))


def _str(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _teardown_only(exc: BaseException) -> bool:
    """Whether ``exc`` holds only what the client raises while it is being cancelled."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_teardown_only(e) for e in exc.exceptions)
    return isinstance(exc, (*_REDIS_ERRORS, trio.Cancelled))


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    """A failure in one line, without anything of the URL (coredis quotes host:port only)."""
    exc = _first_error(exc)
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class BrokerNode:
    """This process on the broker. Start :meth:`run` in a nursery before the engine."""

    def __init__(
        self, url: BrokerURL, retention: Retention, *, namespace: str = "wirthforge"
    ) -> None:
        self.url = url
        self.retention = retention
        self.origin = f"p-{uuid.uuid4().hex[:16]}"
        """This process on the broker (its liveness key, the origin of what it writes)."""
        self.cluster_id = ""
        """The server instance clients see: the same on every process of one broker."""
        self.epoch_ns = 0
        """When frame 0 was due (wall clock, ns): every process numbers frames from it."""
        self.stream_key = f"{namespace}:events"
        self.frames_channel = f"{namespace}:frames"
        self.cancel_channel = f"{namespace}:cancel"
        self.cluster_key = f"{namespace}:cluster"
        self.alive_prefix = f"{namespace}:alive:"
        self.ended_prefix = f"{namespace}:ended:"
        self.reward_prefix = f"{namespace}:reward:"
        self.log = StreamLog(retention)
        self.remote = RemoteFrames()
        self.outgoing = OutgoingFrame()
        self.status: BrokerStatus = "connecting"
        self.outages = 0
        self.refused = 0
        self.hub: Hub | None = None
        self.frame_number: Callable[[], int] = lambda: 0
        """The last frame this process sent (set by the app: the engine's clock)."""
        self.scheduled_frame: Callable[[], int] = lambda: self.frame_number()
        """The frame this process's clock is due to be at now, later than the last one sent
        while a tick runs late (set by the app): entries are stamped with it."""
        self.frame_rate = 60.0
        self.cancel_local: Callable[[str], bool] = lambda _: False
        """Cancel a session this process runs; whether it did (set by the app)."""
        self.reward_seen: Callable[[str], None] = lambda _: None
        """Told the title of each reward another process paid (set by the app)."""
        self._outbox: deque[tuple[dict[str, str], str | None]] = deque()
        """Entries to write, in order, each with the key that claims it for the cluster (a
        reward that the cluster earns once) or None."""
        self._outbox_ready = trio.Event()
        self._frame_ready = trio.Event()
        self._drained = trio.Event()
        self._offsets: dict[str, int] = {}
        self._last_id = "0-0"
        self._read_progress = trio.Event()
        self.held: deque[tuple[Entry, int, bool]] = deque()
        """Entries read but not yet sent, each with the frame it is due with (-1: a token
        batch, sent as soon as nothing is held before it) and whether it was read before
        this process sent that frame."""
        self._last_due = -1
        """The latest due frame: dues never go back along the stream, so each entry goes out
        with the first frame at or after its own, on every process alike."""
        self._in_order_held = 0
        """Held errors and token batches: while any is held, a token batch read waits too."""
        self.late = 0
        """Entries this process read after the frame they were due with."""
        self._last_late_log = -math.inf
        self._client: coredis.Redis[str] | None = None
        self._scope: trio.CancelScope | None = None
        self._missing_since: dict[str, float] = {}
        self._last_refusal_log = -math.inf

    # -- what the engine and the app call (never await) ----------------------------------------

    def send(self, event: Event, status: str | None = None) -> None:
        """Queue a lossless event for the stream; ``status`` ends a session's last batch."""
        offset: int | None = None
        if isinstance(event, TokenStream):
            sid = event.payload.session_id
            offset = self._offsets.get(sid, 0)
            if event.payload.is_complete:
                self._offsets.pop(sid, None)
                status = status or "complete"
            else:
                self._offsets[sid] = offset + len(event.payload.tokens)
                status = None
        else:
            status = None
        claim = None
        if isinstance(event, RewardEvent) and event.payload.reward_type != "feedback":
            claim = f"{self.reward_prefix}{event.payload.title}"
        self._queue(entry_fields(self.origin, event, offset=offset, status=status), claim)

    def _queue(self, fields: dict[str, str], claim: str | None = None) -> None:
        self._outbox.append((fields, claim))
        self._outbox_ready.set()

    def offer_frame(self, events: Sequence[FrameEvent], lit: frozenset[str]) -> None:
        if self.outgoing.offer(events, lit):
            self._frame_ready.set()

    @property
    def waiting(self) -> int:
        """Events not yet written to the stream."""
        return len(self._outbox)

    @property
    def full(self) -> bool:
        """Whether Redis is away and this process holds as many events as it may."""
        return self.status != "up" and len(self._outbox) >= HOLD_LIMIT

    async def cancel_remote(self, session_id: str) -> bool:
        """Ask the process running ``session_id`` to cancel it; False when Redis is down."""
        client = self._client
        if client is None or self.status != "up":
            return False
        try:
            with trio.fail_after(2):
                await client.publish(self.cancel_channel, cancel_message(self.origin, session_id))
        except _REDIS_ERRORS as exc:
            log.warning("could not pass on a cancel: %s", _describe(exc))
            return False
        return True

    # -- running ---------------------------------------------------------------------------------

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def close(self) -> None:
        """Write what is held and withdraw this process's liveness key (so the others end
        its live sessions at once rather than after the key expires), within a second; then
        stop."""
        client = self._client
        if client is not None and self.status == "up":
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    if self._outbox:  # the writer task writes them, in order
                        self._drained = trio.Event()
                        await self._drained.wait()
                    await client.delete([f"{self.alive_prefix}{self.origin}"])
                except _REDIS_ERRORS as exc:
                    log.warning("could not leave the broker cleanly: %s", _describe(exc))
        self.stop()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, read the retained stream, then keep every task up until cancelled,
        reconnecting with backoff after a failure."""
        with trio.CancelScope() as self._scope:
            try:
                with trio.fail_after(STARTUP_TIMEOUT):
                    await self._first_contact()
            except BaseException as exc:
                if isinstance(exc, trio.Cancelled) or not _only_redis_errors(exc):
                    raise
                raise BrokerStartError(self._unreachable(exc)) from None
            log.info(
                "broker %s: process %s in cluster %s, %d session(s) retained",
                self.url.redacted,
                self.origin,
                self.cluster_id,
                len(self.log.sessions),
            )
            task_status.started()
            try:
                await self._keep_connected()
            except BaseException as exc:
                # Stopping cancels the client mid-teardown, and its pub/sub cleanup can raise
                # (coredis 6.9: ClosedResourceError); that is the end we asked for.
                stopping = self._scope.cancel_called or (
                    trio.current_effective_deadline() == -math.inf  # the app is cancelling us
                )
                if not (stopping and _teardown_only(exc)):
                    raise
                log.debug("broker client stopped: %s", _describe(exc))

    async def probe(self) -> None:
        """Connect and PING once: a :class:`BrokerStartError` naming the fix if that fails
        (``serve()`` asks before it starts Hypercorn, so the error is one line)."""
        try:
            with trio.fail_after(STARTUP_TIMEOUT):
                async with self._connect() as client:
                    await client.ping()
        except BaseException as exc:
            if isinstance(exc, trio.Cancelled) or not _only_redis_errors(exc):
                raise
            raise BrokerStartError(self._unreachable(exc)) from None

    def _unreachable(self, exc: BaseException) -> str:
        return (
            f"cannot reach the broker at {self.url.redacted} ({_describe(exc)}); start "
            "Redis there, or fix WIRTHFORGE_BROKER / --broker (and its password)"
        )

    async def _first_contact(self) -> None:
        async with self._connect() as client:
            await self._join_cluster(client)
            await self._read_retained(client)

    def _connect(self) -> Any:
        return coredis.Redis.from_url(
            self.url.url, decode_responses=True, connect_timeout=2.0, stream_timeout=None
        )

    async def _join_cluster(self, client: coredis.Redis[str]) -> None:
        """The cluster's id and frame epoch: the first process sets them, the others read."""
        if not self.cluster_id:
            proposal = {"id": f"c-{uuid.uuid4().hex[:16]}", "epochNs": time.time_ns()}
        else:
            proposal = {"id": self.cluster_id, "epochNs": self.epoch_ns}
        await client.set(self.cluster_key, orjson.dumps(proposal).decode(), condition=PureToken.NX)
        raw = await client.get(self.cluster_key)
        try:
            found = orjson.loads(raw or "")
            cluster_id, epoch = found["id"], found["epochNs"]
            if not isinstance(cluster_id, str) or not isinstance(epoch, int):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._refusal(
                f"the key {self.cluster_key} holds no wirthforge cluster; using this "
                "process's own (delete the key to clear it)"
            )
            cluster_id, epoch = proposal["id"], proposal["epochNs"]
        if self.cluster_id and cluster_id != self.cluster_id:
            log.warning(
                "the broker's cluster changed (%s, was %s): it lost its data; this process "
                "keeps its own numbering",
                cluster_id,
                self.cluster_id,
            )
            return
        self.cluster_id, self.epoch_ns = str(cluster_id), int(epoch)

    async def _read_retained(self, client: coredis.Redis[str]) -> None:
        """The stream as it is, oldest first, into the resume log (nobody is connected yet)."""
        start = "-"
        while True:
            entries = await client.xrange(self.stream_key, start, "+", count=READ_COUNT)
            for entry in entries:
                self.read_entry(_str(entry.identifier), entry.field_values, deliver=False)
            if len(entries) < READ_COUNT:
                return
            start = f"({_str(entries[-1].identifier)}"

    async def _keep_connected(self) -> None:
        backoff = BACKOFF_FIRST
        first = True
        while True:
            started = trio.current_time()
            try:
                await self._session(rejoin=not first)
            except BaseException as exc:
                if isinstance(exc, trio.Cancelled) or not _only_redis_errors(exc):
                    raise
                self._went_down(exc)
            first = False
            if trio.current_time() - started > 10 * BACKOFF_MAX:
                backoff = BACKOFF_FIRST
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self, *, rejoin: bool) -> None:
        async with self._connect() as client:
            if rejoin:
                await self._join_cluster(client)
            await client.set(f"{self.alive_prefix}{self.origin}", "1", px=ALIVE_TTL_MS)
            self._client = client
            self._came_up()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, client)
                    nursery.start_soon(self._write, client)
                    nursery.start_soon(self._publish_frames, client)
                    nursery.start_soon(self._subscribe, client)
                    nursery.start_soon(self._keep_alive, client)
            finally:
                self._client = None

    # -- state changes ---------------------------------------------------------------------------

    def _came_up(self) -> None:
        was = self.status
        self.status = "up"
        self._missing_since.clear()  # what was missing before the outage proves nothing now
        if was == "down":
            log.info("broker %s is back; %d event(s) to write", self.url.redacted, self.waiting)
            self._tell_clients(
                "info",
                BROKER_RESTORED,
                "the broker is back: the stream goes on, and events held meanwhile follow",
            )

    def _went_down(self, exc: BaseException) -> None:
        self._client = None
        if self.status == "down":
            return
        self.status = "down"
        self.outages += 1
        live = [sid for sid in self.log.origin_of]
        log.warning(
            "broker %s unavailable (%s); %d live session(s), %d event(s) held; reconnecting",
            self.url.redacted,
            _describe(exc),
            len(live),
            self.waiting,
        )
        self._tell_clients(
            "error",
            BROKER_UNAVAILABLE,
            "the broker (Redis) is unavailable: live sessions pause here until it is back; "
            "the server reconnects by itself",
            {"liveSessions": live[:64], "held": self.waiting},
        )

    def _tell_clients(
        self,
        severity: Literal["info", "error"],
        code: str,
        message: str,
        details: dict[str, object] | None = None,
    ) -> None:
        """An error_event to this process's own clients (the stream may be what failed)."""
        if self.hub is None:
            return
        self.hub.publish(
            ErrorEvent(
                timestamp=wall_ms(),
                payload=ErrorPayload(
                    severity=severity,
                    code=code,
                    message=message,
                    component="orchestrator",
                    details=details,
                    recoverable=True,
                ),
            )
        )

    def _refusal(self, reason: str) -> None:
        """One log line per kind of foreign data, at most every 10 s (never the data)."""
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            self._last_refusal_log = now
            log.warning("refused data on the broker: %s (%d refused so far)", reason, self.refused)

    # -- the tasks -------------------------------------------------------------------------------

    async def _write(self, client: coredis.Redis[str]) -> None:
        """Write the outbox in order; an entry leaves it only once Redis has it."""
        cap = self.retention.events + max(self.retention.sessions, 1) * BATCHES_PER_SESSION
        while True:
            while self._outbox:
                fields, claim = self._outbox[0]
                if claim is None or await self._claimed(client, claim):
                    await client.xadd(
                        self.stream_key,
                        stamped(fields, max(self.scheduled_frame(), 0)),
                        trim_strategy=PureToken.MAXLEN,
                        threshold=cap,
                        trim_operator=PureToken.APPROXIMATELY,
                    )
                self._outbox.popleft()
            self._drained.set()
            self._outbox_ready = trio.Event()
            await self._outbox_ready.wait()

    async def _claimed(self, client: coredis.Redis[str], key: str) -> bool:
        """Whether this process earns the reward ``key`` names for the whole cluster: the
        first to claim it (a claim of its own, retried after a lost reply, counts)."""
        if await client.set(key, self.origin, condition=PureToken.NX):
            return True
        if await client.get(key) == self.origin:
            return True
        log.debug("reward %s was already earned in this cluster", key)
        return False

    async def _read(self, client: coredis.Redis[str]) -> None:
        while True:
            try:
                found = await client.xread(
                    {self.stream_key: self._last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                )
            except coredis.exceptions.WrongTypeError:
                self._refusal(
                    f"the key {self.stream_key} is not a stream; delete it to let the cluster go on"
                )
                raise
            for entry in (found or {}).get(self.stream_key, ()):
                self.read_entry(_str(entry.identifier), entry.field_values, deliver=True)
            self._read_progress.set()
            self._read_progress = trio.Event()

    def read_entry(self, entry_id: str, fields: Any, *, deliver: bool) -> None:
        """Take one stream entry as read: at start-up into the log; live, to the clients at
        once (a token batch) or held for the frame it is due with (:meth:`release`)."""
        self._last_id = entry_id
        try:
            entry = parse_entry(entry_id, fields)
        except Refused as exc:
            self._refusal(f"stream entry {entry_id} on {self.stream_key}: {exc}")
            return
        token = isinstance(entry.event, TokenStream)
        if not deliver:  # read back at start-up: logged at the frame the others sent it with
            self._log(entry, entry.written_frame + 1 if token else self._due(entry))
        elif token and not self._in_order_held:
            # Tokens go at once (they resume by count, not by frame); the frame is the first
            # whose clients surely have them: a session's first batch resumes by it.
            self._send_on(entry, max(entry.written_frame, self.frame_number()) + 1)
        else:
            due, on_time = -1, False
            if not token:
                due = self._due(entry)
                on_time = self.frame_number() < due
                if not on_time:
                    self._late(self.frame_number() + 1 - due, entry.origin == self.origin)
            # A token batch never overtakes a held error (a session's error comes before its
            # last batch) nor a held batch (a session's tokens stay in order).
            if isinstance(entry.event, (ErrorEvent, TokenStream)):
                self._in_order_held += 1
            self.held.append((entry, due, on_time))

    def _due(self, entry: Entry) -> int:
        """The frame ``entry`` goes out with: RELEASE_LAG after it was written, and never
        before the entry ahead of it in the stream (origins' clocks differ a little)."""
        self._last_due = max(self._last_due, entry.written_frame + RELEASE_LAG)
        return self._last_due

    def release(self, number: int) -> None:
        """Called just before frame ``number`` goes out: send the held entries due with it,
        in the stream's order. Every process sends an entry with the same frame, so a
        client's ``lastFrame`` means the same events on each (docs/decisions.md, "Broker")."""
        held = self.held
        council: list[tuple[Entry, int]] = []
        while held and held[0][1] <= number:
            entry, due, on_time = held.popleft()
            if isinstance(entry.event, (ErrorEvent, TokenStream)):
                self._in_order_held -= 1
            # Read in time, it is logged at its due frame even if this clock skipped that
            # frame (no client here saw it); read late, at the frame it really goes with.
            seen_by = due if on_time else number
            if isinstance(entry.event, LOSSLESS_FRAME_EVENTS):
                council.append((entry, seen_by))
            else:
                self._send_on(entry, seen_by)
        # Council events carry the frame number: they go last, so a client that has one of
        # them has every other event sent with that frame (as in one process's tick).
        for entry, seen_by in council:
            self._send_on(entry, seen_by)

    def _send_on(self, entry: Entry, seen_by: int) -> None:
        """Log ``entry`` as seen by every client that has frame ``seen_by``, and send it."""
        event, text = self._log(entry, seen_by)
        if event is not None and self.hub is not None:
            self.hub.publish(event, text)  # the origin's bytes, but for a council renumbering

    def _log(self, entry: Entry, seen_by: int) -> tuple[Event | None, str]:
        event, text = entry.event, entry.text
        if isinstance(event, LOSSLESS_FRAME_EVENTS):  # numbered by the frame it goes with
            event = attrs.evolve(event, frame_number=seen_by)
            text = encode(event)
        verdict = self.log.apply(entry, event, seen_by, trio.current_time())
        if isinstance(event, RewardEvent) and entry.origin != self.origin:
            self.reward_seen(event.payload.title)
        return (event if verdict == "deliver" else None), text

    def _late(self, frames: int, own: bool) -> None:
        """An entry read after this process sent the frame it was due with."""
        self.late += 1
        now = time.monotonic()
        if now - self._last_late_log >= REFUSAL_LOG_INTERVAL:
            self._last_late_log = now
            log.warning(
                "an event written by %s reached this process %d frame(s) after the frame it "
                "was due with (%d so far): a client that moves to another process just then "
                "may get it twice or miss it; this process or Redis is overloaded",
                "this process" if own else "another process",
                frames,
                self.late,
            )

    async def ready_for(self, resume: ResumePayload) -> None:
        """Wait, a second at most, until this process can answer ``resume`` as the process
        the client left would have: it has read the stream as far as the stream went when
        the client asked, and its frames have reached the client's last frame."""
        if resume.server_instance != self.cluster_id:
            return
        with trio.move_on_after(READY_TIMEOUT) as waited:
            client = self._client
            if client is not None and self.status == "up":
                try:
                    tail = await client.xrevrange(self.stream_key, "+", "-", count=1)
                except _REDIS_ERRORS:
                    tail = ()
                if tail:
                    target = _position(_str(tail[0].identifier))
                    while _position(self._last_id) < target:
                        await self._read_progress.wait()
            last_frame = resume.last_frame
            behind = 0 if last_frame is None else last_frame - self.frame_number()
            if 0 < behind <= self.frame_rate:  # more is no frame of this cluster's clock
                await trio.sleep((behind + 1) / self.frame_rate)
        if waited.cancelled_caught:
            log.info("a resuming client did not wait for this process to catch up any longer")

    async def _publish_frames(self, client: coredis.Redis[str]) -> None:
        """Publish the lit energy, latest wins; while no other process listens (PUBLISH
        counts the receivers, this one included), only once a second, to notice one."""
        alone_until = -math.inf
        while True:
            self._frame_ready = trio.Event()
            if trio.current_time() < alone_until:
                self.outgoing.take()  # nobody else to show it to
            texts = self.outgoing.take()
            if texts:
                receivers = await client.publish(
                    self.frames_channel, frame_message(self.origin, texts)
                )
                if receivers <= 1:
                    alone_until = trio.current_time() + ALONE_RECHECK
                continue
            await self._frame_ready.wait()

    async def _subscribe(self, client: coredis.Redis[str]) -> None:
        async with client.pubsub(
            channels=[self.frames_channel, self.cancel_channel], ignore_subscribe_messages=True
        ) as pubsub:
            async for message in pubsub:
                if message["type"] != "message":
                    continue
                try:
                    if message["channel"] == self.frames_channel:
                        origin, events = parse_frame(message["data"])
                        if origin != self.origin:
                            self.remote.offer(events, trio.current_time())
                    else:
                        session_id = parse_cancel(message["data"])
                        if self.cancel_local(session_id):
                            log.info("session %s cancelled from another process", session_id)
                except Refused as exc:
                    self._refusal(f"a message on {_str(message['channel'])}: {exc}")

    async def _keep_alive(self, client: coredis.Redis[str]) -> None:
        """Refresh this process's liveness key, trim the stream by age, and end the live
        sessions of processes that stopped refreshing theirs."""
        alive_key = f"{self.alive_prefix}{self.origin}"
        refreshes = 0
        while True:
            await client.set(alive_key, "1", px=ALIVE_TTL_MS)
            if refreshes % TRIM_EVERY == 0:
                oldest = max(0, int(time.time() * 1000 - self.retention.seconds * 1000))
                await client.xtrim(
                    self.stream_key, PureToken.MINID, oldest, trim_operator=PureToken.APPROXIMATELY
                )
                self.log.forget(trio.current_time())
            refreshes += 1
            await self._end_orphans(client)
            await trio.sleep(REFRESH_INTERVAL)

    async def _end_orphans(self, client: coredis.Redis[str]) -> None:
        now = trio.current_time()
        origins = {o for o in self.log.origin_of.values() if o != self.origin}
        for origin in list(self._missing_since):
            if origin not in origins:
                del self._missing_since[origin]
        for origin in origins:
            if await client.exists([f"{self.alive_prefix}{origin}"]):
                self._missing_since.pop(origin, None)
                continue
            since = self._missing_since.setdefault(origin, now)
            if now - since < DEAD_AFTER:
                continue
            for sid in self.log.live_ids_of(origin):
                if sid not in self.log.sessions:
                    continue  # its start is not in this process's log: another ends it
                claimed = await client.set(
                    f"{self.ended_prefix}{sid}",
                    self.origin,
                    condition=PureToken.NX,
                    ex=max(1, int(self.retention.seconds)),
                )
                if claimed:
                    self._write_interrupted(sid, origin)

    def _write_interrupted(self, sid: str, origin: str) -> None:
        """The end of a session whose process died: an error_event, then its last batch."""
        session = self.log.sessions[sid]
        model_id, tokens = session.model_id, len(session.tokens)
        log.warning("process %s stopped mid-generation: ending its session %s", origin, sid)
        error = ErrorEvent(
            timestamp=wall_ms(),
            payload=ErrorPayload(
                severity="error",
                code=SESSION_INTERRUPTED,
                message=(
                    f"session {sid} of model {model_id} was interrupted: the server process "
                    "running it stopped; its text so far is kept, send the prompt again"
                ),
                component="orchestrator",
                details={"sessionId": sid, "modelId": model_id, "tokensReceived": tokens},
                recoverable=True,
            ),
        )
        self._queue(entry_fields(self.origin, error))
        end = TokenStream(
            timestamp=wall_ms(),
            payload=TokenStreamPayload(
                tokens=(),
                is_complete=True,
                session_id=sid,
                model_id=model_id,
                energy_cost=0.0,
            ),
        )
        self._queue(
            entry_fields(self.origin, end, offset=tokens, status="failed", interrupted=True)
        )
