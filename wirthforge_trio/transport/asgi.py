"""The WebSocket send path beneath Quart's per-message machinery, through Quart's own hooks.

Quart lets an app choose the classes that wrap each WebSocket (``websocket_class``) and speak
ASGI for it (``asgi_websocket_class``). Their defaults do work on every message that this
server does not need: ``send`` awaits ``accept()`` (which builds an empty ``Headers`` object
each time) and ``send_data`` awaits the ``websocket_sent`` signal (nobody here listens). At
60 frames a second to every client, that is a measurable share of the server's CPU
(``docs/benchmarks/README.md``). These subclasses keep the public behaviour and skip the
work: after the handshake, a send is one dict and one await of Hypercorn's ``send``. (Only
the send side is made leaner: Quart's reading side differs between the Quart releases this
supports. Both sides translate Quart 0.23's error for a client that has left into the
transport's ``ClientGone``.)
"""

from __future__ import annotations

from typing import Any

from quart.wrappers import base as quart_base
from quart_trio.asgi import TrioASGIWebsocketConnection
from quart_trio.wrappers.websocket import TrioWebsocket

from .connection import ClientGone

# Quart 0.23 ends a pending ``receive`` with this error when the client disconnects (0.22
# only cancels the handler); a Quart without it never raises it.
_QUART_DISCONNECTED: type[BaseException] = getattr(
    quart_base, "ClientDisconnectedError", ClientGone
)


class LeanWebsocket(TrioWebsocket):
    """Quart's WebSocket whose ``send`` goes straight out once the handshake is done."""

    _lean_accepted = False
    asgi_send: Any = None
    """The server's ASGI ``send`` callable (``direct.py`` looks behind it)."""

    async def accept(self, headers: Any = None, subprotocol: str | None = None) -> None:
        await super().accept(headers, subprotocol)
        self._lean_accepted = True

    async def send(self, data: str | bytes) -> None:
        if not self._lean_accepted:
            await self.accept()
        try:
            await self._send(data)
        except _QUART_DISCONNECTED:
            raise ClientGone from None

    async def receive(self) -> str | bytes:
        """Quart's receive; a disconnected client raises :class:`ClientGone`, whichever
        Quart release says so in its own way."""
        try:
            return await super().receive()
        except _QUART_DISCONNECTED:
            raise ClientGone from None


class LeanASGIWebsocketConnection(TrioASGIWebsocketConnection):
    """The ASGI side of a WebSocket, without the ``websocket_sent`` signal per message."""

    def _create_websocket_from_scope(self, send: Any) -> Any:
        websocket = super()._create_websocket_from_scope(send)
        if isinstance(websocket, LeanWebsocket):
            websocket.asgi_send = send
        return websocket

    async def send_data(self, send: Any, data: str | bytes) -> None:
        if getattr(self, "_disconnected", False):
            # Newer Quart raises its own error for a send after the client left: keep it.
            await super().send_data(send, data)
            return
        if isinstance(data, str):
            await send({"type": "websocket.send", "bytes": None, "text": data})
        else:
            await send({"type": "websocket.send", "bytes": data, "text": None})
