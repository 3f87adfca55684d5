"""The Quart-Trio app, one module per job: :mod:`.application` builds it, :mod:`.access`,
:mod:`.page`, :mod:`.api` and :mod:`.websocket` hold its routes, :mod:`.state` what they
share. Importing this package builds nothing; ``wirthforge_trio.app`` is Hypercorn's entry."""

from __future__ import annotations

from .application import SHUTDOWN_CLOSE_TIMEOUT, WRONG_WORKER_MESSAGE, WirthforgeApp, create_app
from .state import ServerState

__all__ = [
    "SHUTDOWN_CLOSE_TIMEOUT",
    "WRONG_WORKER_MESSAGE",
    "ServerState",
    "WirthforgeApp",
    "create_app",
]
