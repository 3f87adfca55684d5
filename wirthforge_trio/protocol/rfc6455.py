"""The RFC 6455 byte work the fast path needs, as pure functions on bytes (no I/O, no library).

Two jobs only: frame a server's text message (unmasked, unfragmented, §5.2) and read the
small whole text messages at the start of what a client sent (masked, §5.3). Everything else
(control frames, fragments, extensions, long or invalid messages) is left to a full parser:
wsproto, behind Hypercorn. Tests hold both functions to what wsproto does, byte for byte.
See docs/decisions.md, "The send path".
"""

from __future__ import annotations

from typing import Final

FIN_TEXT: Final = 0x81
"""First byte of an unfragmented text frame (FIN and opcode 1)."""
MASKED: Final = 0x80
"""Second byte's mask bit: set in every frame a client sends (RFC 6455 §5.3)."""
SMALL_PAYLOAD: Final = 125
"""The longest payload whose length fits the frame's second byte (no extended length)."""
_HEADER_TABLE_SIZE: Final = 1024


def _text_header(n: int) -> bytes:
    if n < 126:
        return bytes((FIN_TEXT, n))
    if n < 65536:
        return bytes((FIN_TEXT, 126)) + n.to_bytes(2, "big")
    return bytes((FIN_TEXT, 127)) + n.to_bytes(8, "big")


_TEXT_HEADERS: Final = tuple(_text_header(n) for n in range(_HEADER_TABLE_SIZE))
"""Headers of the short text frames, made once: a lookup touches less memory than building
one on every tick with cold caches (docs/benchmarks/README.md)."""


def text_frame(payload: bytes) -> bytes:
    """One unmasked WebSocket text frame (RFC 6455 §5.2), as a server sends it."""
    n = len(payload)
    return (_TEXT_HEADERS[n] if n < _HEADER_TABLE_SIZE else _text_header(n)) + payload


def _unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    mask = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little"
    )


def leading_texts(data: bytes, limit: int = SMALL_PAYLOAD) -> tuple[list[str], int]:
    """The whole text messages at the start of ``data`` as a client sends them (masked,
    unfragmented, no extension bits, at most ``limit`` ≤ 125 bytes of valid UTF-8), and how
    many bytes they took. Parsing stops at the first frame that is anything else, or not
    all there: the rest, from that frame's first byte, is for a full parser."""
    texts: list[str] = []
    at = 0
    end = len(data)
    while at + 6 <= end and data[at] == FIN_TEXT:
        length = data[at + 1] - MASKED
        if length < 0 or length > limit:
            break
        start = at + 6
        stop = start + length
        if stop > end:
            break
        try:
            texts.append(_unmask(data[start:stop], data[at + 2 : start]).decode())
        except UnicodeDecodeError:
            break  # a protocol error: the full parser reports it and fails the connection
        at = stop
    return texts, at
