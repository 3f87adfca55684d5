"""The security rules without a server: the message rate limiter (time passed in), the access
policy and token comparison, loopback detection, and the connection counter."""

from __future__ import annotations

import hmac
import json
from typing import Any

import pytest

from tests.support.checks import check_message
from wirthforge_trio.config import Settings, SettingsError
from wirthforge_trio.contract.close_codes import CLOSE_POLICY
from wirthforge_trio.contract.codec import encode
from wirthforge_trio.contract.events import ErrorEvent, Pong
from wirthforge_trio.protocol.connection import Close, ConnectionProtocol, Reply
from wirthforge_trio.protocol.limits import MessageRateLimiter, RateLimit, Verdict
from wirthforge_trio.security import (
    AccessPolicy,
    ConnectionLimiter,
    LogThrottle,
    Refusal,
    Slot,
    check_exposure,
    is_loopback,
    presented_token,
    select_subprotocol,
    token_matches,
)

WALL = 1_726_000_000_000
TOKEN = "a-token-of-twenty-chars"
PING = json.dumps({"type": "ping", "payload": {}})


# --- the token bucket ------------------------------------------------------------------------


def test_a_burst_passes_then_messages_over_it_are_dropped() -> None:
    limiter = MessageRateLimiter(RateLimit(rate=10.0, burst=3, close_after=5.0))
    assert [limiter.check(0.0) for _ in range(3)] == [Verdict.PASS] * 3
    assert limiter.check(0.0) is Verdict.WARN  # the first over: warn once
    assert limiter.check(0.0) is Verdict.DROP
    assert limiter.check(0.01) is Verdict.DROP
    assert limiter.dropped == 3
    assert limiter.over_since == 0.0


def test_the_bucket_refills_at_the_sustained_rate() -> None:
    limiter = MessageRateLimiter(RateLimit(rate=10.0, burst=2, close_after=5.0))
    assert limiter.check(0.0) is Verdict.PASS
    assert limiter.check(0.0) is Verdict.PASS
    assert limiter.check(0.0) is Verdict.WARN
    assert limiter.check(0.1) is Verdict.PASS  # 0.1 s at 10/s: one message's worth
    assert limiter.check(0.1) is Verdict.DROP  # still the same episode: no new warning


def test_a_client_at_the_rate_is_never_limited() -> None:
    limiter = MessageRateLimiter(RateLimit(rate=10.0, burst=1, close_after=1.0))
    assert all(limiter.check(n * 0.1) is Verdict.PASS for n in range(1000))
    assert limiter.dropped == 0


def test_staying_over_the_limit_closes_after_close_after_seconds() -> None:
    limiter = MessageRateLimiter(RateLimit(rate=10.0, burst=5, close_after=2.0))
    verdicts = [limiter.check(n * 0.05) for n in range(60)]  # 20/s: twice the rate
    assert verdicts[:5] == [Verdict.PASS] * 5
    assert verdicts.count(Verdict.WARN) == 1
    first_drop = verdicts.index(Verdict.WARN) * 0.05
    close = verdicts.index(Verdict.CLOSE) * 0.05
    assert close - first_drop == pytest.approx(2.0, abs=0.06)
    assert Verdict.CLOSE not in verdicts[: verdicts.index(Verdict.CLOSE)]


def test_an_episode_ends_when_the_bucket_has_refilled() -> None:
    limiter = MessageRateLimiter(RateLimit(rate=10.0, burst=2, close_after=1.0))
    limiter.check(0.0), limiter.check(0.0)
    assert limiter.check(0.0) is Verdict.WARN
    assert limiter.check(0.1) is Verdict.PASS  # one message's worth back: same episode
    assert limiter.over_since == 0.0
    # Quiet for the burst's refill time (0.2 s): the next flood is a new episode, warned
    # again, and its close timer starts afresh.
    assert limiter.check(5.0) is Verdict.PASS
    assert limiter.over_since is None
    assert limiter.check(5.0) is Verdict.PASS
    assert limiter.check(5.0) is Verdict.WARN
    verdicts = [limiter.check(5.0 + n * 0.05) for n in range(1, 30)]  # 20/s
    assert Verdict.WARN not in verdicts
    closed_at = 5.0 + (verdicts.index(Verdict.CLOSE) + 1) * 0.05
    assert closed_at == pytest.approx(6.0, abs=0.06)


# --- the rate limit in the connection protocol ----------------------------------------------


def limited(rate: float = 10.0, burst: int = 3, close_after: float = 1.0) -> ConnectionProtocol:
    return ConnectionProtocol(
        "c-limits",
        max_message_bytes=4096,
        heartbeat_timeout=10.0,
        rate_limit=RateLimit(rate=rate, burst=burst, close_after=close_after),
    )


