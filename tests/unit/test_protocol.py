"""The sans-IO connection rules (replies, subscriptions, heartbeats, limits), origin guard."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from tests.support.paths import PUBLISHED_SCHEMA
from wirthforge_trio.contract.codec import encode
from wirthforge_trio.contract.events import CHANNELS, ErrorEvent, Heartbeat, Pong, Subscriptions
from wirthforge_trio.protocol.connection import (
    CLOSE_TOO_BIG,
    Close,
    ConnectionProtocol,
    Join,
    Reply,
)
from wirthforge_trio.protocol.origin import ServerNames, origin_allowed, split_host

WALL = 1_726_000_000_000
TIMEOUT = 10.0


def make(max_message_bytes: int = 4096) -> ConnectionProtocol:
    return ConnectionProtocol(
        "c-test", max_message_bytes=max_message_bytes, heartbeat_timeout=TIMEOUT
    )


def send(proto: ConnectionProtocol, message: Any, now: float = 1.0) -> list[Reply | Close]:
    text = message if isinstance(message, str | bytes) else json.dumps(message)
    return proto.receive(text, now, WALL)


def only_event(actions: list[Reply | Close]) -> Any:
    assert len(actions) == 1, actions
    (action,) = actions
    assert isinstance(action, Reply)
    return action.event


def subscribed(proto: ConnectionProtocol) -> list[str]:
    return [c for c in CHANNELS if proto.wants(c)]


@pytest.fixture(scope="module")
def published() -> jsonschema.Draft7Validator:
    if not PUBLISHED_SCHEMA.exists():
        pytest.skip(f"published contract not found at {PUBLISHED_SCHEMA}")
    return jsonschema.Draft7Validator(json.loads(PUBLISHED_SCHEMA.read_text(encoding="utf-8")))


# -- ping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [{"id": 7, "sentAt": 1234.5}, {}, {"nested": {"list": [1, "two", None]}}]
)
def test_ping_gets_a_pong_with_the_same_payload(payload: dict[str, Any]) -> None:
    proto = make()
    event = only_event(send(proto, {"type": "ping", "payload": payload}))
    assert isinstance(event, Pong)
    assert event.payload == payload
    assert event.timestamp == WALL
    wire = json.loads(encode(event))
    assert wire == {"type": "pong", "channel": "system", "timestamp": WALL, "payload": payload}


def test_ping_without_payload_gets_an_empty_pong() -> None:
    event = only_event(send(make(), {"type": "ping"}))
    assert isinstance(event, Pong)
    assert event.payload == {}


# -- subscriptions --------------------------------------------------------------------------


def test_a_new_connection_wants_every_channel() -> None:
    proto = make()
    assert subscribed(proto) == list(CHANNELS)
    assert not proto.wants("bogus")


def test_unsubscribe_and_subscribe_change_wants_and_reply_in_channel_order() -> None:
    proto = make()
    event = only_event(
        send(proto, {"type": "unsubscribe", "payload": {"channels": ["reward", "energy"]}})
    )
    assert isinstance(event, Subscriptions)
    assert event.payload.channels == ("experience", "council", "system")
    assert not proto.wants("energy")
    assert not proto.wants("reward")
    assert proto.wants("experience")
    assert proto.wants("system")

    event = only_event(send(proto, {"type": "subscribe", "payload": {"channels": ["reward"]}}))
    assert isinstance(event, Subscriptions)
    assert event.payload.channels == ("experience", "council", "reward", "system")
    assert proto.wants("reward")
    assert not proto.wants("energy")

    # requested out of order, answered in the contract's channel order
    event = only_event(
        send(proto, {"type": "subscribe", "payload": {"channels": ["reward", "energy"]}})
    )
    assert event.payload.channels == CHANNELS
    wire = json.loads(encode(event))
    assert wire["type"] == "subscriptions"
    assert wire["channel"] == "system"
    assert wire["payload"] == {"channels": list(CHANNELS)}


def test_subscribing_again_and_unsubscribing_twice_are_harmless() -> None:
    proto = make()
    event = only_event(send(proto, {"type": "subscribe", "payload": {"channels": ["energy"]}}))
    assert event.payload.channels == CHANNELS
    send(proto, {"type": "unsubscribe", "payload": {"channels": ["council"]}})
    event = only_event(send(proto, {"type": "unsubscribe", "payload": {"channels": ["council"]}}))
    assert event.payload.channels == ("energy", "experience", "reward", "system")


def test_unknown_channel_is_refused_without_any_change() -> None:
    proto = make()
    send(proto, {"type": "unsubscribe", "payload": {"channels": ["energy"]}})
    before = subscribed(proto)
    event = only_event(
        send(proto, {"type": "subscribe", "payload": {"channels": ["energy", "weather"]}})
    )
    assert isinstance(event, ErrorEvent)
    assert event.payload.code == "UNKNOWN_CHANNEL"
    assert "weather" in event.payload.message
    assert event.payload.component == "websocket"
    assert subscribed(proto) == before  # 'energy' was not added either
    event = only_event(
        send(proto, {"type": "unsubscribe", "payload": {"channels": ["council", "weather"]}})
    )
    assert event.payload.code == "UNKNOWN_CHANNEL"
    assert subscribed(proto) == before


@pytest.mark.parametrize("channels", [["system"], ["energy", "system"]])
def test_the_system_channel_cannot_be_left(channels: list[str]) -> None:
    proto = make()
    event = only_event(send(proto, {"type": "unsubscribe", "payload": {"channels": channels}}))
    assert isinstance(event, ErrorEvent)
    assert event.payload.code == "CHANNEL_REQUIRED"
    assert "system" in event.payload.message
    assert event.payload.recoverable is True
    assert subscribed(proto) == list(CHANNELS)


# -- heartbeats -----------------------------------------------------------------------------


def test_heartbeat_sequence_increases_from_zero_and_names_the_connection() -> None:
    proto = make()
    beats = [
        proto.heartbeat(now=float(i), wall_ms=WALL + 1000 * i, frame_rate=59.987) for i in range(5)
    ]
    assert [b.payload.sequence for b in beats] == [0, 1, 2, 3, 4]
    for i, beat in enumerate(beats):
        assert isinstance(beat, Heartbeat)
        assert beat.payload.connection_id == "c-test"
        assert beat.payload.server_time == WALL + 1000 * i
        assert beat.timestamp == WALL + 1000 * i
        assert beat.payload.frame_rate == pytest.approx(59.99)
    wire = json.loads(encode(beats[2]))
    assert wire["type"] == "heartbeat"
    assert wire["channel"] == "system"
    assert wire["payload"]["sequence"] == 2
    assert wire["payload"]["serverTime"] == WALL + 2000
    assert wire["payload"]["connectionId"] == "c-test"


def test_heartbeats_validate_against_published_schema(
    published: jsonschema.Draft7Validator,
) -> None:
    proto = make()
    for i in range(3):
        beat = proto.heartbeat(now=float(i), wall_ms=WALL + i, frame_rate=60.0)
        assert list(published.iter_errors(json.loads(encode(beat)))) == []


def test_heartbeat_response_records_round_trip_and_liveness_deadline() -> None:
    proto = make()
    assert proto.liveness_deadline is None
    assert proto.round_trips_ms == ()
    assert proto.rtt_summary() == {"samples": 0, "lastMs": None, "medianMs": None}

    proto.heartbeat(now=100.0, wall_ms=WALL, frame_rate=60.0)
    proto.heartbeat(now=101.0, wall_ms=WALL + 1000, frame_rate=60.0)
    assert proto.liveness_deadline is None  # sending heartbeats is not an answer

    out = send(proto, {"type": "heartbeat_response", "payload": {"sequence": 0}}, now=100.25)
    assert out == []
    assert proto.round_trips_ms == pytest.approx((250.0,))
    assert proto.liveness_deadline == pytest.approx(100.25 + TIMEOUT)

    send(proto, {"type": "heartbeat_response", "payload": {"sequence": 1}}, now=101.004)
    assert proto.round_trips_ms == pytest.approx((250.0, 4.0))
    assert proto.liveness_deadline == pytest.approx(101.004 + TIMEOUT)
    summary = proto.rtt_summary()
    assert summary["samples"] == 2
    assert summary["lastMs"] == pytest.approx(4.0)
    assert summary["medianMs"] == pytest.approx(127.0)


def test_a_repeated_or_unknown_sequence_keeps_alive_without_a_round_trip() -> None:
    proto = make()
    proto.heartbeat(now=5.0, wall_ms=WALL, frame_rate=60.0)
    send(proto, {"type": "heartbeat_response", "payload": {"sequence": 0}}, now=5.1)
    send(proto, {"type": "heartbeat_response", "payload": {"sequence": 0}}, now=6.0)
    send(proto, {"type": "heartbeat_response", "payload": {"sequence": 99}}, now=7.0)
    send(proto, {"type": "heartbeat_response"}, now=8.0)
    assert proto.round_trips_ms == pytest.approx((100.0,))
    assert proto.liveness_deadline == pytest.approx(8.0 + TIMEOUT)


# -- limits ---------------------------------------------------------------------------------


def test_an_oversized_message_gets_an_error_then_close_1009_and_nothing_after() -> None:
    proto = make(max_message_bytes=256)
    big = json.dumps({"type": "ping", "payload": {"pad": "x" * 300}})
    actions = send(proto, big)
    assert len(actions) == 2
    reply, close = actions
    assert isinstance(reply, Reply)
    assert isinstance(reply.event, ErrorEvent)
    assert reply.event.payload.code == "MESSAGE_TOO_LARGE"
    assert reply.event.payload.component == "websocket"
    assert "256" in reply.event.payload.message
    assert isinstance(close, Close)
    assert close.code == CLOSE_TOO_BIG == 1009
    assert proto.closed == close
    # later messages, even valid ones, are ignored
    assert send(proto, {"type": "ping"}) == []
    assert send(proto, {"type": "subscribe", "payload": {"channels": ["energy"]}}) == []
    proto.heartbeat(now=1.0, wall_ms=WALL, frame_rate=60.0)
    assert send(proto, {"type": "heartbeat_response", "payload": {"sequence": 0}}) == []
    assert proto.liveness_deadline is None


def test_size_is_counted_in_utf8_bytes_and_the_limit_itself_is_allowed() -> None:
    proto = make(max_message_bytes=256)
    skeleton = json.dumps({"type": "ping", "payload": {"pad": ""}}, ensure_ascii=False)
    exact = skeleton.replace('""', '"' + "x" * (256 - len(skeleton)) + '"')
    assert len(exact.encode()) == 256
    assert isinstance(only_event(send(proto, exact)), Pong)
    assert isinstance(only_event(send(proto, exact.encode())), Pong)
    # under 256 characters, but over 256 bytes in UTF-8
    wide = json.dumps({"type": "ping", "payload": {"pad": "é" * 120}}, ensure_ascii=False)
    assert len(wide) < 256 < len(wide.encode())
    actions = send(proto, wide)
    assert [type(a) for a in actions] == [Reply, Close]


BAD_MESSAGES: list[tuple[str | bytes, str]] = [
    ("{oops", "INVALID_JSON"),
    (b"\xff\xfe", "INVALID_JSON"),
    ("[]", "INVALID_MESSAGE"),
    ('{"payload": {}}', "INVALID_MESSAGE"),
    ('{"type": "state_snapshot"}', "UNKNOWN_MESSAGE_TYPE"),
    ('{"type": "ping", "id": 3}', "INVALID_FIELD"),
    ('{"type": "heartbeat_response", "payload": {"sequence": -1}}', "INVALID_FIELD"),
    ('{"type": "heartbeat_response", "payload": {"sequence": "1"}}', "INVALID_FIELD"),
    ('{"type": "subscribe", "payload": {"channels": []}}', "INVALID_FIELD"),
    ('{"type": "subscribe", "payload": {"channels": ["energy"], "x": 1}}', "INVALID_FIELD"),
]


@pytest.mark.parametrize(("data", "code"), BAD_MESSAGES, ids=[c for _, c in BAD_MESSAGES])
def test_a_bad_message_gets_one_recoverable_error_and_the_protocol_keeps_working(
    data: str | bytes, code: str
) -> None:
    proto = make()
    event = only_event(proto.receive(data, 1.0, WALL))
    assert isinstance(event, ErrorEvent)
    assert event.payload.code == code
    assert re.fullmatch(r"[A-Z0-9_]+", event.payload.code)
    assert event.payload.component == "websocket"
    assert event.payload.recoverable is True
    assert event.payload.severity in ("warning", "error")
    assert event.payload.message
    assert len(event.payload.message) <= 1000
    assert event.timestamp == WALL
    assert proto.closed is None
    # still working
    pong = only_event(send(proto, {"type": "ping", "payload": {"n": 1}}))
    assert isinstance(pong, Pong)
    assert pong.payload == {"n": 1}
    unsubscribed = only_event(
        send(proto, {"type": "unsubscribe", "payload": {"channels": ["energy"]}})
    )
    assert isinstance(unsubscribed, Subscriptions)
    assert not proto.wants("energy")


@pytest.mark.parametrize(("data", "code"), BAD_MESSAGES, ids=[c for _, c in BAD_MESSAGES])
def test_error_replies_validate_against_published_schema(
    data: str | bytes, code: str, published: jsonschema.Draft7Validator
) -> None:
    event = only_event(make().receive(data, 1.0, WALL))
    message = json.loads(encode(event))
    assert list(published.iter_errors(message)) == []


def test_a_huge_bad_message_yields_a_bounded_error_message() -> None:
    proto = make(max_message_bytes=64 * 1024)
    fields = {f"field_{i:04d}_{'y' * 20}": i for i in range(300)}
    event = only_event(send(proto, {"type": "ping", **fields}))
    assert event.payload.code == "INVALID_FIELD"
    assert len(event.payload.message) <= 1000
    assert len(encode(event).encode()) < 64 * 1024
    if PUBLISHED_SCHEMA.exists():
        validator = jsonschema.Draft7Validator(json.loads(PUBLISHED_SCHEMA.read_text("utf-8")))
        assert list(validator.iter_errors(json.loads(encode(event)))) == []


# -- origin guard ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "http://localhost:3000",
        "http://localhost",
        "http://127.0.0.1",
        "http://127.0.0.1:8145",
        "https://[::1]:8080",
        "HTTP://LOCALHOST:5173",
        "http://localhost:3000/",
    ],
)
def test_allowed_origins(origin: str | None) -> None:
    assert origin_allowed(origin) is True


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example:8145",
        "null",
        "",
        "garbage",
        "not a url at all",
        "ftp://localhost",
        "file:///etc/passwd",
        "ws://localhost:8145",
        "http://localhost.evil.example",
        "http://127.0.0.1.evil.example",
        "http://127.0.0.2:8145",
        "http://[::1",
        "http://localhost:99999",
    ],
)
def test_refused_origins(origin: str) -> None:
    assert origin_allowed(origin) is False
    assert origin_allowed(origin, own=ServerNames.build("127.0.0.1")) is False


@pytest.mark.parametrize(
    ("origin", "bound", "configured", "arrived_on"),
    [
        ("http://wirthforge.lan:8145", "0.0.0.0", ["wirthforge.lan"], None),
        ("https://box.example", "box.example", [], None),
        ("http://Box.Example:8145", "127.0.0.1", ["box.example:8145"], None),
        ("http://10.0.0.5:8145", "0.0.0.0", [], "10.0.0.5"),
        ("http://10.0.0.5:8145", "0.0.0.0", [], "::ffff:10.0.0.5"),
        ("http://[fd00::5]:8145", "::", [], "fd00::5"),
    ],
)
def test_the_servers_own_names_are_its_own_origins(
    origin: str, bound: str, configured: list[str], arrived_on: str | None
) -> None:
    """Own means named by the configuration or the socket; an Origin equal to the request's
    Host is no longer enough (DNS rebinding makes them equal: issue 21)."""
    own = ServerNames.build(bound, configured)
    assert origin_allowed(origin, own=own, local_address=arrived_on) is True
    assert origin_allowed(origin) is False
    assert origin_allowed(origin, own=ServerNames.build("127.0.0.1")) is False


def test_configured_origins_are_allowed() -> None:
    extra = ["https://app.wirthforge.example", "http://studio.example:8080/"]
    assert origin_allowed("https://app.wirthforge.example", extra)
    assert origin_allowed("http://studio.example:8080", extra)
    assert not origin_allowed("https://evil.example", extra)
    assert not origin_allowed("http://app.wirthforge.example", extra)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://anything.example:1"])
def test_star_allows_any_origin(origin: str) -> None:
    assert origin_allowed(origin, ["*"]) is True
    assert origin_allowed(origin) is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", ("localhost", None)),
        ("LOCALHOST:8145", ("localhost", 8145)),
        ("[::1]:8145", ("::1", 8145)),
        ("[::1]", ("::1", None)),
        ("box.lan:80", ("box.lan", 80)),
    ],
)
def test_host_headers_are_split(value: str, expected: tuple[str, int | None]) -> None:
    assert split_host(value) == expected


@pytest.mark.parametrize(
    "value", ["", "::1", "[::1", "[::1]x", "[evil]:80", "a b", "box:", "box:99999", "box:+80"]
)
def test_malformed_host_headers_are_errors(value: str) -> None:
    with pytest.raises(ValueError):
        split_host(value)


def test_server_names_match_hosts_by_configuration_and_socket_only() -> None:
    names = ServerNames.build("0.0.0.0", ["box.lan", "studio.lan:9000"])
    assert names.host_allowed("localhost:1234", None)
    assert names.host_allowed("box.lan:8145", None)
    assert names.host_allowed("studio.lan:9000", None)
    assert not names.host_allowed("studio.lan:8145", None)
    assert not names.host_allowed("0.0.0.0:8145", None)  # a wildcard is no name
    assert names.host_allowed("192.168.1.5:8145", "192.168.1.5")
    assert not names.host_allowed("192.168.1.6:8145", "192.168.1.5")
    assert not names.host_allowed("evil.example:8145", "192.168.1.5")
    assert names.host_allowed(None, None) and names.host_allowed("", None)  # no browser
    assert ServerNames.build("127.0.0.1", ["*"]).host_allowed("evil.example", None)


# -- model filters and resume -------------------------------------------------------------


def test_model_filter_by_subscribe_and_unsubscribe() -> None:
    proto = make()
    assert proto.wants_models(("a",)) and proto.wants_models(())
    reply = only_event(send(proto, {"type": "subscribe", "payload": {"models": ["a"]}}))
    assert reply.payload.models == ("a",)
    assert proto.wants_models(("a",)) and not proto.wants_models(("b",))
    assert proto.wants_models(()), "events about no model always pass"
    assert proto.wants_models(("b", "a")), "a council event passes if any member is wanted"
    only_event(send(proto, {"type": "unsubscribe", "payload": {"models": ["a"]}}))
    assert not proto.wants_models(("a",))
    reply = only_event(send(proto, {"type": "subscribe", "payload": {"models": ["*"]}}))
    assert reply.payload.models is None and proto.wants_models(("b",))
    only_event(send(proto, {"type": "unsubscribe", "payload": {"models": ["b"]}}))
    assert proto.wants_models(("a",)) and not proto.wants_models(("b",))


def test_subscribe_needs_a_channel_or_a_model() -> None:
    event = only_event(send(make(), {"type": "subscribe", "payload": {}}))
    assert event.payload.code == "INVALID_FIELD"
    assert "channels" in event.payload.message and "models" in event.payload.message


def resuming() -> ConnectionProtocol:
    return ConnectionProtocol(
        "c-r", max_message_bytes=4096, heartbeat_timeout=TIMEOUT, expect_resume=True
    )


def test_resume_first_joins_with_the_payload_and_restores_subscriptions() -> None:
    proto = resuming()
    actions = proto.receive(
        json.dumps(
            {
                "type": "resume",
                "payload": {
                    "serverInstance": "i-1",
                    "lastFrame": 40,
                    "sessions": [{"sessionId": "s-1", "tokens": 7}],
                    "channels": ["experience"],
                    "models": ["demo"],
                },
            }
        ),
        1.0,
        WALL,
    )
    (join,) = actions
    assert isinstance(join, Join) and join.resume is not None
    assert join.resume.last_frame == 40 and join.resume.sessions[0].tokens == 7
    assert proto.channels == ("experience", "system"), "system is always on"
    assert proto.subscribed_models == ("demo",)
    again = only_event(send(proto, {"type": "resume", "payload": {}}))
    assert again.payload.code == "RESUME_NOT_EXPECTED"


def test_a_resuming_connection_that_sends_something_else_joins_fresh() -> None:
    proto = resuming()
    actions = send(proto, {"type": "ping", "payload": {"n": 2}})
    assert isinstance(actions[0], Join) and actions[0].resume is None
    assert isinstance(actions[1], Reply) and isinstance(actions[1].event, Pong)
    assert proto.join() == [], "joining happens once"


def test_resume_on_a_live_connection_is_refused() -> None:
    event = only_event(send(make(), {"type": "resume", "payload": {}}))
    assert event.payload.code == "RESUME_NOT_EXPECTED"
