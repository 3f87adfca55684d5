"""The broker's pure parts, without Redis: the address, what travels, the stream's log and
frames across processes (the end-to-end tests are in test_broker_e2e.py)."""

from __future__ import annotations

import time

import pytest
import trio

from tests.support.events import error_event, reward_event
from wirthforge_trio.broker.entries import (
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
from wirthforge_trio.broker.frames import OutgoingFrame, RemoteFrames
from wirthforge_trio.broker.log import StreamLog
from wirthforge_trio.broker.node import HOLD_LIMIT, RELEASE_LAG, BrokerNode
from wirthforge_trio.broker.url import BrokerURLError, parse_broker_url
from wirthforge_trio.config import Settings, SettingsError
from wirthforge_trio.contract.codec import encode
from wirthforge_trio.contract.events import (
    Event,
    InterferenceEvent,
    InterferencePayload,
    ModelStatus,
    ModelStatusPayload,
    ResumePayload,
    TokenStream,
    TokenStreamPayload,
)
from wirthforge_trio.engine.clock import FrameClock
from wirthforge_trio.engine.decipher import Retention
from wirthforge_trio.engine.energy import energy_update
from wirthforge_trio.transport.hub import Hub
from wirthforge_trio.web import create_app


def batch(sid: str, tokens: tuple[str, ...], done: bool = False) -> TokenStream:
    return TokenStream(
        timestamp=1,
        payload=TokenStreamPayload(
            tokens=tokens, is_complete=done, session_id=sid, model_id="demo", energy_cost=0.0
        ),
    )


# -- the address -------------------------------------------------------------------------------


def test_the_password_is_hidden_wherever_the_address_is_shown() -> None:
    url = parse_broker_url("redis://user:hunter2-secret@10.0.0.5:6380/2")
    assert (url.host, url.port, url.db) == ("10.0.0.5", 6380, 2)
    assert url.redacted == "redis://***@10.0.0.5:6380/2"
    for shown in (str(url), repr(url), repr(Settings(broker=url.url))):
        assert "hunter2" not in shown and "user" not in shown
    assert parse_broker_url("redis://localhost").redacted == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://:pw-secret@h:1", "must start with redis://"),
        ("redis://:pw-secret@:6379", "names no host"),
        ("redis://:pw-secret@h:1/x", "database must be a number"),
        ("redis://:pw-secret@h:99999", "not a valid URL"),
        ("redis://:pw-secret@h:1?db=2", "no ?query"),
    ],
)
def test_a_bad_address_names_the_fix_without_the_password(url: str, says: str) -> None:
    with pytest.raises(BrokerURLError) as caught:
        parse_broker_url(url)
    assert says in str(caught.value) and "WIRTHFORGE_BROKER" in str(caught.value)
    assert "pw-secret" not in str(caught.value)
    with pytest.raises(SettingsError, match="WIRTHFORGE_BROKER") as caught_at_start:
        create_app(Settings.from_env({"WIRTHFORGE_BROKER": url}))
    assert "pw-secret" not in str(caught_at_start.value)


# -- what travels ------------------------------------------------------------------------------


def test_an_entry_comes_back_as_it_was_written() -> None:
    fields = entry_fields("p-1", batch("s-1", ("a", "b"), done=True), offset=3, status="failed")
    entry = parse_entry("1-0", stamped(fields, 42))
    assert entry.event == batch("s-1", ("a", "b"), done=True)
    assert (entry.origin, entry.offset, entry.status, entry.interrupted, entry.written_frame) == (
        "p-1",
        3,
        "failed",
        False,
        42,
    )
    assert entry.text == encode(entry.event)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"hello": "world"}, "not a wirthforge entry"),
        ({"v": "1", "o": "p-x", "f": "1", "e": encode(error_event())}, "not a wirthforge entry"),
        ({"v": "2", "o": "bad origin!", "f": "1", "e": "{}"}, "origin"),
        ({"v": "2", "o": "p-x", "e": encode(error_event())}, "frame it was written at"),
        ({"v": "2", "o": "p-x", "f": "-1", "e": encode(error_event())}, "frame it was written at"),
        ({"v": "2", "o": "p-x", "f": "1"}, "no event"),
        ({"v": "2", "o": "p-x", "f": "1", "e": "{not json"}, "not a contract event"),
        (
            {"v": "2", "o": "p-x", "f": "1", "e": encode(energy_update("demo", 1.0, 1, 0.1, 1, 1))},
            "frame",
        ),
        ({"v": "2", "o": "p-x", "f": "1", "e": encode(batch("s", ("a",)))}, "offset"),
        ({"v": "2", "o": "p-x", "f": "1", "e": encode(batch("s", (), True)), "n": "0"}, "ended"),
        ({"v": "2", "o": "p-x", "f": "1", "e": b"\xff\xfe"}, "UTF-8"),
        (
            {"v": "2", "o": "p-x", "f": "1", "e": encode(error_event())[:-1] + ',"extra":1}'},
            "own form",
        ),
    ],
)
def test_foreign_entries_are_refused_with_the_reason(fields: dict[str, object], says: str) -> None:
    with pytest.raises(Refused, match=says):
        parse_entry("1-0", fields)


