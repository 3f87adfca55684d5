"""Property-based fuzzing of a live connection: arbitrary bytes, text, JSON values and
near-valid control messages, each answered with a valid error_event or accepted, while the
60 Hz frame stream goes on and the server never logs an error.

Hypothesis does not run under Trio, so each test starts ONE server and ONE connection in a
Trio loop on a thread of its own (:class:`LiveConnection`) and the examples drive it from the
test's thread with ``trio.from_thread.run``. Each example sends its input, then a reset of the
subscriptions and a ``ping`` carrying a fresh nonce; everything that arrives before the
matching ``pong`` is the server's answer to the input. Every message is schema-checked by
:class:`~tests.support.server.CheckedClient`; heartbeats are answered as a browser would.

``WIRTHFORGE_SOAK=1`` runs 20 times the examples, randomised (CI runs a fixed, derandomised
set so that a failure is reproducible).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.logs import errors_logged
from tests.support.server import CheckedClient, RunningServer, start_server, test_settings
from wirthforge_trio.config import Settings
from wirthforge_trio.contract.codec import ClientMessageError, decode_client_message
from wirthforge_trio.contract.events import CHANNELS

SOAK = os.environ.get("WIRTHFORGE_SOAK") == "1"
EXAMPLES = 5000 if SOAK else 250
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not SOAK,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_FRAME_GAP = 1.0
"""Seconds between two energy frames that would count as the stream stopping (at 60 Hz the
gap is 17 ms; the bound is generous because the hypothesis thread shares the GIL)."""

T = TypeVar("T")


# -- a live server and connection on a thread of their own ------------------------------------


@attrs.define
class Answer:
    """What the server sent between an input and the ping that follows it."""

    errors: list[dict[str, Any]]
    others: list[dict[str, Any]]


class LiveConnection:
    """A server and one WebSocket connection in a Trio loop on a thread; call into it with
    :meth:`call` from the test's thread."""

    def __init__(self, server_settings: Settings) -> None:
        self.settings = server_settings
        self.server: RunningServer | None = None
        self.client: CheckedClient | None = None
        self.frame_times: list[float] = []
        self.log_errors: list[str] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stop: trio.Event | None = None
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._nonce = 0
        self._thread = threading.Thread(target=self._thread_main, daemon=True)

    def __enter__(self) -> LiveConnection:
        self._thread.start()
        if not self._ready.wait(30) or self._failure is not None:
            raise RuntimeError(f"the live server did not start: {self._failure!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(30)
        if self._failure is not None and exc[0] is None:
            raise self._failure

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by __enter__ / __exit__
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.server = await start_server(nursery, self.settings)
            async with self.server.connect() as client:
                self.client = client
                await client.receive_type("startup_complete")
                nursery.start_soon(self._reader, client)
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
            self.server.stop.set()

    async def _reader(self, client: CheckedClient) -> None:
        """Every message: count frames, answer heartbeats, hand the rest to the exchange."""
        collected: list[dict[str, Any]] = []
        last_frame = -1
        while True:
            message = await client.receive()
            kind = message["type"]
            if kind == "energy_update":
                if message["frameNumber"] != last_frame:  # a council sends several per frame
                    last_frame = message["frameNumber"]
                    self.frame_times.append(trio.current_time())
            elif kind == "heartbeat":
                sequence = message["payload"]["sequence"]
                await client.send({"type": "heartbeat_response", "payload": {"sequence": sequence}})
            elif kind == "pong" and isinstance(message["payload"], dict):
                nonce = message["payload"].get("fuzzNonce")
                waiter = self._pending.pop(nonce, None) if isinstance(nonce, int) else None
                if waiter is not None:
                    for earlier in collected:
                        waiter.send_nowait(earlier)
                    collected = []
                    waiter.send_nowait(message)
                    continue
                collected.append(message)
            elif kind not in ("energy_field", "subscriptions"):
                collected.append(message)

    async def exchange(self, data: str | bytes) -> Answer:
        """Send ``data`` (a text or a binary frame); return what the server answered to it."""
        client = self.client
        assert client is not None
        self._nonce += 1
        nonce = self._nonce
        send, receive = trio.open_memory_channel[dict[str, Any]](1000)
        self._pending[nonce] = send
        await client.ws.send_message(data)
        reset = {"type": "subscribe", "payload": {"channels": list(CHANNELS), "models": ["*"]}}
        await client.send(reset)
        await client.send({"type": "ping", "payload": {"fuzzNonce": nonce}})
        errors: list[dict[str, Any]] = []
        others: list[dict[str, Any]] = []
        with trio.fail_after(10):
            async for message in receive:
                if message["type"] == "pong" and message["payload"] == {"fuzzNonce": nonce}:
                    break
                (errors if message["type"] == "error_event" else others).append(message)
        return Answer(errors, others)

    async def frames_per_second(self, seconds: float = 2.0) -> float:
        before = len(self.frame_times)
        await trio.sleep(seconds)
        return (len(self.frame_times) - before) / seconds

    async def health(self) -> int:
        assert self.server is not None
        async with httpx.AsyncClient(base_url=self.server.url, timeout=5.0) as http:
            return (await http.get("/health")).status_code


def without_rate_limit() -> dict[str, Any]:
    """Settings that lift the per-connection message rate limit, where the server has one:
    the fuzzer sends hundreds of messages a second, and rate limiting is tested elsewhere."""
    lifted = {"max_message_rate": 1e9, "max_message_burst": 10**9}
    return {name: value for name, value in lifted.items() if name in attrs.fields_dict(Settings)}


@contextmanager
def live_connection() -> Iterator[LiveConnection]:
    # A long heartbeat timeout: a hypothesis pause must never look like a dead client.
    server_settings = test_settings(
        heartbeat_timeout=60.0, models=("demo", "demo:bravo"), **without_rate_limit()
    )
    with errors_logged() as logged, LiveConnection(server_settings) as live:
        yield live
        assert live.call(live.health) == 200, "the server still answers /health"
        rate = live.call(live.frames_per_second)
        assert rate >= 55, f"the frame stream slowed to {rate:.1f} frames/s"
    times = live.frame_times
    assert len(times) > 60, "frames flowed during the run"
    worst = max(b - a for a, b in itertools.pairwise(times))
    assert worst < MAX_FRAME_GAP, f"the frame stream stopped for {worst:.2f} s"
    assert logged == [], "the server logged errors"


def check_answer(data: str | bytes, answer: Answer) -> None:
    """Refused with an error_event naming the same code the contract decoder gives, or
    accepted; every error is a recoverable warning from the websocket component."""
    for error in answer.errors:
        payload = error["payload"]
        assert payload["component"] == "websocket", error
        assert payload["recoverable"] is True, error
        assert payload["severity"] == "warning", error
        assert 0 < len(payload["message"]) <= 1000
    try:
        message = decode_client_message(data)
    except ClientMessageError as exc:
        codes = [e["payload"]["code"] for e in answer.errors]
        assert codes == [exc.code], f"{data!r:.200}: expected one {exc.code}, got {codes}"
        return
    codes = {e["payload"]["code"] for e in answer.errors}
    allowed = {
        "subscribe": {"UNKNOWN_CHANNEL", "INVALID_FIELD"},
        "unsubscribe": {"UNKNOWN_CHANNEL", "INVALID_FIELD", "CHANNEL_REQUIRED"},
        "resume": {"RESUME_NOT_EXPECTED"},
    }.get(message.TYPE, set())  # type: ignore[attr-defined]
    assert codes <= allowed, f"{data!r:.200} was valid, yet refused with {codes}"
    if message.TYPE == "ping":  # type: ignore[attr-defined]
        assert [m["type"] for m in answer.others].count("pong") == 1, "its pong came back"


# -- strategies ---------------------------------------------------------------------------------

unicode_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
"""Any Unicode a client can send in a text frame (a lone surrogate cannot be UTF-8 encoded)."""

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | unicode_text
    | st.sampled_from([0, -1, 2**31, 2**63, 2**64, 10**30, 1e308, -1e308, "", "*", "system"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(unicode_text, children, max_size=4)
    ),
    max_leaves=20,
)

TYPES = ("heartbeat_response", "subscribe", "unsubscribe", "ping", "resume")
VALID_PAYLOADS: dict[str, dict[str, Any]] = {
    "heartbeat_response": {"sequence": 3, "clientTime": 1_700_000_000_000},
    "subscribe": {"channels": ["energy"], "models": ["demo"]},
    "unsubscribe": {"channels": ["council"], "models": ["demo-bravo"]},
    "ping": {"t": 1.5},
    "resume": {"serverInstance": "i-0", "lastFrame": 10, "sessions": []},
}
FIELD_NAMES = (
    "sequence",
    "clientTime",
    "channels",
    "models",
    "serverInstance",
    "lastFrame",
    "sessions",
    "",
    "payload",
    "type",
    "\u202e",
)
channel_names = st.sampled_from([*CHANNELS, "models", "*", "", "ENERGY", "energy "]) | unicode_text


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = {"n": value} if i % 2 else [value]
    return value


@st.composite
def near_valid(draw: st.DrawFn) -> str:
    """A real control message with one to three of its parts broken."""
    kind = draw(st.sampled_from(TYPES))
    message: dict[str, Any] = {"type": kind, "payload": dict(VALID_PAYLOADS[kind])}
    for _ in range(draw(st.integers(1, 3))):
        payload = message.get("payload")
        mutation = draw(
            st.sampled_from(
                [
                    "field",
                    "unknown_key",
                    "drop",
                    "payload",
                    "top_level",
                    "deep",
                    "huge",
                    "channels",
                    "type",
                ]
            )
        )
        if mutation == "field" and isinstance(payload, dict):
            payload[draw(st.sampled_from(FIELD_NAMES))] = draw(json_values)
        elif mutation == "unknown_key" and isinstance(payload, dict):
            payload[draw(unicode_text)] = draw(json_values)
        elif mutation == "drop" and isinstance(payload, dict) and payload:
            payload.pop(draw(st.sampled_from(sorted(payload))))
        elif mutation == "payload":
            message["payload"] = draw(json_values)
        elif mutation == "top_level":
            message[draw(st.sampled_from(["timestamp", "id", "channel", "", "Type"]))] = draw(
                json_values
            )
        elif mutation == "deep" and isinstance(payload, dict):
            depth = draw(st.integers(2, 300) | st.sampled_from([31, 32, 253, 254, 300]))
            payload[draw(st.sampled_from(FIELD_NAMES))] = nested(depth, draw(json_scalars))
        elif mutation == "huge" and isinstance(payload, dict):
            payload[draw(st.sampled_from(FIELD_NAMES))] = draw(
                st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), 10**40, 1e308, -0.0, 1e-320])
            )
        elif mutation == "channels" and isinstance(payload, dict):
            payload[draw(st.sampled_from(["channels", "models"]))] = draw(
                st.lists(channel_names, max_size=200)
            )
        elif mutation == "type":
            message["type"] = draw(
                st.sampled_from([*TYPES, "Ping", "ping ", "heartbeat", "", "error_event"])
                | unicode_text
            )
    return json.dumps(message, ensure_ascii=draw(st.booleans()), allow_nan=True)


