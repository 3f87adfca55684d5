"""The WebSocket close codes this protocol uses, defined once for the server and the client
(docs/protocol.md, "Close codes")."""

from __future__ import annotations

from typing import Final

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_ABNORMAL: Final = 1006
"""Never sent: what a peer reports when the connection ended without a close frame."""
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_HEARTBEAT_TIMEOUT: Final = 4408
"""Application close code (4000-4999) for a client that stopped answering heartbeats."""
CLOSE_SLOW_CONSUMER: Final = 4413
"""Application close code (after HTTP 413) for a client that left more than its backlog
limit of lossless messages unread; it reconnects with resume and loses nothing."""
