"""Every server message a test receives is checked against the project's generated schema and,
for the nine standard events, against the published WF-TECH-003 schema in
``../shared/contract/`` when that folder exists."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from wirthforge_trio.contract import schema as project_schema
from wirthforge_trio.contract.events import STANDARD_EVENTS

from .paths import PUBLISHED_SCHEMA

STANDARD_TYPES = frozenset(cls.TYPE for cls in STANDARD_EVENTS)

_project_validator = jsonschema.Draft7Validator(project_schema.server_schema())
_published_validator = (
    jsonschema.Draft7Validator(json.loads(PUBLISHED_SCHEMA.read_text()))
    if PUBLISHED_SCHEMA.exists()
    else None
)


def check_message(text: str | bytes) -> dict[str, Any]:
    """Parse one server message and fail the test unless both schemas accept it."""
    assert isinstance(text, str), "server messages are text frames"
    message = json.loads(text)
    errors = [e.message for e in _project_validator.iter_errors(message)]
    assert not errors, f"message fails the project schema: {errors}: {text[:300]}"
    if _published_validator is not None and message.get("type") in STANDARD_TYPES:
        errors = [e.message for e in _published_validator.iter_errors(message)]
        assert not errors, f"standard message fails the published schema: {errors}: {text[:300]}"
    return message  # type: ignore[no-any-return]
