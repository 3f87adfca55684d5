"""JSON codec for the contract: a cattrs converter for the wire shape, orjson for bytes.

Encoding happens once per event (the transport shares the text among connections), so the
converter's generated functions and orjson keep it cheap. Decoding is only for the small
messages a client sends; every way it can go wrong becomes a :class:`ClientMessageError`
that names what was wrong, for the protocol to turn into an ``error_event``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
import cattrs
import fastjsonschema
import jsonschema
import orjson
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .events import (
    CLIENT_MESSAGES_BY_TYPE,
    EVENTS_BY_TYPE,
    ClientMessage,
    Event,
    FrameEvent,
    HeartbeatResponse,
    HeartbeatResponsePayload,
)
from .schema import client_message_schema, to_camel


def _overrides(cls: type) -> dict[str, Any]:
    return {
        a.name: override(rename=to_camel(a.name), omit_if_default=a.default is None)
        for a in attrs.fields(cls)
    }


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def unstructure_factory(cls: type) -> Callable[[Any], dict[str, Any]]:
        fields_fn: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(
            cls, conv, **_overrides(cls)
        )
        if not issubclass(cls, Event):
            return fields_fn
        framed = issubclass(cls, FrameEvent)
        type_, channel = cls.TYPE, cls.CHANNEL

        def envelope(event: Any) -> dict[str, Any]:
            out: dict[str, Any] = {"type": type_, "channel": channel, "timestamp": event.timestamp}
            if framed:
                out["frameNumber"] = event.frame_number
            out["payload"] = conv.unstructure(event.payload)
            return out

        return envelope

    def structure_factory(cls: type) -> Callable[[Any, type], Any]:
        return make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **_overrides(cls))

    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    conv.register_structure_hook_factory(attrs.has, structure_factory)
    return conv


converter = _make_converter()


def to_wire(event: Event) -> dict[str, Any]:
    """The event as the JSON-ready dict the wire carries."""
    return converter.unstructure(event)  # type: ignore[no-any-return]


def encode(event: Event) -> str:
    """The event's wire text (a WebSocket text frame), encoded once.

    Text that is not valid Unicode (lone surrogates, which a runtime's JSON escapes or an
    embedding program's source can produce) is sent with :func:`valid_text` applied rather
    than failing: orjson, UTF-8 and the WebSocket cannot carry a surrogate.
    """
    obj = converter.unstructure(event)
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return orjson.dumps(_valid_strings(obj)).decode()


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: surrogate pairs joined, lone surrogates replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _valid_strings(value: Any) -> Any:
    """A JSON-ready value with :func:`valid_text` applied to every string, keys included."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {
            valid_text(k) if isinstance(k, str) else k: _valid_strings(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_valid_strings(v) for v in value]
    return value


class EventDecodeError(ValueError):
    """A server message that is not a contract event (for clients of this server)."""


def decode_event(data: str | bytes) -> Event:
    """The typed event a server message carries (the inverse of :func:`encode`)."""
    try:
        obj = orjson.loads(data)
        cls = EVENTS_BY_TYPE[obj["type"]]
        fields = {"timestamp": obj["timestamp"], "payload": obj["payload"]}
        if issubclass(cls, FrameEvent):
            fields["frameNumber"] = obj["frameNumber"]
        return converter.structure(fields, cls)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise EventDecodeError(f"not a contract event: {exc!r}") from None
    except cattrs.BaseValidationError as exc:
        raise EventDecodeError(f"malformed {obj.get('type')!r} event: {exc}") from None


def encode_client_message(message: ClientMessage) -> str:
    """A client message's wire text: ``{"type": ..., "payload": {...}}``."""
    body = {"type": message.TYPE, "payload": converter.unstructure(message.payload)}  # type: ignore[attr-defined]
    return orjson.dumps(body).decode()


class ClientMessageError(Exception):
    """A client message that cannot be accepted; ``code`` is the error_event code."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


_CLIENT_ENVELOPE_KEYS = frozenset({"type", "payload", "timestamp"})

MAX_CLIENT_DEPTH: Final = 32
"""Nesting levels a client message may have. Deeper ones are refused: a ``ping`` payload is
echoed in the ``pong``, and orjson cannot encode past 254 levels (schema checks and the
converter recurse too), so a deep one would break the connection instead of being answered."""


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels (the top one is level 1)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _opening_brackets(data: str | bytes) -> int:
    """How many ``{`` and ``[`` the text holds (in strings too): at least its nesting depth,
    so a message with no more than the limit cannot be too deep, without walking it."""
    if isinstance(data, str):
        return data.count("{") + data.count("[")
    return data.count(b"{") + data.count(b"[")


def decode_client_message(data: str | bytes) -> ClientMessage:
    """Parse and check one client message, or raise :class:`ClientMessageError`."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ClientMessageError("INVALID_JSON", f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ClientMessageError(
            "INVALID_MESSAGE",
            f"message must be a JSON object with a 'type', got {type(obj).__name__}",
        )
    answer = _plain_heartbeat_response(obj)
    if answer is not None:
        return answer
    return _checked(obj, data)


def _plain_heartbeat_response(obj: dict[str, Any]) -> HeartbeatResponse | None:
    """``{"type": "heartbeat_response", "payload": {"sequence": n}}``, what every client sends
    every second, built at once: the schema check and cattrs would take it unchanged. Any
    other shape (another field, a number that is not a plain int) is left to them."""
    if len(obj) != 2 or obj.get("type") != "heartbeat_response":
        return None
    payload = obj.get("payload")
    if type(payload) is not dict or len(payload) != 1:
        return None
    sequence = payload.get("sequence")
    if type(sequence) is not int or sequence < 0:
        return None
    return HeartbeatResponse(payload=HeartbeatResponsePayload(sequence=sequence))


def _checked(obj: dict[str, Any], data: str | bytes) -> ClientMessage:
    """A parsed client message checked against its type's schema and structured."""
    if _opening_brackets(data) > MAX_CLIENT_DEPTH and _deeper_than(obj, MAX_CLIENT_DEPTH):
        raise ClientMessageError(
            "INVALID_MESSAGE",
            f"message nests objects and arrays deeper than {MAX_CLIENT_DEPTH} levels",
            limit=MAX_CLIENT_DEPTH,
        )
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ClientMessageError("INVALID_MESSAGE", "message has no string field 'type'")
    cls = CLIENT_MESSAGES_BY_TYPE.get(kind)
    if cls is None:
        known = ", ".join(sorted(CLIENT_MESSAGES_BY_TYPE))
        raise ClientMessageError(
            "UNKNOWN_MESSAGE_TYPE",
            f"unknown message type {kind[:64]!r}; this server accepts: {known}",
            type=kind[:64],
        )
    extra = sorted(set(obj) - _CLIENT_ENVELOPE_KEYS)
    if extra:
        raise ClientMessageError(
            "INVALID_FIELD",
            f"{kind}: unexpected top-level field(s) {', '.join(map(repr, extra))}; "
            "put message data under 'payload'",
            fields=extra,
        )
    problem = _first_problem(cls, obj)
    if problem is not None:
        raise ClientMessageError("INVALID_FIELD", f"{kind}: {problem}", type=kind)
    body = {"payload": obj["payload"]} if "payload" in obj else {}
    return converter.structure(body, cls)


_VALIDATORS: dict[str, jsonschema.Draft7Validator] = {}
_CHECKS: dict[str, Callable[[Any], Any]] = {}


def _check(cls: type[ClientMessage]) -> Callable[[Any], Any]:
    """The schema compiled to Python by fastjsonschema: some 30 times quicker than jsonschema
    on a valid message, which is nearly every message (heartbeat responses, pings)."""
    check = _CHECKS.get(cls.TYPE)
    if check is None:
        check = _CHECKS[cls.TYPE] = fastjsonschema.compile(client_message_schema(cls))
    return check


def _validator(cls: type[ClientMessage]) -> jsonschema.Draft7Validator:
    validator = _VALIDATORS.get(cls.TYPE)
    if validator is None:
        validator = _VALIDATORS[cls.TYPE] = jsonschema.Draft7Validator(client_message_schema(cls))
    return validator


def _first_problem(cls: type[ClientMessage], obj: dict[str, Any]) -> str | None:
    """The most relevant schema violation, phrased with the field's wire path."""
    try:
        _check(cls)(obj)
    except fastjsonschema.JsonSchemaException:
        pass  # jsonschema finds the violation that best explains it, with its path
    else:
        return None
    error = jsonschema.exceptions.best_match(_validator(cls).iter_errors(obj))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path) or "message"
    return f"{where}: {error.message}"
