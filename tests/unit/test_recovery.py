"""What a resuming client gets of a session it does not hold: the rule in engine/recovery."""

from __future__ import annotations

from wirthforge_trio.engine.decipher import Session
from wirthforge_trio.engine.recovery import _missing_tokens


def session(first_sent_frame: int | None, tokens: list[str], start_frame: int = 1) -> Session:
    return Session(
        id="s-1",
        model_id="demo",
        started_at=0.0,
        start_frame=start_frame,
        first_sent_frame=first_sent_frame,
        tokens=tokens,
    )


def test_a_session_whose_first_tokens_went_out_after_the_client_left_is_replayed_whole() -> None:
    # Started before the client's last frame (a council member still thinking), but its
    # first tokens were sent after it: the client cannot have any of them.
    batch = _missing_tokens(session(12, ["a", "b", "c"]), None, last_frame=10, wall_ms=5)
    assert batch is not None
    assert batch.payload.tokens == ("a", "b", "c")
    assert batch.payload.is_complete is False


def test_a_session_the_client_saw_speak_and_did_not_keep_is_not_replayed() -> None:
    assert _missing_tokens(session(8, ["a", "b"]), None, last_frame=10, wall_ms=5) is None


def test_a_session_that_has_said_nothing_yet_has_nothing_to_replay() -> None:
    assert _missing_tokens(session(None, []), None, last_frame=10, wall_ms=5) is None


def test_without_a_last_frame_nothing_is_assumed() -> None:
    assert _missing_tokens(session(12, ["a"]), None, last_frame=None, wall_ms=5) is None
