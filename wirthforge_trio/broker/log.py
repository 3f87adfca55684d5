"""The resume log of a process on a broker: every session and lossless event of the cluster,
as read from the Redis Stream (pure, no I/O).

Each process builds it from the same stream in the same order, so a client that reconnects
to any process is caught up from the same sessions and history (``engine/recovery.py``). It
is also where "exactly once" is checked: a token batch must start where the session's text
ends, so a batch written twice (an XADD retried after a lost reply) is dropped and a batch
after a gap is seen, never stitched (docs/decisions.md, "Broker").
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Final, Literal

from ..contract.events import Event, ModelStatus, TokenStream
from ..engine.decipher import Logged, Retention, Session
from .entries import Entry

log = logging.getLogger("wirthforge_trio.broker")

Verdict = Literal["deliver", "duplicate", "refuse"]

DELIVER: Final = "deliver"


class StreamLog:
    """Sessions and history as the stream tells them, within the server's retention."""

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.history: deque[Logged] = deque()
        self.origin_of: dict[str, str] = {}
        """The process running each live session."""
        self.ended: dict[str, None] = {}
        """Sessions whose end was read, oldest first (a batch after it is refused)."""
        self.tokens_by_origin: dict[str, int] = {}
        """Tokens delivered, by the process that generated them (never forgotten)."""
        self._partial: set[str] = set()
        """Sessions whose beginning this process never read (trimmed, or a gap): delivered
        live, but not offered for resuming."""

    def apply(self, entry: Entry, event: Event, seen_by: int, now: float) -> Verdict:
        """Record ``entry`` (its event as the clients get it: ``event``), which every client
        of this process that has frame ``seen_by`` has received; whether the clients should
        get it (``deliver``) or not (a duplicate, or refused)."""
        if isinstance(event, ModelStatus):
            return "deliver"  # state, not history: not replayed, as in one process
        if not isinstance(event, TokenStream):
            self.history.append(Logged(seen_by, now, event))
            return "deliver"
        payload = event.payload
        sid = payload.session_id
        if sid in self.ended:
            log.warning("refused a token batch of session %s: it has already ended", sid)
            return "refuse"
        session = self.sessions.get(sid)
        assert entry.offset is not None  # parse_entry checks it for every token_stream
        have = len(session.tokens) if session is not None else 0
        if session is None and sid not in self._partial:
            if entry.offset != 0:
                log.warning("session %s began before this process read the stream", sid)
                self._partial.add(sid)
            else:
                session = Session(id=sid, model_id=payload.model_id, started_at=now)
                self.sessions[sid] = session
        if session is not None:
            if entry.offset < have:
                return "duplicate"
            if entry.offset > have:
                log.warning("a gap in session %s (%d tokens missing)", sid, entry.offset - have)
                del self.sessions[sid]
                self._partial.add(sid)
                session = None
        if session is not None:
            if session.first_sent_frame is None:
                session.first_sent_frame = seen_by
            session.tokens.extend(payload.tokens)
        self.origin_of.setdefault(sid, entry.origin)
        origin = entry.origin
        self.tokens_by_origin[origin] = self.tokens_by_origin.get(origin, 0) + len(payload.tokens)
        if payload.is_complete:
            self._end(sid, entry, now)
        return "deliver"

    def _end(self, sid: str, entry: Entry, now: float) -> None:
        self.ended[sid] = None
        self.origin_of.pop(sid, None)
        self._partial.discard(sid)
        session = self.sessions.get(sid)
        if session is not None:
            session.status = entry.status or "complete"
            session.completion_sent = True
            session.ended_at = now
            session.interrupted = entry.interrupted  # resume gives the reason (recovery.py)

    def live_sessions(self) -> list[tuple[str, Session | None]]:
        """(origin, session) of every session still streaming (None: not resumable here)."""
        return [(origin, self.sessions.get(sid)) for sid, origin in self.origin_of.items()]

    def tokens_except(self, origin: str) -> int:
        """Tokens the other processes generated, as far as this log has read."""
        return sum(n for o, n in self.tokens_by_origin.items() if o != origin)

    def live_ids_of(self, origin: str) -> list[str]:
        return [sid for sid, o in self.origin_of.items() if o == origin]

    def forget(self, now: float) -> None:
        """Drop what is past retention, by count and by age, the oldest first."""
        keep = self.retention
        history = self.history
        while history and (len(history) > keep.events or now - history[0].at > keep.seconds):
            history.popleft()
        excess = len(self.sessions) - keep.sessions
        for session in [s for s in self.sessions.values() if s.ended_at is not None]:
            assert session.ended_at is not None
            if excess <= 0 and now - session.ended_at <= keep.seconds:
                break
            del self.sessions[session.id]
            excess -= 1
        while len(self.ended) > keep.sessions + 1024:
            del self.ended[next(iter(self.ended))]
