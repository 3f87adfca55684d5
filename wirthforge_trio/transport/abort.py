"""Abort a connection whose writer is stuck, when nothing else can reach it.

Hypercorn sends inside a shielded cancel scope, so a writer blocked on a peer that stopped
reading cannot be cancelled, and ASGI gives the app no handle on the socket. The kernel's
send timeout (TCP_USER_TIMEOUT, see :func:`wirthforge_trio.server.bind_listener`) ends such
a connection in the end; at shutdown the server cannot wait that long. Then it finds the
connection's socket among the process's descriptors by its two addresses and shuts it down:
the blocked send fails at once, Hypercorn sees the connection closed, and everything unwinds.
Linux only (``/proc/self/fd``); elsewhere it does nothing and the send timeout remains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterable

log = logging.getLogger("wirthforge_trio.transport")

Address = tuple[str, int]


def _normal(address: object) -> Address | None:
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, str) and isinstance(port, int):
            return (host.removeprefix("::ffff:"), port)
    return None


def shutdown_sockets(pairs: Iterable[tuple[Address, Address]]) -> int:
    """Shut down every socket of this process whose (local, peer) addresses are in ``pairs``;
    how many were found."""
    wanted = {(_normal(local), _normal(peer)) for local, peer in pairs}
    wanted.discard((None, None))
    if not wanted or not os.path.isdir("/proc/self/fd"):
        return 0
    found = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            duplicate = socket.socket(fileno=os.dup(fd))
        except (ValueError, OSError):
            continue
        with duplicate:
            try:
                key = (_normal(duplicate.getsockname()), _normal(duplicate.getpeername()))
            except OSError:  # a listener, or not connected
                continue
            if key in wanted:
                with contextlib.suppress(OSError):
                    duplicate.shutdown(socket.SHUT_RDWR)
                found += 1
    if found:
        log.warning("aborted %d connection(s) that could not take their close frame", found)
    return found
