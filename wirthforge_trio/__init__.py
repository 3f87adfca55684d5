"""wirthforge-trio: WIRTHFORGE's real-time WebSocket protocol and server (WF-TECH-003) on Trio.

For programs that embed it: ``serve`` and ``running`` (see :mod:`wirthforge_trio.server`),
``Settings``, ``create_app``; imported on first use so that ``import wirthforge_trio`` stays
light.
"""

from __future__ import annotations

from typing import Any

from .version import __version__

__all__ = ["Settings", "__version__", "create_app", "running", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("serve", "running"):
        from . import server

        return getattr(server, name)
    if name == "Settings":
        from .config import Settings

        return Settings
    if name == "create_app":
        from .web import create_app

        return create_app
    raise AttributeError(f"module 'wirthforge_trio' has no attribute {name!r}")
