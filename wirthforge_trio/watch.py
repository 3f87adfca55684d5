"""``wirthforge watch``: look at a running server's stream from a terminal.

Two views over the same reconnecting :func:`~wirthforge_trio.client.connect` client: every
event as one compact line, or one summary line per second. Either way nothing is printed
that the server did not send or that was not measured: a model appears in the summary only
once one of its events arrived, and a round trip only once a ``pong`` came back.
"""

from __future__ import annotations

import math
import signal
import sys
from collections import Counter
from typing import Final, TextIO

import attrs
import trio

from .client import (
    Client,
    ClientClosed,
    ClientError,
    ConnectionState,
    connect,
    describe_handshake_error,
    refusal_is_final,
)
from .contract.events import ErrorEvent, Event, FrameEvent, Heartbeat, TokenStream

PING_TIMEOUT: Final = 1.0
"""Seconds a summary's ping may take (a slower pong shows as missing, not as a number)."""
INTERRUPTED: Final = 130
"""Exit status after Ctrl+C (128 + SIGINT), as shells report it."""


def event_line(event: Event) -> str:
    """One event as one compact line: type, frame, model, session and tokens (as repr).

    Heartbeats add their sequence and errors their code: what a reader scans for.
    """
    parts = [event.TYPE]
    if isinstance(event, FrameEvent):
        parts.append(f"frame={event.frame_number}")
    model_id = getattr(getattr(event, "payload", None), "model_id", None)
    if isinstance(model_id, str):
        parts.append(f"model={model_id}")
    if isinstance(event, TokenStream):
        payload = event.payload
        parts.append(f"session={payload.session_id}")
        parts.append(f"tokens={list(payload.tokens)!r}")
        if payload.is_complete:
            parts.append("complete")
    elif isinstance(event, Heartbeat):
        parts.append(f"seq={event.payload.sequence}")
    elif isinstance(event, ErrorEvent):
        parts.append(f"code={event.payload.code}")
    return " ".join(parts)


@attrs.define
class _Window:
    """What arrived during the current one-second window of the summary."""

    frames: set[int] = attrs.field(factory=set)
    tokens: Counter[str] = attrs.field(factory=Counter)
    events: int = 0

    def add(self, event: Event) -> None:
        self.events += 1
        if isinstance(event, FrameEvent):
            self.frames.add(event.frame_number)
        elif isinstance(event, TokenStream):
            self.tokens[event.payload.model_id] += len(event.payload.tokens)


@attrs.define
class _Summary:
    window: _Window = attrs.field(factory=_Window)
    models: list[str] = attrs.field(factory=list)
    """Every model seen in a token_stream, in order of first appearance."""
    rtt_ms: float | None = None

    def add(self, event: Event) -> None:
        self.window.add(event)
        if isinstance(event, TokenStream) and event.payload.model_id not in self.models:
            self.models.append(event.payload.model_id)

    def line(self, client: Client, elapsed: float) -> str:
        window, self.window = self.window, _Window()
        span = max(elapsed, 1e-9)
        rates = " ".join(f"{m}={window.tokens[m] / span:.1f}" for m in self.models) or "-"
        rtt = "-" if self.rtt_ms is None else f"{self.rtt_ms:.1f}ms"
        self.rtt_ms = None
        return (
            f"state={client.state.value} reconnects={client.reconnects} "
            f"frames/s={len(window.frames) / span:.1f} tokens/s {rates} rtt={rtt} "
            f"events={window.events}"
        )


async def _pinger(client: Client, summary: _Summary) -> None:
    """Once a second, a ping's round trip for the summary (skipped while disconnected).

    Half a second out of phase with the report, so each report window holds one ping.
    """
    await trio.sleep(0.5)
    while True:
        started = trio.current_time()
        if client.state is ConnectionState.CONNECTED:
            try:
                summary.rtt_ms = await client.ping(seconds=PING_TIMEOUT)
            except (ClientError, trio.TooSlowError):
                pass
        await trio.sleep_until(started + 1.0)


async def _reporter(client: Client, summary: _Summary, out: TextIO) -> None:
    """Print one summary line a second, covering exactly the time since the last one."""
    last = trio.current_time()
    while True:
        await trio.sleep_until(last + 1.0)
        now = trio.current_time()
        print(summary.line(client, now - last), file=out, flush=True)
        last = now


async def _narrate(client: Client, err: TextIO) -> None:
    """One line on ``err`` per retry: why the attempt or connection ended, and when the next
    one starts. The client's backoff spaces the attempts, so the lines cannot flood."""
    printed = None
    try:
        while True:
            await client.wait_state(ConnectionState.RECONNECTING)
            retry = client.retry
            if retry is not None and retry is not printed:
                printed = retry
                print(
                    f"wirthforge watch: {retry.failure.describe()}; "
                    f"retrying in {retry.delay:.1f} s",
                    file=err,
                    flush=True,
                )
            await client.wait_state(ConnectionState.CONNECTING)
    except ClientClosed:
        return


async def watch(
    url: str,
    *,
    summary: bool,
    out: TextIO = sys.stdout,
    seconds: float | None = None,
    token: str | None = None,
    err: TextIO | None = None,
) -> int:
    """Watch ``url`` until ``seconds`` pass (None: until the server closes with 1000).

    Returns 0 if a connection was made, 1 if the server could never be reached or refused a
    connection (a refusal ends the watch, on a reconnect too). Otherwise it reconnects on its
    own, so it also shows a server coming back; what it is doing meanwhile goes to ``err``.
    ``token``: the server's access token, sent as a Bearer header. ``err``: sys.stderr.
    """
    err = sys.stderr if err is None else err
    deadline = math.inf if seconds is None else trio.current_time() + seconds
    headers = None if token is None else {"Authorization": f"Bearer {token}"}
    print(f"wirthforge watch: connecting to {url}", file=err, flush=True)
    async with connect(url, extra_headers=headers) as client:
        state = _Summary()
        with trio.CancelScope(deadline=deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_narrate, client, err)
                if summary:
                    nursery.start_soon(_pinger, client, state)
                    nursery.start_soon(_reporter, client, state, out)
                async for event in client:
                    if summary:
                        state.add(event)
                    else:
                        print(event_line(event), file=out, flush=True)
                nursery.cancel_scope.cancel()  # the client closed for good (1000)
    error = client.last_error
    if refusal_is_final(error):  # the client stopped for it (at once, or on a reconnect)
        status = getattr(error, "status_code", None)
        hint = ""
        if status == 401:
            hint = "; give it the server's access token in WIRTHFORGE_TOKEN (or --token)"
        elif status == 403 and token is not None:
            hint = "; check the access token given in WIRTHFORGE_TOKEN or --token"
        why = describe_handshake_error(error)
        print(f"wirthforge watch: {url} refused the connection ({why}){hint}", file=err)
        return 1
    if not any(new is ConnectionState.CONNECTED for _, new in client.transitions):
        print(
            f"wirthforge watch: could not connect to {url}: {describe_handshake_error(error)}",
            file=err,
        )
        return 1
    return 0


async def watch_until_interrupted(
    url: str, *, summary: bool, seconds: float | None = None, token: str | None = None
) -> int:
    """:func:`watch` for the command line: Ctrl+C (SIGINT) ends it quietly with status 130.

    The signal cancels the watch like any other end, so the client still closes with 1000
    and no traceback is printed.
    """
    code = INTERRUPTED  # kept if the signal cancels the watch before it returns
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def until_interrupted() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(until_interrupted)
            code = await watch(url, summary=summary, seconds=seconds, token=token)
            nursery.cancel_scope.cancel()
    return code