# -- the properties -------------------------------------------------------------------------------


def test_arbitrary_bytes_as_binary_frames() -> None:
    with live_connection() as live:

        @FUZZ  # the empty binary frame has a test of its own below
        @given(st.binary(min_size=1, max_size=2000) | st.text(min_size=1).map(str.encode))
        def prop(data: bytes) -> None:
            check_answer(data, live.call(live.exchange, data))

        prop()


def test_arbitrary_text_frames() -> None:
    with live_connection() as live:

        @FUZZ
        @given(st.text(st.characters(exclude_categories=("Cs",)), max_size=2000))
        def prop(text: str) -> None:
            check_answer(text, live.call(live.exchange, text))

        prop()


def test_arbitrary_json_values() -> None:
    with live_connection() as live:

        @FUZZ
        @given(json_values, st.booleans())
        def prop(value: Any, binary: bool) -> None:
            text = json.dumps(value, allow_nan=True)
            data: str | bytes = text.encode() if binary else text
            check_answer(data, live.call(live.exchange, data))

        prop()


def test_near_valid_control_messages() -> None:
    with live_connection() as live:

        @FUZZ
        @given(near_valid())
        def prop(text: str) -> None:
            check_answer(text, live.call(live.exchange, text))

        prop()


def test_an_empty_binary_frame_gets_an_error_event() -> None:
    with live_connection() as live:
        check_answer(b"", live.call(live.exchange, b""))