def test_protocol_warns_once_drops_unread_then_closes_1008() -> None:
    proto = limited()
    for _ in range(3):
        (reply,) = proto.receive(PING, 0.0, WALL)
        assert isinstance(reply, Reply) and isinstance(reply.event, Pong)
    (warning,) = proto.receive(PING, 0.0, WALL)
    assert isinstance(warning, Reply) and isinstance(warning.event, ErrorEvent)
    payload = warning.event.payload
    assert (payload.code, payload.severity, payload.recoverable) == (
        "RATE_LIMITED",
        "warning",
        True,
    )
    assert payload.component == "websocket"
    assert "10 messages/s" in payload.message and "1008" in payload.message
    assert payload.details is not None and payload.details["rate"] == 10.0
    check_message(encode(warning.event))
    # Dropped unread: not even decoded (garbage gets no INVALID_JSON), no reply at all.
    assert proto.receive("not json", 0.01, WALL) == []
    assert proto.receive(PING, 0.02, WALL) == []
    # Going on at 20/s, twice the rate: every other ping is answered, none warned again,
    # and one second into the episode the connection is closed.
    answered: list[float] = []
    for n in range(1, 40):
        now = n * 0.05
        actions = proto.receive(PING, now, WALL)
        if actions and isinstance(actions[0], Reply) and isinstance(actions[0].event, Pong):
            answered.append(now)
        elif actions:
            break
    assert 8 <= len(answered) <= 12
    assert now == pytest.approx(1.0, abs=0.06)
    error, close = actions
    assert isinstance(error, Reply) and isinstance(error.event, ErrorEvent)
    assert error.event.payload.code == "RATE_LIMIT_EXCEEDED"
    assert error.event.payload.severity == "error"
    check_message(encode(error.event))
    assert close == Close(CLOSE_POLICY, "message rate limit exceeded")
    assert proto.closed == close
    assert proto.receive(PING, 9.0, WALL) == []  # closed: nothing more


def test_dropped_messages_do_not_count_as_heartbeat_answers() -> None:
    proto = limited(burst=1)
    proto.heartbeat(0.0, WALL, 60.0)
    proto.receive(PING, 0.0, WALL)
    assert proto.liveness_deadline is None
    answer = json.dumps({"type": "heartbeat_response", "payload": {"sequence": 0}})
    proto.receive(answer, 0.0, WALL)  # over the limit: dropped
    assert proto.liveness_deadline is None
    proto.receive(answer, 10.0, WALL)
    assert proto.liveness_deadline == pytest.approx(20.0)


def test_without_a_rate_limit_nothing_is_limited() -> None:
    proto = ConnectionProtocol("c-free", max_message_bytes=4096, heartbeat_timeout=10.0)
    for _ in range(5000):
        (reply,) = proto.receive(PING, 0.0, WALL)
        assert isinstance(reply.event, Pong)  # type: ignore[union-attr]


# --- token, loopback, subprotocols ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("fe80::1%eth0", False),
        ("example.com", False),
        ("localhost.evil.example", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_needs_a_token_off_loopback() -> None:
    check_exposure(Settings())
    check_exposure(Settings(host="::1"))
    check_exposure(Settings(host="0.0.0.0", token=TOKEN))
    for host in ("0.0.0.0", "::", "192.168.1.5", ""):
        with pytest.raises(SettingsError, match="WIRTHFORGE_TOKEN"):
            check_exposure(Settings(host=host))


def test_token_comparison_is_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    compare_digest = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module security.py uses
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN[:-1], TOKEN)  # a prefix, a different length
    assert not token_matches(TOKEN + "x", TOKEN)
    assert not token_matches("", TOKEN)
    # Anything a header may carry is compared, never raised on (compare_digest would raise
    # on non-ASCII str: the comparison is on bytes).
    assert not token_matches("é" * 20, TOKEN)
    assert not token_matches("\udcff", TOKEN)
    assert len(calls) == 6 and all(isinstance(a, bytes) for a, _ in calls)
    # And the policy goes through it.
    calls.clear()
    AccessPolicy(TOKEN).check(authorization=f"Bearer {TOKEN}", query=(), server=None)
    assert calls == [(TOKEN.encode(), TOKEN.encode())]


def test_presented_token_from_header_or_subprotocol() -> None:
    assert presented_token(f"Bearer {TOKEN}") == TOKEN
    assert presented_token(f"bearer   {TOKEN}  ") == TOKEN
    assert presented_token(f"Basic {TOKEN}") is None
    assert presented_token("Bearer") is None
    assert presented_token(None, ["wirthforge.v1", f"wirthforge.token.{TOKEN}"]) == TOKEN
    assert presented_token(None, ["wirthforge.v1"]) is None
    # The header wins over the subprotocol.
    assert presented_token("Bearer from-header", [f"wirthforge.token.{TOKEN}"]) == "from-header"


