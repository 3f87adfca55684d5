"""The client's sans-IO core, driven without sockets: state, resume books, retry decisions."""

from __future__ import annotations

import json
import random

import pytest

from tests.support.events import frame, reward_text, row, snapshot, startup, token_text
from wirthforge_trio.client_core import (
    Backoff,
    ClientCore,
    ConnectionState,
    Failure,
    IllegalTransition,
    NotConnected,
    Retry,
    Stop,
    with_resume,
)
from wirthforge_trio.contract.codec import encode, encode_client_message
from wirthforge_trio.contract.events import (
    ClientMessage,
    Heartbeat,
    HeartbeatPayload,
    HeartbeatResponse,
    Resume,
    Subscribe,
    TokenStream,
    Unsubscribe,
)

S = ConnectionState
URL = "ws://127.0.0.1:8145/ws"
DROPPED = Failure("closed", 1006)
REFUSED = Failure("refused")


def core(**kwargs: object) -> ClientCore:
    kwargs.setdefault("backoff", Backoff(rng=random.Random(11)))
    return ClientCore(URL, **kwargs)  # type: ignore[arg-type]


def wire(message: ClientMessage) -> dict[str, object]:
    """A client message as the server would read it."""
    body: dict[str, object] = json.loads(encode_client_message(message))
    return body


def connect(c: ClientCore) -> list[ClientMessage]:
    c.begin_attempt()
    return c.handshake_done()


def tokens(c: ClientCore, text: str) -> list[str] | None:
    """The tokens the core hands the user for one server token_stream (None: nothing)."""
    event = c.receive(text).event
    if event is None:
        return None
    assert isinstance(event, TokenStream)
    return list(event.payload.tokens)


# --- the state machine ----------------------------------------------------------------------


def test_a_connection_life_moves_through_the_table() -> None:
    c = core()
    assert c.state is S.DISCONNECTED
    assert c.begin_attempt() == URL + "?resume=1"
    assert c.state is S.CONNECTING and c.attempts == 1
    c.handshake_done()
    assert c.state is S.CONNECTED and c.connected and c.reconnects == 0
    assert isinstance(c.ended(DROPPED), Retry)
    assert c.state is S.RECONNECTING and not c.connected and c.close_code == 1006
    c.begin_attempt()
    assert isinstance(c.ended(REFUSED), Retry)  # a failed handshake: straight back to waiting
    connect(c)
    assert c.reconnects == 1 and c.attempts == 3
    c.finish()
    assert c.transitions == [
        (S.DISCONNECTED, S.CONNECTING),
        (S.CONNECTING, S.CONNECTED),
        (S.CONNECTED, S.RECONNECTING),
        (S.RECONNECTING, S.CONNECTING),
        (S.CONNECTING, S.RECONNECTING),
        (S.RECONNECTING, S.CONNECTING),
        (S.CONNECTING, S.CONNECTED),
        (S.CONNECTED, S.CLOSED),
    ]
    with pytest.raises(IllegalTransition):
        c.begin_attempt()  # CLOSED is final


def test_a_handshake_that_was_never_started_cannot_complete() -> None:
    with pytest.raises(IllegalTransition, match="DISCONNECTED -> CONNECTED"):
        core().handshake_done()


def test_a_message_outside_a_connection_is_refused() -> None:
    with pytest.raises(NotConnected):
        core().receive(startup())


# --- retry or stop --------------------------------------------------------------------------


def test_a_normal_close_from_the_server_stops() -> None:
    c = core()
    connect(c)
    decision = c.ended(Failure("closed", 1000, "bye"))
    assert isinstance(decision, Stop) and "1000" in decision.reason
    assert c.state is S.CONNECTED and c.close_code == 1000  # CLOSED once the shell finishes
    c.finish()
    assert c.state is S.CLOSED and S.RECONNECTING not in [new for _, new in c.transitions]


@pytest.mark.parametrize(("code", "retried"), [(1001, True), (1011, True), (4408, True)])
def test_other_close_codes_are_retried(code: int, retried: bool) -> None:
    c = core()
    connect(c)
    assert isinstance(c.ended(Failure("closed", code)), Retry) is retried
    assert c.close_code == code


@pytest.mark.parametrize(
    ("status", "final"),
    [(400, True), (401, True), (403, True), (404, True), (408, False), (429, False), (503, False)],
)
def test_a_4xx_refusal_stops_but_408_429_and_5xx_are_retried(status: int, final: bool) -> None:
    c = core()
    c.begin_attempt()
    decision = c.ended(Failure("rejected", status, "not you"))
    assert isinstance(decision, Stop) is final
    assert c.state is (S.CONNECTING if final else S.RECONNECTING)
    assert c.close_code is None, "a handshake that failed closed no connection"