def test_lone_surrogate_escapes_and_deep_nesting_are_refused_not_fatal() -> None:
    """Two inputs that used to break a connection: a ping nested past orjson's 254 levels
    (the pong could not be encoded) and JSON escapes of lone surrogates."""
    with live_connection() as live:
        for depth in (30, 31, 253, 300, 1000):  # the message's own two levels come on top
            text = '{"type": "ping", "payload": {"deep": ' + "[" * depth + "]" * depth + "}}"
            check_answer(text, live.call(live.exchange, text))
        deep = json.dumps({"type": "ping", "payload": {"deep": nested(300, 1)}})
        assert [e["payload"]["code"] for e in live.call(live.exchange, deep).errors] == [
            "INVALID_MESSAGE"
        ]
        for escaped in ('"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"'):
            text = '{"type": "ping", "payload": {"s": ' + escaped + "}}"
            check_answer(text, live.call(live.exchange, text))


# -- resume, the first message of a /ws?resume=1 connection ----------------------------------------


class ResumeFuzz:
    """Fresh ``/ws?resume=1`` connections to one live server, each sent one fuzzed resume."""

    def __init__(self, live: LiveConnection) -> None:
        self.live = live
        self.instance = ""
        self.session_ids: list[str] = []

    async def prepare(self) -> None:
        """Learn the server instance, and run a council so that sessions exist."""
        server = self.live.server
        assert server is not None
        async with server.connect_url(server.ws_url + "?resume=1") as client:
            await client.receive_type("startup_complete")
            await client.send({"type": "resume", "payload": {}})
            snapshot = await client.receive_type("state_snapshot")
            self.instance = snapshot["payload"]["serverInstance"]
        sessions = server.app.wirthforge.engine.submit("fuzz the resume", ["demo", "demo-bravo"])
        self.session_ids = [s.id for s in sessions]

    async def resume(self, payload: Any) -> list[dict[str, Any]]:
        server = self.live.server
        assert server is not None
        text = json.dumps({"type": "resume", "payload": payload}, allow_nan=True)
        received: list[dict[str, Any]] = []
        async with server.connect_url(server.ws_url + "?resume=1") as client:
            assert (await client.receive())["type"] == "startup_complete"
            await client.send(text)
            # The pong comes after the snapshot and the catch-up (one lossless queue), and it
            # comes whatever the resume unsubscribed (system cannot be left).
            await client.send({"type": "ping", "payload": {"fence": True}})
            with trio.fail_after(10):
                while True:
                    message = await client.receive()
                    if message["type"] == "pong" and message["payload"] == {"fence": True}:
                        break
                    if message["channel"] != "energy" and message["type"] != "heartbeat":
                        received.append(message)
        return received


