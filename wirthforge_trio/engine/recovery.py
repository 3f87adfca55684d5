"""Catching a reconnecting client up: the state snapshot and exactly the events it missed.

Pure: it reads the Decipher's retained sessions and history. The transport calls it and adds
the connection to the hub in the same step, with no checkpoint between, so every token is
either in the catch-up (already published) or in a live batch (published later): no gap and
no duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from ..contract.events import (
    Event,
    HeldSession,
    ResumePayload,
    SnapshotModel,
    SnapshotSession,
    StateSnapshot,
    StateSnapshotPayload,
    TokenStream,
    TokenStreamPayload,
    models_of,
    topic_of,
)
from .decipher import Decipher, Logged, Session
from .energy import EU_PER_TOKEN

RESTARTED = "server restarted: this is another server instance; resynchronise from scratch"
UNKNOWN = "not on this server (it restarted, or the session is past retention)"
INTERRUPTED = "interrupted: its server stopped during the generation; the text is what was kept"


class Retained(Protocol):
    """Where the sessions and history a client resumes from are kept: the Decipher itself in
    one process, the stream's log on a broker (``broker/log.py``)."""

    @property
    def sessions(self) -> Mapping[str, Session]: ...

    @property
    def history(self) -> Iterable[Logged]: ...


def catch_up(
    decipher: Decipher,
    resume: ResumePayload,
    *,
    server_instance: str,
    wall_ms: int,
    wants: Callable[[Event], bool],
    channels: tuple[str, ...],
    subscribed_models: tuple[str, ...] | None,
    retained: Retained | None = None,
) -> list[Event]:
    """The snapshot, then the missed lossless events, then each session's missing tokens
    (from ``retained``, the Decipher's own by default).

    A client of an earlier run of this server's store (``resume_log.py``) resumes too: the
    log is one, and positions are (run, frame).
    """
    log: Retained = decipher if retained is None else retained
    runs = (*decipher.predecessors, server_instance)
    client_run = runs.index(resume.server_instance) if resume.server_instance in runs else None
    resumed = client_run is not None
    reason = None
    if resume.server_instance is not None and not resumed:
        reason = RESTARTED
    held = {h.session_id: h for h in resume.sessions}
    rows = [_row(session, resumable=True) for session in log.sessions.values()]
    for session_id in held.keys() - log.sessions.keys():
        rows.append(
            SnapshotSession(
                session_id=session_id,
                status="unknown",
                tokens=0,
                resumable=False,
                reason=RESTARTED if reason else UNKNOWN,
            )
        )
    snapshot = StateSnapshot(
        timestamp=wall_ms,
        payload=StateSnapshotPayload(
            server_instance=server_instance,
            resumed=resumed,
            reason=reason,
            frame_number=max(decipher.frame_number, 0),
            models=tuple(
                SnapshotModel(
                    model_id=model_id,
                    total_energy=round(energy.total_eu, 6),
                    intensity=round(min(max(energy.intensity, 0.0), 1.0), 6),
                    state=str(energy.state),  # type: ignore[arg-type]
                )
                for model_id, energy in decipher.energies.items()
            ),
            sessions=tuple(rows),
            rewards=decipher.rewards.unlocked,
            channels=channels,
            subscribed_models=subscribed_models,
            retention_sessions=decipher.retention.sessions,
            retention_seconds=decipher.retention.seconds,
        ),
    )
    if client_run is None:
        return [snapshot]
    last_frame = resume.last_frame

    def unseen(run: int, frame: int) -> bool:
        """Whether the client, at (client_run, last_frame), cannot have seen this position."""
        assert last_frame is not None and client_run is not None
        return run > client_run or (run == client_run and frame > last_frame)

    events: list[Event] = [snapshot]
    if last_frame is not None:
        events.extend(
            logged.event
            for logged in log.history
            if unseen(logged.run, logged.frame_number) and wants(logged.event)
        )
    for session in log.sessions.values():
        batch = _missing_tokens(session, held.get(session.id), last_frame, wall_ms, unseen)
        if batch is not None and wants(batch):
            events.append(batch)
    return events


def _row(session: Session, *, resumable: bool) -> SnapshotSession:
    return SnapshotSession(
        session_id=session.id,
        model_id=session.model_id,
        status=session.status,
        tokens=session.published,
        resumable=resumable,
        reason=INTERRUPTED if session.interrupted else None,
    )


def _missing_tokens(
    session: Session,
    held: HeldSession | None,
    last_frame: int | None,
    wall_ms: int,
    unseen: Callable[[int, int], bool] | None = None,
) -> TokenStream | None:
    """One token_stream with what the client lacks of ``session``, or None if nothing."""
    if held is None:
        # A session the client does not hold. If its first tokens went out after the last
        # frame the client saw, the client cannot have heard of it (it started, or began to
        # speak, while the client was away): replay it whole. If they went out by then, the
        # client had them and chose not to keep it.
        first = session.first_sent_frame
        if unseen is None:  # one run: positions are frame numbers
            unseen = lambda _run, frame: last_frame is not None and frame > last_frame  # noqa: E731
        if last_frame is None or (first is not None and not unseen(session.run, first)):
            return None
        have, saw_end = 0, False
    else:
        have, saw_end = held.tokens, held.complete
    published = session.published
    missing = session.tokens[have:published] if have < published else []
    ended = session.completion_sent
    if not missing and (saw_end or not ended):
        return None
    return TokenStream(
        timestamp=wall_ms,
        payload=TokenStreamPayload(
            tokens=tuple(missing),
            is_complete=ended,
            session_id=session.id,
            model_id=session.model_id,
            energy_cost=round(len(missing) * EU_PER_TOKEN, 6),
        ),
    )


def wants_for(
    wants_topic: Callable[[str], bool], wants_models: Callable[[tuple[str, ...]], bool]
) -> Callable[[Event], bool]:
    """A connection's filter as one predicate over events."""
    return lambda event: wants_topic(topic_of(event)) and wants_models(models_of(event))
