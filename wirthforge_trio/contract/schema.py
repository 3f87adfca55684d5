"""Draft-07 JSON Schemas generated from the contract classes, so the two never drift.

``wirthforge schema`` writes them to ``schemas/``; a test fails when the checked-in files
differ from what this module generates.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import orjson

from ..version import __version__
from .events import ALL_EVENTS, CHANNELS, CLIENT_MESSAGES, ClientMessage, Event, FrameEvent

DRAFT_07: Final = "http://json-schema.org/draft-07/schema#"
_CAMEL_BOUNDARY = re.compile(r"_([a-z0-9])")


def to_camel(name: str) -> str:
    """``frame_number`` → ``frameNumber``: the wire spells every field in camelCase."""
    return _CAMEL_BOUNDARY.sub(lambda m: m.group(1).upper(), name)


SERVER_SCHEMA_FILE: Final = "server-events.schema.json"
CLIENT_SCHEMA_FILE: Final = "client-messages.schema.json"


def _type_schema(tp: Any) -> tuple[dict[str, Any], bool]:
    """JSON Schema for a Python annotation, and whether ``None`` is allowed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        (inner,) = args
        schema, _ = _type_schema(inner)
        return schema, True
    if origin is Literal:
        values = list(typing.get_args(tp))
        if len(values) == 1:
            return {"type": "number", "const": values[0]}, False
        return {"type": "string", "enum": values}, False
    if origin is tuple:
        item, _ = typing.get_args(tp)
        return {"type": "array", "items": _type_schema(item)[0]}, False
    if origin is dict or tp is dict:
        return {"type": "object", "additionalProperties": True}, False
    if attrs.has(tp):
        return _object_schema(tp), False
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if tp in simple:
        return {"type": simple[tp]}, False
    raise TypeError(f"no JSON Schema mapping for {tp!r}")


def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for a in attrs.fields(cls):
        schema, nullable = _type_schema(hints[a.name])
        extra = dict(a.metadata.get("schema", {}))
        if "items" in extra:
            schema["items"] = {**schema["items"], **extra.pop("items")}
        schema.update(extra)
        properties[to_camel(a.name)] = schema
        # A field that can never be None is always on the wire, hence required, unless the
        # published contract lets clients do without it ("optional" in its metadata).
        if not nullable and not a.metadata.get("optional"):
            required.append(to_camel(a.name))
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def _definition_name(cls: type) -> str:
    return cls.__name__[0].lower() + cls.__name__[1:]


def event_schema(cls: type[Event]) -> dict[str, Any]:
    """The envelope schema of one server event."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {
        "type": {"const": cls.TYPE},
        "channel": {"const": cls.CHANNEL},
        "timestamp": {"$ref": "#/definitions/timestamp"},
    }
    required = ["type", "channel", "timestamp"]
    if issubclass(cls, FrameEvent):
        props["frameNumber"] = {"$ref": "#/definitions/frameNumber"}
        required.append("frameNumber")
    props["payload"] = _type_schema(hints["payload"])[0]
    required.append("payload")
    return {
        "type": "object",
        "title": cls.TITLE,
        "description": (cls.__doc__ or cls.TITLE).strip().splitlines()[0],
        "x-standard": cls.STANDARD,
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def client_message_schema(cls: type[ClientMessage]) -> dict[str, Any]:
    """The schema of one client message: ``type``, optional ``payload`` and ``timestamp``."""
    hints = typing.get_type_hints(cls)
    payload = attrs.fields_dict(cls)["payload"]
    return {
        "type": "object",
        "title": cls.TYPE,
        "properties": {
            "type": {"const": cls.TYPE},
            "timestamp": {"type": "integer", "minimum": 0},
            "payload": _type_schema(hints["payload"])[0],
        },
        "required": ["type"] if payload.default is not attrs.NOTHING else ["type", "payload"],
        "additionalProperties": False,
    }


_SHARED_DEFINITIONS: Final[dict[str, Any]] = {
    "timestamp": {
        "type": "integer",
        "minimum": 0,
        "description": "Unix epoch milliseconds",
    },
    "frameNumber": {
        "type": "integer",
        "minimum": 0,
        "description": "60 Hz frame counter; never decreases on a connection",
    },
    "channelType": {"type": "string", "enum": list(CHANNELS)},
}


def server_schema() -> dict[str, Any]:
    """Every message the server sends: the nine standard events and the extensions."""
    definitions = dict(_SHARED_DEFINITIONS)
    for cls in ALL_EVENTS:
        definitions[_definition_name(cls)] = event_schema(cls)
    return {
        "$schema": DRAFT_07,
        "title": "wirthforge-trio server events",
        "description": "Generated from wirthforge_trio.contract.events by `wirthforge schema`.",
        "version": __version__,
        "definitions": definitions,
        "oneOf": [{"$ref": f"#/definitions/{_definition_name(cls)}"} for cls in ALL_EVENTS],
    }


def client_schema() -> dict[str, Any]:
    """Every message a client may send."""
    definitions = {_definition_name(cls): client_message_schema(cls) for cls in CLIENT_MESSAGES}
    return {
        "$schema": DRAFT_07,
        "title": "wirthforge-trio client messages",
        "description": "Generated from wirthforge_trio.contract.events by `wirthforge schema`.",
        "version": __version__,
        "definitions": definitions,
        "oneOf": [{"$ref": f"#/definitions/{name}"} for name in definitions],
    }


def render(schema: dict[str, Any]) -> str:
    """Stable text for a schema file: declaration order, indented, newline-terminated."""
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode() + "\n"


def generated_files() -> dict[str, str]:
    """File name → content, as ``schemas/`` must hold them."""
    return {
        SERVER_SCHEMA_FILE: render(server_schema()),
        CLIENT_SCHEMA_FILE: render(client_schema()),
    }


def write(directory: Path) -> list[Path]:
    """Write the schema files into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_files().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