def test_frames_and_cancels_round_trip_and_garbage_is_refused() -> None:
    update = energy_update("demo", 2.0, 3, 0.1, 7, 1)
    assert parse_frame(frame_message("p-1", [encode(update)])) == ("p-1", [update])
    assert parse_cancel(cancel_message("p-1", "s-abc")) == "s-abc"
    for garbage in (b"\xff", b"[]", b'{"v": "1", "o": "p-1", "f": ["{}"]}', 42):
        with pytest.raises(Refused):
            parse_frame(garbage)
    with pytest.raises(Refused, match="does not travel in frames"):
        parse_frame(frame_message("p-1", [encode(batch("s", ("a",)))]))
    with pytest.raises(Refused):
        parse_cancel(b'{"v": "1", "s": 42}')


# -- the stream's log --------------------------------------------------------------------------


def entry(
    n: int, event: Event, offset: int | None = None, status: str | None = None, frame: int = 0
) -> Entry:
    fields = entry_fields("p-1", event, offset=offset, status=status)
    return parse_entry(f"{n}-0", stamped(fields, frame))


def apply(log: StreamLog, written: Entry, seen_by: int, now: float) -> str:
    return log.apply(written, written.event, seen_by, now)


def test_the_log_takes_each_batch_once_and_in_order() -> None:
    log = StreamLog(Retention())
    assert apply(log, entry(1, batch("s-1", ("a", "b")), 0), 11, 0.0) == "deliver"
    assert apply(log, entry(2, batch("s-1", ("a", "b")), 0), 11, 0.0) == "duplicate"
    assert apply(log, entry(3, batch("s-1", ("c",), True), 2, "cancelled"), 12, 0.0) == "deliver"
    session = log.sessions["s-1"]
    assert (session.text, session.status, session.first_sent_frame) == ("abc", "cancelled", 11)
    assert session.completion_sent and not log.origin_of
    assert apply(log, entry(4, batch("s-1", ("late",)), 3), 13, 0.0) == "refuse"
    assert apply(log, entry(5, error_event()), 14, 0.0) == "deliver"
    assert [logged.frame_number for logged in log.history] == [14]


def test_model_status_is_sent_but_not_kept_for_resuming_as_in_one_process() -> None:
    log = StreamLog(Retention())
    status = ModelStatus(
        timestamp=1,
        payload=ModelStatusPayload(
            model_id="demo", name="qwen3", status="unavailable", source="ollama"
        ),
    )
    assert apply(log, entry(1, status), 5, 0.0) == "deliver"
    assert not log.history


def test_a_gap_or_a_missing_beginning_is_never_offered_for_resuming() -> None:
    log = StreamLog(Retention())
    assert apply(log, entry(1, batch("s-1", ("x",)), 5), 1, 0.0) == "deliver"
    assert "s-1" not in log.sessions and log.origin_of == {"s-1": "p-1"}
    apply(log, entry(2, batch("s-2", ("a",)), 0), 1, 0.0)
    apply(log, entry(3, batch("s-2", ("c",)), 2), 1, 0.0)
    assert "s-2" not in log.sessions, "a token is missing: the text would be wrong"


def test_the_log_keeps_the_servers_retention() -> None:
    log = StreamLog(Retention(sessions=2, events=3, seconds=100.0))
    for i in range(4):
        apply(log, entry(i, batch(f"s-{i}", ("t",), True), 0, "complete"), 1, float(i))
        apply(log, entry(i, error_event()), 1, float(i))
    apply(log, entry(9, batch("s-live", ("t",)), 0), 1, 4.0)
    log.forget(5.0)
    assert list(log.sessions) == ["s-3", "s-live"], "by count, live ones kept"
    assert len(log.history) == 3
    log.forget(200.0)
    assert list(log.sessions) == ["s-live"] and not log.history, "by age"


