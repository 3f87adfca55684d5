"""The broker's pure parts, without Redis: the address, what travels, the stream's log and
frames across processes (the end-to-end tests are in test_broker_e2e.py)."""

from __future__ import annotations

import time

import pytest
import trio

from wirthforge_trio.broker.entries import (
    Entry,
    Refused,
    cancel_message,
    entry_fields,
    frame_message,
    parse_cancel,
    parse_entry,
    parse_frame,
)
from wirthforge_trio.broker.frames import OutgoingFrame, RemoteFrames
from wirthforge_trio.broker.log import StreamLog
from wirthforge_trio.broker.url import BrokerURLError, parse_broker_url
from wirthforge_trio.config import Settings, SettingsError
from wirthforge_trio.contract.codec import encode
from wirthforge_trio.contract.events import (
    ErrorEvent,
    ErrorPayload,
    Event,
    TokenStream,
    TokenStreamPayload,
)
from wirthforge_trio.engine.clock import FrameClock
from wirthforge_trio.engine.decipher import Retention
from wirthforge_trio.engine.energy import energy_update
from wirthforge_trio.web import create_app


def batch(sid: str, tokens: tuple[str, ...], done: bool = False) -> TokenStream:
    return TokenStream(
        timestamp=1,
        payload=TokenStreamPayload(
            tokens=tokens, is_complete=done, session_id=sid, model_id="demo", energy_cost=0.0
        ),
    )


def error() -> ErrorEvent:
    return ErrorEvent(
        timestamp=1,
        payload=ErrorPayload(severity="error", code="MODEL_ERROR", message="m", component="model"),
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
    entry = parse_entry("1-0", fields)
    assert entry.event == batch("s-1", ("a", "b"), done=True)
    assert (entry.origin, entry.offset, entry.status, entry.interrupted) == (
        "p-1",
        3,
        "failed",
        False,
    )
    assert entry.text == encode(entry.event)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"hello": "world"}, "not a wirthforge entry"),
        ({"v": "1", "o": "bad origin!", "e": "{}"}, "origin"),
        ({"v": "1", "o": "p-x"}, "no event"),
        ({"v": "1", "o": "p-x", "e": "{not json"}, "not a contract event"),
        ({"v": "1", "o": "p-x", "e": encode(energy_update("demo", 1.0, 1, 0.1, 1, 1))}, "frame"),
        ({"v": "1", "o": "p-x", "e": encode(batch("s", ("a",)))}, "offset"),
        ({"v": "1", "o": "p-x", "e": encode(batch("s", (), True)), "n": "0"}, "ended"),
        ({"v": "1", "o": "p-x", "e": b"\xff\xfe"}, "UTF-8"),
        ({"v": "1", "o": "p-x", "e": encode(error())[:-1] + ',"extra":1}'}, "own form"),
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


def entry(n: int, event: Event, offset: int | None = None, status: str | None = None) -> Entry:
    return parse_entry(f"{n}-0", entry_fields("p-1", event, offset=offset, status=status))


def test_the_log_takes_each_batch_once_and_in_order() -> None:
    log = StreamLog(Retention())
    assert log.apply(entry(1, batch("s-1", ("a", "b")), 0), 10, 0.0) == "deliver"
    assert log.apply(entry(2, batch("s-1", ("a", "b")), 0), 11, 0.0) == "duplicate"
    assert log.apply(entry(3, batch("s-1", ("c",), True), 2, "cancelled"), 12, 0.0) == "deliver"
    session = log.sessions["s-1"]
    assert (session.text, session.status, session.first_sent_frame) == ("abc", "cancelled", 11)
    assert session.completion_sent and not log.origin_of
    assert log.apply(entry(4, batch("s-1", ("late",)), 3), 13, 0.0) == "refuse"
    assert log.apply(entry(5, error()), 13, 0.0) == "deliver"
    assert [logged.frame_number for logged in log.history] == [14]


def test_a_gap_or_a_missing_beginning_is_never_offered_for_resuming() -> None:
    log = StreamLog(Retention())
    assert log.apply(entry(1, batch("s-1", ("x",)), 5), 1, 0.0) == "deliver"
    assert "s-1" not in log.sessions and log.origin_of == {"s-1": "p-1"}
    log.apply(entry(2, batch("s-2", ("a",)), 0), 1, 0.0)
    log.apply(entry(3, batch("s-2", ("c",)), 2), 1, 0.0)
    assert "s-2" not in log.sessions, "a token is missing: the text would be wrong"


def test_the_log_keeps_the_servers_retention() -> None:
    log = StreamLog(Retention(sessions=2, events=3, seconds=100.0))
    for i in range(4):
        log.apply(entry(i, batch(f"s-{i}", ("t",), True), 0, "complete"), 1, float(i))
        log.apply(entry(i, error()), 1, float(i))
    log.apply(entry(9, batch("s-live", ("t",)), 0), 1, 4.0)
    log.forget(5.0)
    assert list(log.sessions) == ["s-3", "s-live"], "by count, live ones kept"
    assert len(log.history) == 3
    log.forget(200.0)
    assert list(log.sessions) == ["s-live"] and not log.history, "by age"


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
