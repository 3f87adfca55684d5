"""The resume log in a SQLite file (``WIRTHFORGE_STORE=sqlite:PATH``), for one process.

sqlite3 only blocks, so every read and write runs in a worker thread (``trio.to_thread``),
one at a time, owned by :meth:`SqliteLog.run`'s task: a thread is forced by the library, and
the frame clock never waits for the disk (docs/decisions.md, "The resume log"). Writes are
queued by the engine as it publishes and written as one transaction at most every
:data:`FLUSH_INTERVAL` after the first of them: what a crash can lose is the last interval's
batches, never a committed one (WAL, which survives the process being killed).

The file is created readable by its owner only (0600): it holds what the models wrote.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, Final

import trio

from .resume_log import Recovered, StoredEvent, StoredSession, StoreError

log = logging.getLogger("wirthforge_trio.store")

FLUSH_INTERVAL: Final = 0.1
"""Seconds between the first queued write and its batch being committed."""

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS runs (run INTEGER PRIMARY KEY, instance TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    model_id TEXT NOT NULL,
    run INTEGER NOT NULL,
    first_sent_frame INTEGER,
    status TEXT NOT NULL,
    ended_wall REAL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    tokens TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_session ON batches (session_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run INTEGER NOT NULL,
    frame INTEGER NOT NULL,
    wall REAL NOT NULL,
    text TEXT NOT NULL
);
"""

Op = tuple[str, tuple[Any, ...]]

_INSERT_BATCH: Final = "INSERT INTO batches (session_id, tokens) VALUES (?, ?)"


class SqliteLog:
    """A :class:`~wirthforge_trio.engine.resume_log.ResumeLog` in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Create the file (0600) if need be and check it is SQLite's: before the server
        starts, so that a bad path is a clear error rather than a failed start-up."""
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            with closing(sqlite3.connect(self.path)) as db:
                db.execute("PRAGMA schema_version")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"the store {self.path} cannot be used ({exc}); choose another file with "
                "--store / WIRTHFORGE_STORE (sqlite:PATH)"
            ) from None
        self._db: sqlite3.Connection | None = None
        self._queue: list[Op] = []
        self._queued = trio.Event()
        self._first_sent: set[str] = set()
        """Live sessions whose first published frame is already queued."""
        self.batches_written = 0
        self.write_failures = 0

    # -- start-up --------------------------------------------------------------------------

    async def open(self, instance_id: str) -> Recovered:
        return await trio.to_thread.run_sync(self._open, instance_id)

    def _open(self, instance_id: str) -> Recovered:
        try:
            return self._recover(instance_id)
        except (OSError, sqlite3.Error, ValueError) as exc:
            raise StoreError(
                f"the store {self.path} cannot be used ({exc}); choose another file with "
                "--store / WIRTHFORGE_STORE (sqlite:PATH)"
            ) from None

    def _recover(self, instance_id: str) -> Recovered:
        # Created 0600 before SQLite sees it (SQLite gives its -wal and -shm files the same).
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        self._db = db
        runs = tuple(i for (i,) in db.execute("SELECT instance FROM runs ORDER BY run"))
        db.execute("INSERT INTO runs (run, instance) VALUES (?, ?)", (len(runs), instance_id))
        tokens: dict[str, list[str]] = {}
        for session_id, batch in db.execute("SELECT session_id, tokens FROM batches ORDER BY seq"):
            tokens.setdefault(session_id, []).extend(json.loads(batch))
        sessions = tuple(
            StoredSession(
                session_id=sid,
                model_id=model_id,
                run=run,
                first_sent_frame=first,
                tokens=tuple(tokens.get(sid, ())),
                status=status,
                ended_wall=ended,
            )
            for sid, model_id, run, first, status, ended in db.execute(
                "SELECT id, model_id, run, first_sent_frame, status, ended_wall FROM sessions "
                "ORDER BY seq"
            )
        )
        events = tuple(
            StoredEvent(run=run, frame_number=frame, wall=wall, text=text)
            for run, frame, wall, text in db.execute(
                "SELECT run, frame, wall, text FROM events ORDER BY seq"
            )
        )
        return Recovered(runs=runs, sessions=sessions, events=events)

    # -- the writer --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._queued.wait()  # idle: no wake-up at all
                await trio.sleep(FLUSH_INTERVAL)
                await self._flush()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()
                if self._db is not None:
                    await trio.to_thread.run_sync(self._db.close)
                    self._db = None

    async def _flush(self) -> None:
        ops, self._queue = self._queue, []
        self._queued = trio.Event()
        if ops and self._db is not None:
            await trio.to_thread.run_sync(self._write, self._db, ops)

    def _write(self, db: sqlite3.Connection, ops: list[Op]) -> None:
        try:
            db.execute("BEGIN")
            for sql, args in ops:
                if sql is _INSERT_BATCH:
                    args = (args[0], json.dumps(list(args[1]), ensure_ascii=False))
                db.execute(sql, args)
            db.execute("COMMIT")
            self.batches_written += 1
        except sqlite3.Error as exc:
            self.write_failures += 1
            if db.in_transaction:
                db.execute("ROLLBACK")
            # The sessions stay in memory and resumable; only a restart would lose them.
            log.error(
                "the resume store %s could not be written (%s); %d change(s) not kept on disk",
                self.path,
                exc,
                len(ops),
            )

    def _put(self, sql: str, *args: Any) -> None:
        self._queue.append((sql, args))
        self._queued.set()

    # -- what the engine writes ----------------------------------------------------------------

    def session_started(self, session_id: str, model_id: str, run: int) -> None:
        self._put(
            "INSERT OR REPLACE INTO sessions (id, model_id, run, status) "
            "VALUES (?, ?, ?, 'streaming')",
            session_id,
            model_id,
            run,
        )

    def tokens_published(
        self, session_id: str, tokens: Sequence[str], first_sent_frame: int | None
    ) -> None:
        # The tokens are encoded in the writer's thread, not on the frame clock's path.
        if tokens:
            self._put(_INSERT_BATCH, session_id, tokens)
        if session_id not in self._first_sent:
            self._first_sent.add(session_id)
            self._put(
                "UPDATE sessions SET first_sent_frame = ? WHERE id = ?",
                first_sent_frame,
                session_id,
            )

    def session_ended(self, session_id: str, status: str, wall: float) -> None:
        self._first_sent.discard(session_id)
        self._put(
            "UPDATE sessions SET status = ?, ended_wall = ? WHERE id = ?", status, wall, session_id
        )

    def event_logged(self, run: int, frame_number: int, wall: float, text: str) -> None:
        self._put(
            "INSERT INTO events (run, frame, wall, text) VALUES (?, ?, ?, ?)",
            run,
            frame_number,
            wall,
            text,
        )

    def sessions_forgotten(self, session_ids: Sequence[str]) -> None:
        for session_id in session_ids:
            self._put("DELETE FROM batches WHERE session_id = ?", session_id)
            self._put("DELETE FROM sessions WHERE id = ?", session_id)

    def events_forgotten(self, count: int) -> None:
        if count > 0:
            self._put(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                count,
            )