# -- the frame a lossless event goes with ------------------------------------------------------


class RecordingHub(Hub):
    """A hub that keeps what it was given to send, with the frame last sent at the time."""

    def __init__(self, frame: list[int]) -> None:
        super().__init__()
        self.frame = frame
        self.sent: list[tuple[int, Event]] = []

    def publish(self, event: Event, text: str | None = None) -> None:
        assert text == encode(event), "the text sent is the event's own"
        self.sent.append((self.frame[0], event))


def process_at(frame: list[int]) -> tuple[BrokerNode, RecordingHub]:
    """A broker node whose clock has last sent ``frame[0]`` (no Redis: fed by hand)."""
    node = BrokerNode(parse_broker_url("redis://localhost"), Retention())
    node.hub = hub = RecordingHub(frame)
    node.frame_number = lambda: frame[0]
    return node, hub


def council(frame: int) -> InterferenceEvent:
    return InterferenceEvent(
        timestamp=1,
        frame_number=frame,
        payload=InterferencePayload(
            pattern_type="constructive", models=("a", "b"), intensity=0.5, coherence_score=0.5
        ),
    )


def tick(node: BrokerNode, frame: list[int], number: int) -> None:
    """What the publisher does each tick: release, then the frame goes out."""
    node.release(number)
    frame[0] = number


def fields_of(
    event: Event, frame: int, offset: int | None = None, status: str | None = None
) -> dict[str, str]:
    return stamped(entry_fields("p-origin", event, offset=offset, status=status), frame)


async def test_two_processes_reading_either_side_of_a_frame_send_and_log_alike() -> None:
    """The event is due RELEASE_LAG frames after it was written, on every process, whenever
    each read it: so a client's lastFrame means the same events on each."""
    logged = []
    for read_at in (100, 101):  # A reads before its tick 101, B just after it
        frame = [read_at]
        node, hub = process_at(frame)
        node.read_entry("1-0", fields_of(council(100), 100), deliver=True)
        node.read_entry("1-1", fields_of(error_event(), 100), deliver=True)
        tick(node, frame, 101)
        assert hub.sent == [], "not due yet"
        while frame[0] < 100 + RELEASE_LAG:
            tick(node, frame, frame[0] + 1)
        assert [event.TYPE for _, event in hub.sent] == ["error_event", "interference_event"], (
            "a council event, which carries the frame number, goes after the frame's others"
        )
        assert {at for at, _ in hub.sent} == {100 + RELEASE_LAG - 1}, "sent just before the frame"
        assert isinstance(hub.sent[1][1], InterferenceEvent)
        assert hub.sent[1][1].frame_number == 100 + RELEASE_LAG, "renumbered to its frame"
        logged.append([(h.frame_number, h.event) for h in node.log.history])
        assert node.late == 0 and not node.held
    assert logged[0] == logged[1]
    assert [frame for frame, _ in logged[0]] == [100 + RELEASE_LAG] * 2


async def test_tokens_go_at_once_but_never_ahead_of_a_held_error() -> None:
    frame = [100]
    node, hub = process_at(frame)
    node.read_entry("1-0", fields_of(batch("s-1", ("a",)), 100, offset=0), deliver=True)
    assert [e.TYPE for _, e in hub.sent] == ["token_stream"], "a token batch is not held"
    assert node.log.sessions["s-1"].first_sent_frame == 101
    node.read_entry("2-0", fields_of(error_event(), 100), deliver=True)
    node.read_entry("2-1", fields_of(batch("s-1", ("b",), True), 100, 1, "complete"), deliver=True)
    assert len(hub.sent) == 1, "the session's error comes before its last batch"
    for number in range(101, 100 + RELEASE_LAG):
        tick(node, frame, number)
    assert len(hub.sent) == 1
    tick(node, frame, 100 + RELEASE_LAG)
    assert [e.TYPE for _, e in hub.sent] == ["token_stream", "error_event", "token_stream"]
    assert node.log.sessions["s-1"].text == "ab" and node.log.sessions["s-1"].completion_sent


