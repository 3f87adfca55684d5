"""The access token the security tests configure, and the headers that carry it."""

from __future__ import annotations

TOKEN = "s3cret-Token_for.tests~0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
WS_BEARER = [(b"Authorization", f"Bearer {TOKEN}".encode())]
