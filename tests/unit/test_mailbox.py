"""A connection's outbox: newest-frame slot, lossless FIFO with token-batch merging, heartbeat."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import trio
import trio.testing

from wirthforge_trio.contract.codec import encode
from wirthforge_trio.contract.events import TokenStream, TokenStreamPayload
from wirthforge_trio.transport.mailbox import Frame, Mailbox


def batch(
    session: str,
    tokens: list[str],
    *,
    complete: bool = False,
    cost: float | None = None,
    timestamp: int = 1_000,
    model: str = "demo",
) -> TokenStream:
    return TokenStream(
        timestamp=timestamp,
        payload=TokenStreamPayload(
            tokens=tuple(tokens),
            is_complete=complete,
            session_id=session,
            model_id=model,
            energy_cost=cost,
        ),
    )


def put_batch(mailbox: Mailbox, event: TokenStream) -> None:
    mailbox.put_tokens(event, encode(event))


def take_all(mailbox: Mailbox) -> list[str]:
    out = []
    while (text := mailbox.take_lossless()) is not None:
        out.append(text)
    return out


def payload_of(text: str) -> dict[str, Any]:
    message = json.loads(text)
    assert message["type"] == "token_stream"
    payload: dict[str, Any] = message["payload"]
    return payload


def frame(number: int) -> Frame:
    return Frame(number=number, messages=(("energy", (), f'{{"frameNumber": {number}}}'),))


# -- the frame slot -------------------------------------------------------------------------


def test_only_the_newest_frame_is_kept_and_replacements_are_counted() -> None:
    mailbox = Mailbox()
    assert mailbox.take_frame() is None
    for n in range(1, 6):
        mailbox.offer_frame(frame(n))
    assert mailbox.frames_offered == 5
    assert mailbox.frames_replaced == 4
    taken = mailbox.take_frame()
    assert taken == frame(5)
    assert mailbox.take_frame() is None


def test_a_taken_frame_is_not_counted_as_replaced() -> None:
    mailbox = Mailbox()
    mailbox.offer_frame(frame(1))
    assert mailbox.take_frame() == frame(1)
    mailbox.offer_frame(frame(2))
    assert mailbox.frames_replaced == 0
    mailbox.offer_frame(frame(3))
    assert mailbox.frames_replaced == 1
    assert mailbox.take_frame() == frame(3)
    assert mailbox.frames_offered == 3


def test_frames_do_not_touch_the_lossless_queue() -> None:
    mailbox = Mailbox()
    mailbox.put("a")
    mailbox.offer_frame(frame(1))
    mailbox.offer_frame(frame(2))
    assert mailbox.queued == 1
    assert take_all(mailbox) == ["a"]


# -- the lossless queue ---------------------------------------------------------------------


def test_put_keeps_fifo_order() -> None:
    mailbox = Mailbox()
    assert mailbox.take_lossless() is None
    texts = [f'{{"n": {i}}}' for i in range(20)]
    for text in texts:
        mailbox.put(text)
    assert mailbox.queued == 20
    assert take_all(mailbox) == texts
    assert mailbox.queued == 0


def test_put_and_put_tokens_interleave_in_fifo_order() -> None:
    mailbox = Mailbox()
    first = batch("s1", ["Hel"])
    second = batch("s2", ["Wor"])
    mailbox.put("A")
    put_batch(mailbox, first)
    mailbox.put("B")
    put_batch(mailbox, second)
    mailbox.put("C")
    assert take_all(mailbox) == ["A", encode(first), "B", encode(second), "C"]


def test_a_lone_batch_is_sent_with_its_own_text() -> None:
    mailbox = Mailbox()
    event = batch("s1", ["x"], cost=0.1)
    mailbox.put_tokens(event, "PRE-ENCODED")
    assert mailbox.take_lossless() == "PRE-ENCODED"


def test_waiting_batches_of_one_session_merge() -> None:
    mailbox = Mailbox()
    put_batch(mailbox, batch("s1", ["Light"], cost=0.1, timestamp=1))
    put_batch(mailbox, batch("s1", [" is", " energy"], cost=0.2, timestamp=2))
    put_batch(mailbox, batch("s1", ["."], cost=0.1, complete=True, timestamp=3))
    assert mailbox.queued == 1
    assert mailbox.batches_merged == 2
    (text,) = take_all(mailbox)
    message = json.loads(text)
    assert message["type"] == "token_stream"
    assert message["channel"] == "experience"
    assert message["timestamp"] == 3
    assert message["payload"] == {
        "tokens": ["Light", " is", " energy", "."],
        "isComplete": True,
        "sessionId": "s1",
        "modelId": "demo",
        "energyCost": pytest.approx(0.4),
    }


def test_merged_batch_keeps_is_complete_of_the_last_and_omits_missing_cost() -> None:
    mailbox = Mailbox()
    put_batch(mailbox, batch("s1", ["a"]))
    put_batch(mailbox, batch("s1", ["b"]))
    (text,) = take_all(mailbox)
    payload = payload_of(text)
    assert payload["tokens"] == ["a", "b"]
    assert payload["isComplete"] is False
    assert "energyCost" not in payload


def test_merged_cost_counts_a_batch_without_cost_as_zero() -> None:
    mailbox = Mailbox()
    put_batch(mailbox, batch("s1", ["a"]))
    put_batch(mailbox, batch("s1", ["b", "c"], cost=0.2))
    put_batch(mailbox, batch("s1", ["d"], cost=0.1))
    (text,) = take_all(mailbox)
    assert payload_of(text)["energyCost"] == pytest.approx(0.3)


def test_a_lossless_message_seals_earlier_batches() -> None:
    mailbox = Mailbox()
    put_batch(mailbox, batch("s1", ["one"]))
    mailbox.put("ERROR")
    put_batch(mailbox, batch("s1", ["two"]))
    assert mailbox.queued == 3
    first, middle, last = take_all(mailbox)
    assert payload_of(first)["tokens"] == ["one"]
    assert middle == "ERROR"
    assert payload_of(last)["tokens"] == ["two"]


def test_batches_of_different_sessions_do_not_merge_into_each_other() -> None:
    mailbox = Mailbox()
    put_batch(mailbox, batch("s1", ["a1"]))
    put_batch(mailbox, batch("s2", ["b1"]))
    put_batch(mailbox, batch("s1", ["a2"]))
    put_batch(mailbox, batch("s2", ["b2"], complete=True))
    assert mailbox.queued == 2
    payloads = [payload_of(t) for t in take_all(mailbox)]
    by_session = {p["sessionId"]: p for p in payloads}
    assert by_session["s1"]["tokens"] == ["a1", "a2"]
    assert by_session["s1"]["isComplete"] is False
    assert by_session["s2"]["tokens"] == ["b1", "b2"]
    assert by_session["s2"]["isComplete"] is True
    assert [p["sessionId"] for p in payloads] == ["s1", "s2"]


def test_a_batch_taken_by_the_writer_is_not_merged_into() -> None:
    mailbox = Mailbox()
    put_batch(mailbox, batch("s1", ["a"]))
    first = mailbox.take_lossless()
    assert first is not None
    put_batch(mailbox, batch("s1", ["b"]))
    put_batch(mailbox, batch("s1", ["c"]))
    assert mailbox.queued == 1
    (second,) = take_all(mailbox)
    assert payload_of(first)["tokens"] == ["a"]
    assert payload_of(second)["tokens"] == ["b", "c"]


def test_a_completed_batch_is_not_merged_into() -> None:
    mailbox = Mailbox()
    put_batch(mailbox, batch("s1", ["end"], complete=True))
    put_batch(mailbox, batch("s1", ["late"]))
    assert mailbox.queued == 2
    first, second = take_all(mailbox)
    assert payload_of(first)["tokens"] == ["end"]
    assert payload_of(first)["isComplete"] is True
    assert payload_of(second)["tokens"] == ["late"]


def test_ten_thousand_batches_of_one_session_stay_one_message() -> None:
    mailbox = Mailbox()
    tokens = [f"t{i} " for i in range(10_000)]
    started = time.perf_counter()
    for token in tokens:
        put_batch(mailbox, batch("s1", [token], cost=0.1))
    assert mailbox.queued == 1
    assert mailbox.batches_merged == 9_999
    (text,) = take_all(mailbox)
    payload = payload_of(text)
    assert "".join(payload["tokens"]) == "".join(tokens)
    assert payload["energyCost"] == pytest.approx(1000.0)
    assert time.perf_counter() - started < 3.0


# -- the heartbeat slot ---------------------------------------------------------------------


def test_heartbeat_slot_keeps_only_the_latest() -> None:
    mailbox = Mailbox()
    assert mailbox.take_heartbeat() is None
    mailbox.set_heartbeat("hb-0")
    mailbox.set_heartbeat("hb-1")
    mailbox.set_heartbeat("hb-2")
    assert mailbox.queued == 0
    assert mailbox.take_heartbeat() == "hb-2"
    assert mailbox.take_heartbeat() is None
    assert mailbox.take_lossless() is None


# -- waking the writer ----------------------------------------------------------------------

OFFERS = {
    "put": lambda m: m.put("x"),
    "put_tokens": lambda m: put_batch(m, batch("s1", ["x"])),
    "offer_frame": lambda m: m.offer_frame(frame(1)),
    "set_heartbeat": lambda m: m.set_heartbeat("hb"),
    "wake": lambda m: m.wake(),
}


@pytest.mark.parametrize("offer", sorted(OFFERS))
async def test_wait_returns_when_something_is_offered(offer: str) -> None:
    mailbox = Mailbox()
    woke = trio.Event()

    async def writer() -> None:
        await mailbox.wait()
        woke.set()

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()  # nothing to send yet: the writer sleeps
            OFFERS[offer](mailbox)
            await woke.wait()


async def test_wait_returns_at_once_when_something_was_offered_before() -> None:
    mailbox = Mailbox()
    mailbox.put("early")
    with trio.fail_after(1):
        await mailbox.wait()
    assert mailbox.take_lossless() == "early"


async def test_wait_sleeps_again_once_the_wake_up_was_consumed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox = Mailbox()
    mailbox.put("a")
    with trio.fail_after(1):
        await mailbox.wait()
    assert take_all(mailbox) == ["a"]
    with trio.move_on_after(5) as scope:
        await mailbox.wait()
    assert scope.cancelled_caught  # nothing new was offered (virtual time)