async def test_a_session_keeps_its_token_order_behind_held_events() -> None:
    """An error held, then a reward due a frame later, then two batches of one session: the
    second batch, read once the error has gone, still waits for the first."""
    frame = [100]
    node, hub = process_at(frame)
    node.read_entry("1-0", fields_of(batch("s-1", ("a",)), 100, offset=0), deliver=True)
    node.read_entry("2-0", fields_of(error_event(), 100), deliver=True)
    node.read_entry("2-1", fields_of(reward_event(), 101), deliver=True)
    node.read_entry("2-2", fields_of(batch("s-1", ("b",)), 101, offset=1), deliver=True)
    for number in range(101, 101 + RELEASE_LAG):  # the error goes; the reward is due after
        tick(node, frame, number)
    assert [e.TYPE for _, e in hub.sent] == ["token_stream", "error_event"]
    node.read_entry("3-0", fields_of(batch("s-1", ("c",)), 102, offset=2), deliver=True)
    tick(node, frame, 101 + RELEASE_LAG)
    assert [e.TYPE for _, e in hub.sent] == [
        "token_stream",
        "error_event",
        "reward_event",
        "token_stream",
        "token_stream",
    ]
    assert node.log.sessions["s-1"].text == "abc", "in order, no gap"
    assert not node.held


async def test_a_frame_this_clock_skipped_does_not_make_an_event_read_in_time_late() -> None:
    """The event is due with frame D; this process read it before, then its clock, running
    late, went from D - 1 to D + 1: it goes with D + 1 but is logged at D, as everywhere (no
    client here saw a frame D)."""
    due = 100 + RELEASE_LAG
    frame = [100]
    node, hub = process_at(frame)
    node.read_entry("1-0", fields_of(error_event(), 100), deliver=True)
    node.read_entry("1-1", fields_of(council(100), 100), deliver=True)
    for number in range(101, due):
        tick(node, frame, number)
    tick(node, frame, due + 1)
    assert [at for at, _ in hub.sent] == [due - 1] * 2, "sent just before frame D + 1"
    assert [h.frame_number for h in node.log.history] == [due, due]
    sent_council = hub.sent[1][1]
    assert isinstance(sent_council, InterferenceEvent) and sent_council.frame_number == due
    assert node.late == 0


async def test_an_event_written_at_an_earlier_frame_after_another_goes_with_it() -> None:
    """Two origins' clocks differ a little: an entry stamped 99 after one stamped 100 goes
    with the same frame as the one before it, on every process, and is logged there."""
    frame = [100]
    node, hub = process_at(frame)
    node.read_entry("1-0", fields_of(error_event(1), 100), deliver=True)
    node.read_entry("1-1", fields_of(error_event(2), 99), deliver=True)
    for number in range(101, 100 + RELEASE_LAG):
        tick(node, frame, number)
    assert hub.sent == [], "never ahead of the entry before it"
    tick(node, frame, 100 + RELEASE_LAG)
    assert [e.timestamp for _, e in hub.sent] == [1, 2]
    assert [h.frame_number for h in node.log.history] == [100 + RELEASE_LAG] * 2
    assert node.late == 0


async def test_an_event_read_after_its_frame_goes_with_the_next_and_is_counted_late(
    caplog: pytest.LogCaptureFixture,
) -> None:
    read_at = 100 + RELEASE_LAG + 1  # the frame it was due with went before it was read
    frame = [read_at]
    node, hub = process_at(frame)
    node.read_entry("1-0", fields_of(error_event(), 100), deliver=True)
    assert hub.sent == []
    tick(node, frame, read_at + 1)
    assert [at for at, _ in hub.sent] == [read_at]
    assert [h.frame_number for h in node.log.history] == [read_at + 1], "what its clients saw"
    assert node.late == 1 and "after the frame it was due with" in caplog.text


def test_new_prompts_wait_for_redis_only_once_the_held_events_reach_the_limit() -> None:
    node, _ = process_at([0])
    node.status = "down"
    for _ in range(HOLD_LIMIT - 1):
        node.send(error_event())
    assert not node.full, "a prompt during an outage is held, then written"
    node.send(error_event())
    assert node.full and node.waiting == HOLD_LIMIT
    node.status = "up"
    assert not node.full, "Redis is back: the writer drains what is held"


async def test_a_reward_another_process_paid_is_told_to_this_processs_ledger() -> None:
    node, _ = process_at([100])
    titles: list[str] = []
    node.reward_seen = titles.append
    node.read_entry("1-0", fields_of(reward_event(), 100), deliver=False)
    node.read_entry("2-0", fields_of(reward_event(), 100), deliver=True)
    own = stamped(entry_fields(node.origin, reward_event()), 100)
    node.read_entry("3-0", own, deliver=True)
    node.release(100 + RELEASE_LAG)
    assert titles == ["First Light", "First Light"], "the other process's, not its own"


