"""Hypercorn's trio worker, told to stop without polling: the patch lives in the seam.

Kept so that today's call site (the end of ``app.py``) and its name keep working; the patch
itself is :func:`wirthforge_trio.transport.fastpath.patch_hypercorn_worker`.
"""

from __future__ import annotations

from .transport.fastpath import patch_hypercorn_worker as wait_without_polling
from .transport.fastpath import wait_for_event

__all__ = ["wait_for_event", "wait_without_polling"]