def test_select_subprotocol() -> None:
    assert select_subprotocol([]) is None
    assert select_subprotocol(["graphql-ws"]) is None
    assert select_subprotocol([f"wirthforge.token.{TOKEN}", "wirthforge.v1"]) == "wirthforge.v1"
    assert select_subprotocol([f"wirthforge.token.{TOKEN}"]) == f"wirthforge.token.{TOKEN}"


def refused(refusal: Refusal | None) -> tuple[int, str] | None:
    return None if refusal is None else (refusal.status, refusal.reason)


LOOPBACK = ("127.0.0.1", 8145)
LAN = ("192.168.1.5", 8145)


def test_access_policy_with_a_token() -> None:
    policy = AccessPolicy(TOKEN)
    assert TOKEN not in repr(policy)
    ok: dict[str, Any] = {"query": (), "server": LAN}
    assert policy.check(authorization=f"Bearer {TOKEN}", **ok) is None
    assert (
        policy.check(authorization=None, subprotocols=[f"wirthforge.token.{TOKEN}"], **ok) is None
    )
    missing = policy.check(authorization=None, **ok)
    assert missing is not None and missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = policy.check(authorization="Bearer nope", **ok)
    assert wrong is not None and wrong.status == 403
    assert TOKEN not in wrong.message
    # The page needs no token; the URL rule still holds for it.
    assert policy.check(authorization=None, token_needed=False, **ok) is None
    for query in (["token"], ["resume", "Token"], ["access_token"]):
        refusal = policy.check(authorization=f"Bearer {TOKEN}", query=query, server=LAN)
        assert refused(refusal) == (400, "token in the URL")
        refusal = policy.check(authorization=None, query=query, server=LAN, token_needed=False)
        assert refused(refusal) == (400, "token in the URL")


def test_access_policy_without_a_token_serves_loopback_only() -> None:
    policy = AccessPolicy(None)
    assert policy.check(authorization=None, query=(), server=LOOPBACK) is None
    assert policy.check(authorization=None, query=(), server=("::1", 8145)) is None
    assert policy.check(authorization=None, query=(), server=None) is None  # unknown
    assert policy.check(authorization=None, query=(), server=("/run/wf.sock", None)) is None
    refusal = policy.check(authorization=f"Bearer {TOKEN}", query=(), server=LAN)
    assert refusal is not None and refusal.status == 403
    assert "WIRTHFORGE_TOKEN" in refusal.message and "192.168.1.5" in refusal.message
    refusal = policy.check(authorization=None, query=(), server=LAN, token_needed=False)
    assert refusal is not None and refusal.status == 403


# --- the connection counter --------------------------------------------------------------------


def test_connection_limits_in_total_and_per_address() -> None:
    limiter = ConnectionLimiter(total=4, per_address=2)
    a1, a2 = limiter.acquire("10.0.0.1"), limiter.acquire("10.0.0.1")
    assert isinstance(a1, Slot) and isinstance(a2, Slot)
    third = limiter.acquire("10.0.0.1")
    assert isinstance(third, Refusal) and third.status == 503
    assert third.headers == {"Retry-After": "5"}
    assert "WIRTHFORGE_MAX_CONNECTIONS_PER_ADDRESS" in third.message
    b = limiter.acquire("10.0.0.2")
    assert isinstance(b, Slot)
    local = limiter.acquire("127.0.0.1")
    assert isinstance(local, Slot)
    assert limiter.open == 4
    full = limiter.acquire("127.0.0.1")
    assert isinstance(full, Refusal) and full.status == 503
    assert "WIRTHFORGE_MAX_CONNECTIONS" in full.message
    a1.release()
    a1.release()  # idempotent
    assert limiter.open == 3 and limiter.count("10.0.0.1") == 1
    assert isinstance(limiter.acquire("10.0.0.1"), Slot)


def test_loopback_is_exempt_from_the_per_address_limit_only() -> None:
    limiter = ConnectionLimiter(total=10, per_address=1)
    slots = [limiter.acquire("127.0.0.1") for _ in range(10)]
    assert all(isinstance(s, Slot) for s in slots)
    assert isinstance(limiter.acquire("::1"), Refusal)  # the total still counts
    for slot in slots:
        assert isinstance(slot, Slot)
        slot.release()
    assert limiter.open == 0 and limiter.count("127.0.0.1") == 0


def test_log_throttle() -> None:
    throttle = LogThrottle(interval=10.0)
    assert throttle.allow("no access token", 0.0) == 0
    assert throttle.allow("no access token", 1.0) is None
    assert throttle.allow("no access token", 2.0) is None
    assert throttle.allow("wrong access token", 2.0) == 0
    assert throttle.allow("no access token", 10.5) == 2
    assert throttle.allow("no access token", 21.0) == 0
