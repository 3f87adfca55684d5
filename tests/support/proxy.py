"""A loopback TCP proxy that tests use to cut connections the way networks do.

Clients connect to the proxy, which relays bytes to the server. ``cut("client")`` resets the
client's connection (the server sees its end closed with no WebSocket close frame);
``cut("server")`` resets the server's connection (the client sees its end closed).
``down_for`` then refuses new connections for a while, as a sleeping laptop or a restarting
server would.
"""

from __future__ import annotations

import socket
import struct
from functools import partial
from typing import Literal

import attrs
import trio


def _reset(stream: trio.SocketStream) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER 0), like a dead peer."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()


@attrs.define
class _Link:
    client: trio.SocketStream
    server: trio.SocketStream
    scope: trio.CancelScope


@attrs.define
class TcpProxy:
    target_port: int
    port: int = 0
    links: list[_Link] = attrs.field(factory=list)
    refuse_until: float = 0.0
    accepted: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, self._handle, self.port, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self.port)

    async def _handle(self, client: trio.SocketStream) -> None:
        if trio.current_time() < self.refuse_until:
            _reset(client)
            return
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            _reset(client)
            return
        self.accepted += 1
        with trio.CancelScope() as scope:
            link = _Link(client, server, scope)
            self.links.append(link)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server, scope)
                    nursery.start_soon(self._pump, server, client, scope)
            finally:
                self.links.remove(link)
        for stream in (client, server):
            if stream.socket.fileno() != -1:
                await stream.aclose()

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    def cut(self, side: Literal["client", "server"], *, down_for: float = 0.0) -> int:
        """Kill every relayed connection: ``side`` gets a reset, the other end a plain close
        (no WebSocket close frame on either). Returns how many were cut."""
        self.refuse_until = trio.current_time() + down_for
        links = list(self.links)
        for link in links:
            _reset(link.client if side == "client" else link.server)
            link.scope.cancel()  # the handler then closes the other end
        return len(links)

    def retarget(self, port: int) -> None:
        """Relay new connections to another server (a restarted one)."""
        self.target_port = port