async def test_a_resume_waits_for_the_clients_last_frame_and_no_longer(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The client saw frame 105 on another process: frames up to it must have gone here too
    before its catch-up is computed (else an event due with them would come twice)."""
    node, _ = process_at([100])
    node.cluster_id = "c-1"
    start = trio.current_time()
    await node.ready_for(ResumePayload(server_instance="c-1", last_frame=105))
    assert trio.current_time() - start >= 5 / 60
    start = trio.current_time()
    await node.ready_for(ResumePayload(server_instance="c-1", last_frame=100 + 600))
    await node.ready_for(ResumePayload(server_instance="c-other", last_frame=105))
    await node.ready_for(ResumePayload(server_instance="c-1", last_frame=90))
    assert trio.current_time() == start, "no frame of this clock, another cluster, or behind"


async def test_entries_read_at_start_up_are_logged_by_their_frame_and_not_sent() -> None:
    frame = [-1]
    node, hub = process_at(frame)
    node.read_entry("1-0", fields_of(batch("s-1", ("a",)), 50, offset=0), deliver=False)
    node.read_entry("1-1", fields_of(error_event(), 50), deliver=False)
    assert hub.sent == [] and not node.held
    assert node.log.sessions["s-1"].first_sent_frame == 51
    assert [h.frame_number for h in node.log.history] == [50 + RELEASE_LAG]


# -- frames across processes -------------------------------------------------------------------


def message(model_id: str, total: float, frame: int) -> tuple[str, tuple[str, ...], str]:
    event = energy_update(model_id, total, 0, 0.1, frame, 1)
    return event.CHANNEL, (model_id,), encode(event)


def test_remote_energy_replaces_the_idle_view_latest_wins_renumbered() -> None:
    remote = RemoteFrames(fresh_for=1.0)
    remote.offer([energy_update("demo", 1.0, 1, 0.1, 500, 1)], now=0.0)
    remote.offer([energy_update("demo", 2.0, 1, 0.1, 501, 1)], now=0.0)  # newer, same key
    merged = remote.merge(42, [message("demo", 0.0, 42), message("other", 0.0, 42)], (), 0.1)
    texts = [text for _, _, text in merged]
    assert len(texts) == 2 and '"totalEnergy":0.0' not in texts[1]
    assert '"modelId":"other"' in texts[0] and '"totalEnergy":2.0' in texts[1]
    assert all('"frameNumber":42' in text for text in texts), "this process's numbering"
    assert remote.superseded == 1
    again = remote.merge(43, [message("demo", 0.0, 43)], (), 0.2)
    assert again == [], "covered, nothing new: the client keeps the last energy"
    assert remote.merge(44, [message("demo", 0.0, 44)], (), 2.0) == [message("demo", 0.0, 44)]


def test_a_model_this_process_lights_keeps_its_own_energy() -> None:
    remote = RemoteFrames()
    remote.offer([energy_update("demo", 9.0, 1, 0.1, 5, 1)], now=0.0)
    mine = message("demo", 1.0, 6)
    assert remote.merge(6, [mine], {"demo"}, 0.0) == [mine]


def test_the_origin_publishes_only_its_lit_models() -> None:
    outgoing = OutgoingFrame()
    assert not outgoing.offer([energy_update("idle", 0.0, 0, 0.1, 1, 1)], frozenset({"demo"}))
    assert outgoing.offer([energy_update("demo", 1.0, 1, 0.1, 1, 1)], frozenset({"demo"}))
    assert len(outgoing.take()) == 1 and outgoing.take() == []


# -- one frame numbering for the cluster -------------------------------------------------------


async def test_clocks_sharing_an_epoch_share_frame_numbers() -> None:
    epoch = time.time_ns() - 3_600 * 1_000_000_000  # an hour ago
    seen: list[tuple[int, int]] = []

    async def one() -> None:
        clock = FrameClock(60.0)
        clock.epoch_ns = epoch
        with trio.CancelScope() as scope:

            def tick(number: int, _: float) -> None:
                seen.append((number, time.time_ns()))
                scope.cancel()

            await clock.run(tick)

    await one()
    await trio.sleep(0.05)
    await one()
    for number, at in seen:
        expected = (at - epoch) * 60 / 1e9
        assert abs(number - expected) < 2, "frame n is due n periods after the epoch"
    assert seen[1][0] > seen[0][0] >= 60 * 3_599


def test_a_store_beside_a_broker_is_refused() -> None:
    with pytest.raises(SettingsError, match="Redis is the resume log"):
        Settings(broker="redis://127.0.0.1:6379", store="sqlite:/tmp/never.db")
