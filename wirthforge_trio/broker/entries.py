"""What travels through Redis, and the checks on the way back (pure, no I/O).

Three kinds of message, each tagged with a format version and the process that wrote it:

- a **stream entry**: one lossless event as its wire text, the cluster frame its writer was
  at when it wrote it (every process delivers and logs it by that frame), plus for a
  ``token_stream`` how many of the session's tokens came before it (so a gap is seen, never
  papered over) and, on the last batch, how the session ended;
- a **frame** (pub/sub): the energy events a process built for its lit models in one tick;
- a **cancel** (pub/sub): a session id whose origin should stop it.

Anything on the broker's keys that is not one of these is refused with :class:`Refused`,
whose message names the reason and never repeats the data (it may be anyone's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, get_args

import attrs
import orjson

from ..contract.codec import EventDecodeError, decode_event, encode
from ..contract.events import (
    Event,
    FrameEvent,
    InterferenceEvent,
    ResonanceEvent,
    TokenStream,
)

VERSION: Final = "2"
ORIGIN_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
SESSION_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
EndStatus = Literal["complete", "failed", "cancelled"]
END_STATUSES: Final[frozenset[str]] = frozenset(get_args(EndStatus))
LOSSLESS_FRAME_EVENTS: Final = (InterferenceEvent, ResonanceEvent)


class Refused(ValueError):
    """Data on a broker key that this server did not write in this format."""


@attrs.frozen
class Entry:
    """One lossless event read back from the stream."""

    entry_id: str
    origin: str
    event: Event
    text: str
    """The event's wire text, as the origin encoded it (sent on without encoding again)."""
    written_frame: int
    """The cluster frame its writer's schedule was at when it wrote the entry
    (``FrameClock.scheduled_frame``)."""
    offset: int | None = None
    """For a token_stream: the session's tokens before this batch."""
    status: EndStatus | None = None
    """For the last token_stream of a session: how it ended."""
    interrupted: bool = False
    """The end was written by another process, because the origin stopped mid-generation."""


def entry_fields(
    origin: str,
    event: Event,
    *,
    offset: int | None = None,
    status: str | None = None,
    interrupted: bool = False,
) -> dict[str, str]:
    """The field-value pairs of a stream entry for ``event`` (the writer adds its frame,
    :func:`stamped`, when it writes the entry)."""
    fields = {"v": VERSION, "o": origin, "e": encode(event)}
    if offset is not None:
        fields["n"] = str(offset)
    if status is not None:
        fields["st"] = status
    if interrupted:
        fields["x"] = "1"
    return fields


def stamped(fields: dict[str, str], frame: int) -> dict[str, str]:
    """``fields`` with the cluster frame they are written at (field f)."""
    return {**fields, "f": str(frame)}


def _text(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise Refused("a field is not UTF-8") from None
    if not isinstance(value, str):
        raise Refused("a field is not a string")
    return value


def parse_entry(entry_id: str, raw: Mapping[Any, object]) -> Entry:
    """The entry ``raw`` holds, or :class:`Refused` saying why it is not one of ours."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if fields.get("v") != VERSION:
        raise Refused(f"not a wirthforge entry of format {VERSION} (field v)")
    origin = fields.get("o", "")
    if not ORIGIN_PATTERN.fullmatch(origin):
        raise Refused("no valid origin (field o)")
    raw_frame = fields.get("f", "")
    if not raw_frame.isdigit() or len(raw_frame) > 18:
        raise Refused("no frame it was written at (field f)")
    text = fields.get("e")
    if text is None:
        raise Refused("no event (field e)")
    try:
        event = decode_event(text)
    except EventDecodeError as exc:
        raise Refused(f"the event is not a contract event ({str(exc)[:120]})") from None
    if isinstance(event, FrameEvent) and not isinstance(event, LOSSLESS_FRAME_EVENTS):
        raise Refused(f"a {event.TYPE} is a frame event, never a stream entry")
    if encode(event) != text:  # extra fields, another order: not what a server wrote
        raise Refused(f"a {event.TYPE} not in the codec's own form")
    offset: int | None = None
    status: EndStatus | None = None
    if isinstance(event, TokenStream):
        raw_offset = fields.get("n", "")
        if not raw_offset.isdigit():
            raise Refused("a token_stream without its token offset (field n)")
        offset = int(raw_offset)
        if event.payload.is_complete:
            end = fields.get("st")
            if end not in END_STATUSES:
                raise Refused("a last token_stream without how the session ended (field st)")
            status = end  # type: ignore[assignment]
    return Entry(
        entry_id=entry_id,
        origin=origin,
        event=event,
        text=text,
        written_frame=int(raw_frame),
        offset=offset,
        status=status,
        interrupted=fields.get("x") == "1",
    )


def frame_message(origin: str, texts: Sequence[str]) -> bytes:
    """A pub/sub frame: the wire texts of one tick's energy events."""
    return orjson.dumps({"v": VERSION, "o": origin, "f": list(texts)})


def parse_frame(data: object) -> tuple[str, list[FrameEvent]]:
    """(origin, energy events) of a pub/sub frame, or :class:`Refused`."""
    obj = _json_object(data)
    origin, texts = obj.get("o"), obj.get("f")
    if not isinstance(origin, str) or not ORIGIN_PATTERN.fullmatch(origin):
        raise Refused("a frame without a valid origin")
    if not isinstance(texts, list) or len(texts) > 256:
        raise Refused("a frame without its list of events")
    events: list[FrameEvent] = []
    for text in texts:
        if not isinstance(text, str):
            raise Refused("a frame event that is not text")
        try:
            event = decode_event(text)
        except EventDecodeError as exc:
            raise Refused(f"a frame event is not a contract event ({str(exc)[:120]})") from None
        if not isinstance(event, FrameEvent) or isinstance(event, LOSSLESS_FRAME_EVENTS):
            raise Refused(f"a {event.TYPE} does not travel in frames")
        events.append(event)
    return origin, events


def cancel_message(origin: str, session_id: str) -> bytes:
    return orjson.dumps({"v": VERSION, "o": origin, "s": session_id})


def parse_cancel(data: object) -> str:
    """The session id of a pub/sub cancel, or :class:`Refused`."""
    session_id = _json_object(data).get("s")
    if not isinstance(session_id, str) or not SESSION_PATTERN.fullmatch(session_id):
        raise Refused("a cancel without a valid session id")
    return session_id


def _json_object(data: object) -> dict[str, object]:
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, bytes):
        raise Refused("a message that is not text")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Refused("a message that is not JSON") from None
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise Refused(f"not a wirthforge message of format {VERSION}")
    return obj