def test_max_attempts_counts_consecutive_failures() -> None:
    c = core(max_attempts=3)
    decisions = []
    for _ in range(3):
        c.begin_attempt()
        decisions.append(c.ended(REFUSED))
    assert [type(d) for d in decisions] == [Retry, Retry, Stop]
    assert c.attempts == 3


def test_a_close_asked_by_the_user_stops_whatever_ended_the_connection() -> None:
    c = core()
    connect(c)
    assert c.request_close() is True and c.request_close() is False
    assert isinstance(c.ended(DROPPED), Stop)


def test_the_backoff_sequence_grows_and_restarts_after_a_healthy_connection() -> None:
    twin = Backoff(base=0.5, cap=4.0, rng=random.Random(3))
    c = core(backoff=Backoff(base=0.5, cap=4.0, rng=random.Random(3)))
    retries = []
    for _ in range(5):
        c.begin_attempt()
        decision = c.ended(REFUSED)
        assert isinstance(decision, Retry)
        retries.append(decision)
    assert [r.attempt for r in retries] == [0, 1, 2, 3, 4]
    assert [r.delay for r in retries] == [twin.delay(n) for n in range(5)]
    assert all(r.delay <= min(4.0, 0.5 * 2**r.attempt) for r in retries)
    # A connection the server never served (no snapshot, no heartbeat) does not reset it...
    connect(c)
    c.receive(startup())
    unserved = c.ended(DROPPED)
    assert isinstance(unserved, Retry) and unserved.attempt == 5
    # ...one that it served does.
    connect(c)
    c.receive(snapshot("A", resumed=False))
    served = c.ended(DROPPED)
    assert isinstance(served, Retry) and served.attempt == 0 and c.retry is served


# --- opening messages and subscriptions -----------------------------------------------------


def test_the_first_resume_holds_nothing_and_names_no_channels() -> None:
    (resume,) = connect(core())
    assert wire(resume) == {"type": "resume", "payload": {"sessions": []}}


def test_without_resume_the_subscriptions_are_restored_as_messages() -> None:
    c = core(resume=False, channels=["energy", "models"], models=["demo"])
    assert c.begin_attempt() == URL
    messages = c.handshake_done()
    assert [wire(m)["payload"] for m in messages] == [
        {"channels": ["council", "experience", "reward"], "models": []},
        {"channels": ["models"], "models": []},
        {"channels": [], "models": ["demo"]},
    ]
    assert [type(m) for m in messages] == [Unsubscribe, Subscribe, Subscribe]


def test_a_change_while_disconnected_is_sent_at_the_next_connection() -> None:
    c = core()
    assert c.subscribe(["models"], ["demo"]) is None
    assert c.unsubscribe(["reward"], []) is None
    (resume,) = connect(c)
    assert isinstance(resume, Resume)
    assert resume.payload.channels == ("energy", "experience", "council", "system", "models")
    assert resume.payload.models == ("demo",)
    message = c.unsubscribe([], ["demo"])
    assert isinstance(message, Unsubscribe), "connected: the change goes out now"
    with pytest.raises(ValueError, match="system"):
        c.unsubscribe(["system"], [])
    with pytest.raises(ValueError, match="unknown channel"):
        c.subscribe(["nope"], [])


def test_every_model_but_some_is_restored_with_an_unsubscribe() -> None:
    c = core()
    c.unsubscribe([], ["sage"])
    messages = connect(c)
    assert [type(m) for m in messages] == [Resume, Unsubscribe]
    assert wire(messages[1])["payload"] == {"channels": [], "models": ["sage"]}


def test_resume_param_is_set_once() -> None:
    assert with_resume("ws://h:1/ws?resume=0&token=x") == "ws://h:1/ws?token=x&resume=1"


# --- what arrives ---------------------------------------------------------------------------


def test_a_heartbeat_is_answered_with_its_sequence() -> None:
    c = core()
    connect(c)
    beat = encode(Heartbeat(timestamp=1, payload=HeartbeatPayload(sequence=7, server_time=1)))
    received = c.receive(beat)
    assert isinstance(received.event, Heartbeat)
    (answer,) = received.replies
    assert isinstance(answer, HeartbeatResponse) and answer.payload.sequence == 7


def test_a_message_that_is_not_an_event_is_counted_and_skipped() -> None:
    c = core()
    connect(c)
    assert c.receive('{"type": "nonsense"}').event is None
    assert c.receive(b"\xff").event is None
    assert c.undecodable == 2


