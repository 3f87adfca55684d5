"""What permessage-deflate costs the server per frame, measured in wsproto (Hypercorn's framing).

Browsers offer permessage-deflate on every WebSocket and Hypercorn always accepts it, so a
browser client's frames are compressed, per connection, with a context that carries over
between messages. This compares framing the same stream of real energy frames with and
without the extension: CPU per message and bytes on the wire.

    python benchmarks/deflate_cost.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import json
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request
from wsproto.extensions import PerMessageDeflate

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


def server_connection(deflate: bool) -> WSConnection:
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(HANDSHAKE)
    request = next(ws.events())
    assert isinstance(request, Request)
    ws.send(AcceptConnection(extensions=[PerMessageDeflate()] if deflate else []))
    return ws


def frames(count: int) -> list[str]:
    """Energy frames as the server sends them while a model generates: the numbers move."""
    out = []
    for n in range(count):
        payload = {
            "type": "energy_update",
            "channel": "energy",
            "timestamp": 1_764_000_000_000 + n * 16,
            "frameNumber": 1000 + n,
            "payload": {
                "totalEnergy": round(1.5 + n * 0.0123, 6),
                "deltaEnergy": 0.1 if n % 3 else 0.0,
                "tokensGenerated": n % 3 and 1,
                "processingTime": round(0.05 + (n % 7) * 0.003, 4),
                "modelId": "demo",
            },
        }
        out.append(json.dumps(payload, separators=(",", ":")))
    return out


def measure(deflate: bool, texts: list[str]) -> tuple[float, float]:
    """(µs per message, bytes per message) for framing every text on one connection."""
    ws = server_connection(deflate)
    started = time.process_time()
    sent = 0
    for text in texts:
        sent += len(ws.send(Message(data=text)))
    elapsed = time.process_time() - started
    return elapsed / len(texts) * 1e6, sent / len(texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    texts = frames(args.messages)
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for deflate in (False, True):
            results[deflate].append(measure(deflate, texts))
    print(f"{args.messages} energy frames of ~{sum(map(len, texts)) // len(texts)} bytes:")
    for deflate, rows in results.items():
        cpu = sorted(r[0] for r in rows)[len(rows) // 2]
        size = rows[0][1]
        label = "permessage-deflate" if deflate else "plain"
        print(f"  {label:19} {cpu:6.1f} µs per message (median of {len(rows)}), {size:6.1f} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