@st.composite
def resume_payloads(draw: st.DrawFn, instance: str, session_ids: list[str]) -> Any:
    session_id = st.sampled_from(session_ids) | unicode_text
    held = st.fixed_dictionaries(
        {"sessionId": session_id, "tokens": st.integers(0, 2**63) | st.sampled_from([0, 1, 5])},
        optional={"complete": st.booleans()},
    )
    valid = st.fixed_dictionaries(
        {},
        optional={
            "serverInstance": st.sampled_from([instance, "i-0", ""]) | st.none() | unicode_text,
            "lastFrame": st.integers(0, 2**64) | st.none(),
            "sessions": st.lists(held, max_size=5),
            "channels": st.lists(channel_names, max_size=6) | st.none(),
            "models": st.lists(st.sampled_from(["demo", "demo-bravo", "council", "x"]), max_size=3)
            | st.none(),
        },
    )
    payload = draw(valid)
    if draw(st.integers(0, 3)) == 0:  # now and then, break it
        if draw(st.booleans()):
            payload[draw(st.sampled_from([*sorted(payload), "extra"]))] = draw(json_values)
        else:
            payload = draw(json_values)
    return payload


def test_fuzzed_resume_messages() -> None:
    with live_connection() as live:
        fuzz = ResumeFuzz(live)
        live.call(fuzz.prepare)
        budget = settings(FUZZ, max_examples=max(60, EXAMPLES // 4))

        @budget
        @given(resume_payloads(fuzz.instance, fuzz.session_ids))
        def prop(payload: Any) -> None:
            received = live.call(fuzz.resume, payload)
            kinds = [m["type"] for m in received]
            text = json.dumps({"type": "resume", "payload": payload}, allow_nan=True)
            try:
                decode_client_message(text)
            except ClientMessageError as exc:
                errors = [m for m in received if m["type"] == "error_event"]
                assert [e["payload"]["code"] for e in errors] == [exc.code], kinds
                assert "state_snapshot" not in kinds
                return
            assert kinds[0] == "state_snapshot", kinds
            snapshot = received[0]["payload"]
            assert snapshot["serverInstance"] == fuzz.instance
            unknown_errors = [
                m
                for m in received
                if m["type"] == "error_event" and m["payload"]["code"] != "UNKNOWN_CHANNEL"
            ]
            assert unknown_errors == []

        prop()


@pytest.mark.skipif(not SOAK, reason="soak only (WIRTHFORGE_SOAK=1)")
def test_soak_every_kind_mixed() -> None:
    """The four kinds of input interleaved on one connection, many more examples."""
    with live_connection() as live:

        @FUZZ
        @given(
            st.one_of(
                st.binary(max_size=500),
                st.text(max_size=500),
                json_values.map(lambda v: json.dumps(v, allow_nan=True)),
                near_valid(),
            )
        )
        def prop(data: str | bytes) -> None:
            check_answer(data, live.call(live.exchange, data))

        prop()


def test_the_compiled_schema_check_agrees_with_jsonschema() -> None:
    """Client messages are checked by fastjsonschema first and by jsonschema only when that
    check fails (for the clearest message): both must call the same messages valid."""
    from wirthforge_trio.contract.codec import _check, _validator
    from wirthforge_trio.contract.events import CLIENT_MESSAGES_BY_TYPE

    def agree(text: str) -> bool:
        obj = json.loads(text)
        if not isinstance(obj, dict) or obj.get("type") not in CLIENT_MESSAGES_BY_TYPE:
            return False
        cls = CLIENT_MESSAGES_BY_TYPE[obj["type"]]
        try:
            _check(cls)(obj)
            fast = True
        except Exception:
            fast = False
        assert fast == _validator(cls).is_valid(obj), text[:300]
        return fast

    valid = [agree(json.dumps({"type": t, "payload": VALID_PAYLOADS[t]})) for t in TYPES]
    assert all(valid)

    @FUZZ
    @given(near_valid())
    def prop(text: str) -> None:
        agree(text)

    prop()