def test_resume_books_give_every_token_exactly_once_across_reconnects() -> None:
    c = core()
    connect(c)
    c.receive(snapshot("A", resumed=False))
    c.receive(frame(42))
    assert tokens(c, token_text("s1", ["a", "b"])) == ["a", "b"]
    c.ended(DROPPED)

    # Second connection: resume says 2 held; the server replays 3 of its 4 (1 overlaps).
    (resume,) = connect(c)
    assert wire(resume)["payload"] == {
        "serverInstance": "A",
        "lastFrame": 42,
        "sessions": [{"sessionId": "s1", "tokens": 2, "complete": False}],
    }
    c.receive(snapshot("A", resumed=True, sessions=(row("s1", 4), row("s2", 2)), timestamp=10))
    assert tokens(c, token_text("s1", ["b", "c", "d"], timestamp=10)) == ["c", "d"]
    assert tokens(c, token_text("s2", ["x", "y"], timestamp=10)) == ["x", "y"]
    c.ended(DROPPED)

    # Third: it reports 4 and 2; a replay of what it holds already delivers nothing new.
    (resume,) = connect(c)
    held = wire(resume)["payload"]["sessions"]  # type: ignore[index]
    assert [(h["sessionId"], h["tokens"]) for h in held] == [("s1", 4), ("s2", 2)]
    c.receive(snapshot("A", resumed=True, sessions=(row("s1", 4), row("s2", 3)), timestamp=20))
    assert tokens(c, token_text("s2", ["x", "y", "z"], timestamp=20)) == ["z"]
    assert tokens(c, token_text("s1", ["e"], complete=True, timestamp=21)) == ["e"]
    assert c.sessions["s1"].text == "abcde" and c.sessions["s1"].complete
    assert c.sessions["s2"].text == "xyz"
    assert tokens(c, token_text("s1", ["late"], timestamp=22)) is None, "complete: dropped"
    c.ended(DROPPED)

    # Fourth: a complete session is no longer reported as held.
    (resume,) = connect(c)
    held = wire(resume)["payload"]["sessions"]  # type: ignore[index]
    assert [(h["sessionId"], h["tokens"]) for h in held] == [("s2", 3)]


def test_an_event_received_after_the_last_frame_is_not_delivered_again_by_the_resume() -> None:
    """The connection broke between a reward and the frame after it: the server replays
    the reward (its frame is after lastFrame); the client drops what it had."""
    c = core()
    connect(c)
    c.receive(snapshot("A", resumed=False))
    c.receive(frame(42))
    assert c.receive(reward_text("First Light")).event is not None
    c.ended(DROPPED)
    connect(c)
    c.receive(snapshot("A", resumed=True))
    assert c.receive(reward_text("First Light")).event is None, "had it: not twice"
    assert c.receive(reward_text("100 tokens")).event is not None, "missed: delivered"
    assert c.replays_dropped == 1
    c.receive(frame(50))
    assert c.receive(reward_text("First Light")).event is not None, "live: always delivered"


def test_after_a_frame_or_a_fresh_start_nothing_is_dropped() -> None:
    c = core()
    connect(c)
    c.receive(snapshot("A", resumed=False))
    c.receive(reward_text("First Light"))
    c.receive(frame(42))  # the reward came before frame 42: a resume does not replay it
    c.ended(DROPPED)
    connect(c)
    c.receive(snapshot("A", resumed=True))
    assert c.receive(reward_text("First Light")).event is not None
    c.receive(reward_text("Level 2"))
    c.ended(DROPPED)
    connect(c)
    c.receive(snapshot("B", resumed=False, reason="server restarted"))
    assert c.receive(reward_text("Level 2")).event is not None, "another server: its own"
    assert c.replays_dropped == 0


def test_a_new_server_instance_loses_the_held_sessions() -> None:
    c = core()
    connect(c)
    c.receive(snapshot("A", resumed=False))
    c.receive(frame(900))
    tokens(c, token_text("s1", ["half"]))
    c.ended(DROPPED)
    connect(c)
    lost = row("s1", 0, status="unknown", resumable=False)
    c.receive(snapshot("B", resumed=False, sessions=(lost,), reason="server restarted"))
    assert c.lost_sessions == ["s1"] and "s1" not in c.sessions
    assert c.server_instance == "B" and c.last_frame is None


@pytest.mark.parametrize(
    ("failure", "line"),
    [
        (Failure("refused"), "connection refused"),
        (Failure("rejected", 503, "full"), "handshake refused with HTTP 503: full"),
        (Failure("timeout", seconds=5.0), "no handshake within 5.0 s"),
        (Failure("closed", 1011, "oops"), "closed with code 1011: oops"),
        (Failure("closed", 1006), "connection dropped without a close frame (1006)"),
        (Failure("silent", seconds=2.0), "timeout: no message for 2.0 s"),
        (Failure("aborted"), "connection aborted by the client"),
        (Failure("error", detail="boom"), "connection failed: boom"),
    ],
)
def test_each_failure_reads_as_one_line(failure: Failure, line: str) -> None:
    assert failure.describe() == line
