"""Hypercorn's entry point: ``hypercorn -k trio wirthforge_trio.app:app``.

Importing this module is running the server: it builds the app from the ``WIRTHFORGE_*``
environment and configures logging. Programs that build or embed the server import
:mod:`wirthforge_trio.web` or :mod:`wirthforge_trio.server` instead, which build nothing on
import (docs/decisions.md, "Layers").
"""

from __future__ import annotations

from .web.application import app_from_environment
from .worker import wait_without_polling

app = app_from_environment()
# Imported by Hypercorn's trio worker: wait for its supervisor's shutdown word without polling.
wait_without_polling()
