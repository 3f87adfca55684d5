"""The resume log's durable side: what the engine writes as it publishes, and reads back once
when it starts, so that sessions outlive the process (docs/decisions.md, "The resume log").

The engine always keeps the log it resumes clients from in memory (the Decipher's sessions
and history): a resume is answered in the same step that adds the client to the hub, with no
await between, so it cannot wait for a disk or a broker. A :class:`ResumeLog` is where that
memory is also written, in order, and from where it is recovered at start-up. Without one
(the default) nothing is written anywhere. Writers never block the frame clock: every call
only queues, and the log's own task writes the queue in batches.

Runs: each start of a server on one log is a *run*, named by its server instance id, and
numbered in order. A position in the log is (run, frame number), so that a client that saw
frame 900 of the run before a crash has not seen frame 3 of the run after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs
import trio


class StoreError(ValueError):
    """A store that cannot be opened; the message names the file and the setting to fix."""


@attrs.frozen
class StoredSession:
    """One session as the log kept it: only what the model wrote, never the prompt."""

    session_id: str
    model_id: str
    run: int
    first_sent_frame: int | None
    tokens: tuple[str, ...]
    """The tokens published (sent to clients) before the log was last written."""
    status: str
    """streaming (it was live when the process stopped), complete, failed, cancelled or
    interrupted (a run ended while it was live)."""
    ended_wall: float | None
    """When it ended, in seconds of the wall clock (the only clock runs share)."""


@attrs.frozen
class StoredEvent:
    """A lossless event other than tokens, as published: in which run and frame, when."""

    run: int
    frame_number: int
    wall: float
    text: str
    """The event as it went on the wire (JSON)."""


@attrs.frozen
class Recovered:
    """What a log held when a new run opened it."""

    runs: tuple[str, ...] = ()
    """The server instances of the earlier runs, oldest first (the new run is next)."""
    sessions: tuple[StoredSession, ...] = ()
    """Oldest first."""
    events: tuple[StoredEvent, ...] = ()
    """Oldest first."""


class ResumeLog(Protocol):
    """Where the engine's resume log is written and recovered from (SQLite today; a broker's
    streams later). Every write method only queues and returns at once."""

    async def open(self, instance_id: str) -> Recovered:
        """Start a new run named ``instance_id``; what earlier runs left."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what is queued, in batches, until cancelled; then write the rest and close."""
        ...

    def session_started(self, session_id: str, model_id: str, run: int) -> None: ...

    def tokens_published(
        self, session_id: str, tokens: Sequence[str], first_sent_frame: int | None
    ) -> None: ...

    def session_ended(self, session_id: str, status: str, wall: float) -> None: ...

    def event_logged(self, run: int, frame_number: int, wall: float, text: str) -> None: ...

    def sessions_forgotten(self, session_ids: Sequence[str]) -> None:
        """Past retention: the log drops them too."""
        ...

    def events_forgotten(self, count: int) -> None:
        """The ``count`` oldest events are past retention."""
        ...
