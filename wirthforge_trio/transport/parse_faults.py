"""A client frame that cannot be parsed gets a close frame naming the fault, not a silent drop.

wsproto reports a frame it cannot parse (a text frame that is not UTF-8, an unmasked frame,
reserved bits, a control frame over 125 bytes: RFC 6455's protocol errors) as a
``CloseConnection`` event with the status code and reason (1007, 1002), but leaves its own
state open. Hypercorn answers a ``CloseConnection`` with a close frame only when the peer
started the closing handshake, so on a parse failure it ends the TCP connection without one:
the browser sees 1006 (abnormal closure) and no reason, and nothing explains the drop.

RFC 6455 §7.1.7 asks an endpoint that fails a connection to send a close frame with the
status code first. :func:`answer_parse_faults` makes Hypercorn do so: a ``CloseConnection``
that wsproto yields while still open (only a parse failure does that; a close frame from the
client moves its state on before the event is yielded) is marked as the start of a closing
handshake, so Hypercorn sends the matching close frame, with the code and reason, before it
closes the socket. The server's log says which connection, and why.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection, Event

from .direct import hypercorn_websocket


def answer_parse_faults(
    asgi_send: Callable[..., Any],
    on_fault: Callable[[int, str], None],
    *,
    on_close: Callable[[int], None] | None = None,
) -> Callable[[], None] | None:
    """Answer parse failures on the WebSocket behind ``asgi_send`` with a close frame, and
    report each as ``on_fault(code, reason)``; a close frame from the client as
    ``on_close(code)``. Returns the function that stops this (call it
    when the connection ends: wsproto's connection then no longer refers to ``on_fault``), or
    None when it is not a WebSocket of Hypercorn and wsproto as this was written for (the
    connection is then served as before)."""
    ws_stream = hypercorn_websocket(asgi_send)
    connection = getattr(ws_stream, "connection", None)
    if not isinstance(connection, Connection) or not isinstance(
        getattr(connection, "_state", None), ConnectionState
    ):
        return None
    events = connection.events

    def events_answering_faults() -> Generator[Event, None, None]:
        for event in events():
            if isinstance(event, CloseConnection) and connection.state is ConnectionState.OPEN:
                connection._state = ConnectionState.REMOTE_CLOSING
                on_fault(event.code, event.reason or "")
            elif isinstance(event, CloseConnection) and on_close is not None:
                on_close(event.code)  # the client's own close frame (Hypercorn drops its code)
            yield event

    def stop() -> None:
        vars(connection).pop("events", None)

    connection.events = events_answering_faults  # type: ignore[method-assign]
    return stop
