"""Just enough WebSocket (RFC 6455) for the load generator, on raw bytes and the standard library.

The client side of the opening handshake, masked client frames, and an incremental reader of
server frames (unmasked; 7-, 16- and 64-bit lengths; fragmented messages reassembled; control
frames passed through). No extensions are offered, so no permessage-deflate is negotiated.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Final

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")


class ProtocolError(Exception):
    """The server sent something a WebSocket server must not send."""


class HandshakeError(Exception):
    """The server refused or botched the opening handshake."""


def new_key() -> bytes:
    """A fresh ``Sec-WebSocket-Key``."""
    return base64.b64encode(os.urandom(16))


def accept_for(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer ``key`` with."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def handshake_request(host: str, port: int, path: str, key: bytes) -> bytes:
    """The HTTP/1.1 upgrade request of a client that offers no extension or subprotocol."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode('ascii')}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode("ascii")


def parse_handshake_response(data: bytes | bytearray, key: bytes) -> int:
    """The length of the response head in ``data`` (frames may follow it), or -1 if incomplete.

    Raises :class:`HandshakeError` unless it is a ``101`` with the right accept value.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > 16384:
            raise HandshakeError("handshake response head over 16 KiB")
        return -1
    head = bytes(data[:end]).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise HandshakeError(f"expected 101 Switching Protocols, got {status_line!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("sec-websocket-accept", "").encode("ascii") != accept_for(key):
        raise HandshakeError("wrong or missing Sec-WebSocket-Accept")
    if "sec-websocket-extensions" in headers:
        raise HandshakeError(f"unrequested extension {headers['sec-websocket-extensions']!r}")
    return end + 4


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (masking and unmasking are the same)."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def encode_client_frame(
    payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True, mask: bytes | None = None
) -> bytes:
    """One client frame: masked (with a random key unless ``mask`` is given), as RFC 6455 asks."""
    if mask is None:
        mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + _U16.pack(n)
    else:
        head = bytes((first, 0x80 | 127)) + _U64.pack(n)
    return head + mask + apply_mask(payload, mask)


class FrameReader:
    """Incremental reader of server frames: :meth:`feed` bytes, get whole messages back.

    Each message is ``(opcode, payload)``; a fragmented message comes back once, whole, with
    its first frame's opcode. Control frames (close, ping, pong) come back as they arrive,
    also between the fragments of a message.
    """

    __slots__ = ("_buffer", "_fragment_opcode", "_fragments", "max_message")

    def __init__(self, max_message: int = 16 * 1024 * 1024) -> None:
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._fragment_opcode = -1
        self.max_message = max_message

    @property
    def pending(self) -> int:
        """Bytes held back: the start of a frame whose end has not arrived yet."""
        return len(self._buffer) + sum(len(f) for f in self._fragments)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._buffer:
            data = self._buffer + data
        messages: list[tuple[int, bytes]] = []
        pos = 0
        end = len(data)
        while end - pos >= 2:
            first = data[pos]
            second = data[pos + 1]
            if second & 0x80:
                raise ProtocolError("a server frame is masked")
            if first & 0x70:
                raise ProtocolError("reserved bits set (no extension was negotiated)")
            length = second & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = _U64.unpack_from(data, pos + 2)[0]
                head = 10
            if length > self.max_message:
                raise ProtocolError(f"frame of {length} bytes")
            if end - pos < head + length:
                break
            payload = data[pos + head : pos + head + length]
            pos += head + length
            opcode = first & 0x0F
            fin = first & 0x80
            if opcode >= 0x8:
                if not fin or length > 125:
                    raise ProtocolError("fragmented or oversized control frame")
                messages.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if self._fragment_opcode < 0:
                    raise ProtocolError("continuation frame outside a fragmented message")
                self._fragments.append(payload)
                if fin:
                    messages.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments = []
                    self._fragment_opcode = -1
            elif self._fragment_opcode >= 0:
                raise ProtocolError("new message before the fragmented one ended")
            elif fin:
                messages.append((opcode, payload))
            else:
                self._fragment_opcode = opcode
                self._fragments = [payload]
        self._buffer = data[pos:] if pos < end else b""
        return messages
