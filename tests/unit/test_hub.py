"""The hub's promise: each frame and event is encoded once, whatever the number of clients,
and not at all when nobody is connected; publishing never waits for a client."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.support.events import frame_event
from wirthforge_trio.contract import codec
from wirthforge_trio.contract.events import (
    RewardEvent,
    RewardPayload,
    TokenStream,
    TokenStreamPayload,
)
from wirthforge_trio.protocol.connection import ConnectionProtocol
from wirthforge_trio.transport import hub as hub_module
from wirthforge_trio.transport.connection import Connection
from wirthforge_trio.transport.heartbeats import HeartbeatSweep
from wirthforge_trio.transport.hub import Hub


class NeverUsedSocket:
    async def send(self, data: str) -> None:  # pragma: no cover - the writer is not running
        raise AssertionError("publishing must not send")

    async def receive(self) -> str:  # pragma: no cover
        raise AssertionError

    async def close(self, code: int, reason: str = "") -> None:  # pragma: no cover
        raise AssertionError


def connection(name: str) -> Connection:
    protocol = ConnectionProtocol(name, max_message_bytes=1024, heartbeat_timeout=10)
    return Connection(
        NeverUsedSocket(),
        protocol,
        remote="test",
        heartbeats=HeartbeatSweep(1.0),
        frame_rate=lambda: 60.0,
    )


def tokens(session: str, *texts: str, done: bool = False) -> TokenStream:
    return TokenStream(
        timestamp=1,
        payload=TokenStreamPayload(
            tokens=texts, is_complete=done, session_id=session, model_id="demo"
        ),
    )


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def counting_encode(event: Any) -> str:
        calls.append(event.TYPE)
        return codec.encode(event)

    monkeypatch.setattr(hub_module, "encode", counting_encode)
    return calls


async def test_nothing_is_encoded_without_clients(encodes: list[str]) -> None:
    hub = Hub()
    for n in range(100):
        hub.publish_frame(n, [frame_event(n)])
    hub.publish(tokens("s-1", "a"))
    assert encodes == []
    assert hub.frames_published == 0


async def test_each_frame_is_encoded_once_for_all_clients(encodes: list[str]) -> None:
    hub = Hub()
    clients = [connection(f"c-{i}") for i in range(50)]
    for c in clients:
        hub.add(c)
    for n in range(10):
        hub.publish_frame(n, [frame_event(n)])
    hub.publish(tokens("s-1", "a"))
    assert encodes == ["energy_update"] * 10 + ["token_stream"]
    # Nobody took a frame: each slot holds the newest and counted nine replaced.
    assert all(c.mailbox.frames_replaced == 9 for c in clients)
    assert hub.frames_replaced == 9 * 50
    newest = clients[0].mailbox.take_frame()
    assert newest is not None and newest.number == 9
    # The very same text object is shared by every connection.
    texts = {id(c.mailbox.take_lossless()) for c in clients}
    assert len(texts) == 1


async def test_subscriptions_filter_lossless_events() -> None:
    hub = Hub()
    listening, deaf = connection("c-a"), connection("c-b")
    deaf.protocol.subscriptions.discard("reward")
    hub.add(listening)
    hub.add(deaf)
    hub.publish(
        RewardEvent(
            timestamp=1,
            payload=RewardPayload(reward_type="milestone", title="First light", points=1),
        )
    )
    assert listening.mailbox.queued == 1
    assert deaf.mailbox.queued == 0


async def test_close_all_waits_until_connections_are_gone() -> None:
    hub = Hub()
    a = connection("c-a")
    hub.add(a)

    async def leave_soon() -> None:
        await trio.sleep(0.05)
        hub.remove(a)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leave_soon)
        with trio.fail_after(2):
            await hub.close_all(1001, "bye")
    assert len(hub) == 0
