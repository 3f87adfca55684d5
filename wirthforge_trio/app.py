"""Hypercorn's entry point: ``hypercorn -k trio wirthforge_trio.app:app``.

Importing this module is running the server: it builds the app from the ``WIRTHFORGE_*``
environment and configures logging, and in a worker that Hypercorn's supervisor started it
has the worker wait for its stop without polling. Programs that build or embed the server
import :mod:`wirthforge_trio.web` or :mod:`wirthforge_trio.server` instead, which build
nothing on import (docs/decisions.md, "Layers").
"""

from __future__ import annotations

from .transport import fastpath
from .web.application import app_from_environment

app = app_from_environment()
if fastpath.in_hypercorn_worker():
    fastpath.patch_hypercorn_worker()
