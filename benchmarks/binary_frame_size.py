"""Energy frames as JSON and as a packed binary layout: their sizes, measured.

    python benchmarks/binary_frame_size.py                  # the tables in docs/binary-frames.md
    python benchmarks/binary_frame_size.py --url ws://127.0.0.1:8145/ws --seconds 10 --prompt

The first form is deterministic: it builds energy frames from the contract classes with
values shaped like a real demo session (ten seconds at 60 Hz, one model generating about
30 tokens a second), encodes them exactly as the server does, packs the same values with the
layout below, and prints the Markdown tables that docs/binary-frames.md holds (a test checks
that the document matches). The second form records the energy frames of a running server
instead (``--prompt`` starts a generation on the server's default model through
``POST /prompt`` first) and prints the same stream table for them.

The binary layout (little-endian, ``struct``) is a sketch for the comparison, not a protocol
the server speaks. Each record starts with a kind byte:

    energy_update  <B B Q I d f H f B> + modelId
        kind=1, flags (bit 0: energyDistribution follows), timestamp (u64 ms),
        frameNumber (u32), totalEnergy (f64), deltaEnergy (f32), tokensGenerated (u16),
        processingTime (f32 ms), modelId length (u8), modelId (UTF-8),
        [generation, attention, reasoning (3 x f32) when flag bit 0 is set]
    energy_field   <B B Q I f B B> + modelId + points
        kind=2, fieldType (0 lightning, 1 stream, 2 interference, 3 resonance), timestamp,
        frameNumber, intensity (f32), point count (u8), modelId length (u8), modelId,
        then each point as x, y, energy (3 x f32)

A batched frame puts all of one frame's records in one message and states the timestamp and
frameNumber once: ``<B B Q I>`` (kind=16, record count, timestamp, frameNumber), then each
record without its own timestamp and frameNumber.

Deflate is measured the way WebSocket permessage-deflate (RFC 7692) sends it: raw deflate,
each message flushed with Z_SYNC_FLUSH and its trailing 00 00 ff ff removed, either with a
fresh compressor per message (no context takeover) or one compressor for the whole stream
(context takeover, what browsers negotiate by default).
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, Final

from wirthforge_trio.contract.codec import decode_event, encode
from wirthforge_trio.contract.events import (
    EnergyDistribution,
    EnergyField,
    EnergyFieldPayload,
    EnergyUpdate,
    EnergyUpdatePayload,
    FieldPoint,
    FrameEvent,
)
from wirthforge_trio.engine.energy import energy_update

KIND_UPDATE: Final = 1
KIND_FIELD: Final = 2
KIND_BATCH: Final = 16
FIELD_TYPES: Final = ("lightning", "stream", "interference", "resonance")

UPDATE_HEAD: Final = struct.Struct("<BBQIdfHfB")
UPDATE_HEAD_BATCHED: Final = struct.Struct("<BBdfHfB")
DISTRIBUTION: Final = struct.Struct("<fff")
FIELD_HEAD: Final = struct.Struct("<BBQIfBB")
FIELD_HEAD_BATCHED: Final = struct.Struct("<BBfBB")
POINT: Final = struct.Struct("<fff")
BATCH_HEAD: Final = struct.Struct("<BBQI")

START_MS: Final = 1_795_653_993_843
"""A real wall-clock timestamp from a recorded session; only its width matters."""
START_FRAME: Final = 390
SECONDS: Final = 10
RATE: Final = 60


# --- packing --------------------------------------------------------------------------------


def _model_id(model_id: str) -> bytes:
    raw = model_id.encode()
    if len(raw) > 255:
        raise ValueError(f"modelId longer than 255 bytes: {model_id!r}")
    return raw


def pack_update(event: EnergyUpdate, *, batched: bool = False) -> bytes:
    p = event.payload
    dist = p.energy_distribution
    flags = 1 if dist is not None else 0
    name = _model_id(p.model_id)
    if batched:
        head = UPDATE_HEAD_BATCHED.pack(
            KIND_UPDATE,
            flags,
            p.total_energy,
            p.delta_energy,
            p.tokens_generated,
            p.processing_time,
            len(name),
        )
    else:
        head = UPDATE_HEAD.pack(
            KIND_UPDATE,
            flags,
            event.timestamp,
            event.frame_number,
            p.total_energy,
            p.delta_energy,
            p.tokens_generated,
            p.processing_time,
            len(name),
        )
    tail = b""
    if dist is not None:
        tail = DISTRIBUTION.pack(
            dist.generation or 0.0, dist.attention or 0.0, dist.reasoning or 0.0
        )
    return head + name + tail


def pack_field(event: EnergyField, *, batched: bool = False) -> bytes:
    p = event.payload
    name = _model_id(p.model_id)
    kind = FIELD_TYPES.index(p.field_type)
    if batched:
        head = FIELD_HEAD_BATCHED.pack(KIND_FIELD, kind, p.intensity, len(p.coordinates), len(name))
    else:
        head = FIELD_HEAD.pack(
            KIND_FIELD,
            kind,
            event.timestamp,
            event.frame_number,
            p.intensity,
            len(p.coordinates),
            len(name),
        )
    points = b"".join(POINT.pack(c.x, c.y, c.energy) for c in p.coordinates)
    return head + name + points


def pack(event: FrameEvent, *, batched: bool = False) -> bytes:
    if isinstance(event, EnergyUpdate):
        return pack_update(event, batched=batched)
    if isinstance(event, EnergyField):
        return pack_field(event, batched=batched)
    raise TypeError(f"no binary layout for {event.TYPE}")


def pack_frame(events: Sequence[FrameEvent]) -> bytes:
    """All of one frame's energy events as one message."""
    first = events[0]
    head = BATCH_HEAD.pack(KIND_BATCH, len(events), first.timestamp, first.frame_number)
    return head + b"".join(pack(e, batched=True) for e in events)


def unpack(data: bytes) -> FrameEvent:
    """The inverse of :func:`pack` for one record (float fields come back as float32)."""
    kind = data[0]
    if kind == KIND_UPDATE:
        _, flags, ts, frame, total, delta, tokens, proc, n = UPDATE_HEAD.unpack_from(data)
        at = UPDATE_HEAD.size
        model_id = data[at : at + n].decode()
        dist = None
        if flags & 1:
            generation, attention, reasoning = DISTRIBUTION.unpack_from(data, at + n)
            dist = EnergyDistribution(
                generation=generation, attention=attention, reasoning=reasoning
            )
        return EnergyUpdate(
            timestamp=ts,
            frame_number=frame,
            payload=EnergyUpdatePayload(
                total_energy=total,
                delta_energy=delta,
                tokens_generated=tokens,
                processing_time=proc,
                model_id=model_id,
                energy_distribution=dist,
            ),
        )
    if kind == KIND_FIELD:
        _, field_type, ts, frame, intensity, count, n = FIELD_HEAD.unpack_from(data)
        at = FIELD_HEAD.size
        model_id = data[at : at + n].decode()
        at += n
        points = tuple(
            FieldPoint(x=x, y=y, energy=energy)
            for x, y, energy in (POINT.unpack_from(data, at + i * POINT.size) for i in range(count))
        )
        return EnergyField(
            timestamp=ts,
            frame_number=frame,
            payload=EnergyFieldPayload(
                field_type=FIELD_TYPES[field_type],  # type: ignore[arg-type]
                intensity=intensity,
                coordinates=points,
                model_id=model_id,
            ),
        )
    raise ValueError(f"unknown record kind {kind}")


# --- deflate as permessage-deflate sends it -------------------------------------------------


def _deflate_message(compressor: Any, data: bytes) -> int:
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if out.endswith(b"\x00\x00\xff\xff"):
        out = out[:-4]
    return len(out)


def deflated_sizes(messages: Iterable[bytes], *, context_takeover: bool) -> list[int]:
    """Each message's compressed size (RFC 7692 framing, window 15 bits, level 6)."""
    shared = zlib.compressobj(6, zlib.DEFLATED, -15)
    sizes = []
    for data in messages:
        compressor = shared if context_takeover else zlib.compressobj(6, zlib.DEFLATED, -15)
        sizes.append(_deflate_message(compressor, data))
    return sizes


def ws_header(length: int) -> int:
    """Bytes of an unmasked (server-to-client) WebSocket frame header for this payload."""
    return 2 if length <= 125 else 4 if length <= 65535 else 10


# --- representative frames ------------------------------------------------------------------


def _update(
    frame: int, ts: int, model_id: str, total: float, tokens: int, proc: float
) -> EnergyUpdate:
    return energy_update(model_id, total, tokens, proc, frame, ts)


def _field(
    frame: int, ts: int, model_id: str, field_type: str, samples: Sequence[float]
) -> EnergyField:
    span = max(len(samples) - 1, 1)
    return EnergyField(
        timestamp=ts,
        frame_number=frame,
        payload=EnergyFieldPayload(
            field_type=field_type,  # type: ignore[arg-type]
            intensity=round(samples[-1], 4),
            coordinates=tuple(
                FieldPoint(x=round(i / span, 4), y=round(e, 4), energy=round(e, 4))
                for i, e in enumerate(samples)
            ),
            model_id=model_id,
        ),
    )


def sample_frames() -> dict[str, list[FrameEvent]]:
    """One frame of each situation, with values as a recorded demo session had them."""
    ts, n = START_MS, START_FRAME
    demo = (0.3974, 0.4041, 0.4243, 0.5008, 0.5398, 0.5591, 0.6011, 0.6312)
    sage = (0.5127, 0.5344, 0.5502, 0.5713, 0.5836, 0.5902, 0.6011, 0.6044)
    return {
        "idle (default model only)": [_update(n, ts, "demo", 12.9, 0, 0.0439)],
        "one model generating": [
            _update(n, ts, "demo", 10.7, 1, 0.1171),
            _field(n, ts, "demo", "lightning", demo),
        ],
        "council of two models": [
            _update(n, ts, "demo", 10.7, 1, 0.1171),
            _update(n, ts, "demo-sage", 12.5, 0, 0.1171),
            _update(n, ts, "council", 23.2, 1, 0.1171),
            _field(n, ts, "demo", "lightning", demo),
            _field(n, ts, "demo-sage", "stream", sage),
            _field(n, ts, "council", "interference", (demo[-1], sage[-1])),
        ],
    }


def sample_stream(seed: int = 0) -> list[list[FrameEvent]]:
    """Ten seconds of one model generating, frame by frame, shaped like the demo model.

    About 30 tokens a second in bursts, an intensity that wanders between 0.3 and 0.95, and
    an energy_field only when the intensity moved by 0.01 or more, as the server does.
    """
    rng = random.Random(seed)
    frames: list[list[FrameEvent]] = []
    total, intensity, last_sent = 0.0, 0.5, -1.0
    recent: list[float] = []
    for i in range(SECONDS * RATE):
        n = START_FRAME + i
        ts = START_MS + round(i * 1000 / RATE)
        tokens = 1 if rng.random() < 0.5 else 0
        total += 0.1 * tokens
        if tokens:
            intensity = min(0.95, max(0.3, intensity + rng.uniform(-0.04, 0.05)))
            recent = [*recent, intensity][-8:]
        events: list[FrameEvent] = [_update(n, ts, "demo", total, tokens, rng.uniform(0.04, 0.2))]
        if recent and abs(intensity - last_sent) >= 0.01:
            last_sent = intensity
            events.append(_field(n, ts, "demo", "lightning", recent))
        frames.append(events)
    return frames


# --- measuring ------------------------------------------------------------------------------


def json_bytes(event: FrameEvent) -> bytes:
    return encode(event).encode()


def measure_samples() -> list[tuple[str, int, int, int]]:
    """(situation, JSON bytes, binary bytes one message per event, binary batched bytes)."""
    rows = []
    for label, events in sample_frames().items():
        js = sum(len(json_bytes(e)) for e in events)
        binary = sum(len(pack(e)) for e in events)
        rows.append((label, js, binary, len(pack_frame(events))))
    return rows


def measure_stream(frames: Sequence[Sequence[FrameEvent]]) -> dict[str, float]:
    """Payload bytes per second for each encoding (WebSocket headers counted apart).

    A second is 60 frame numbers, so frames the server skipped or replaced count as time.
    """
    events = [e for frame in frames for e in frame]
    numbers = [e.frame_number for e in events]
    seconds = (max(numbers) - min(numbers) + 1) / RATE
    js = [json_bytes(e) for e in events]
    binary = [pack(e) for e in events]
    batched = [pack_frame(frame) for frame in frames if frame]
    result = {
        "JSON (as sent today)": sum(map(len, js)),
        "JSON + permessage-deflate, no context takeover": sum(
            deflated_sizes(js, context_takeover=False)
        ),
        "JSON + permessage-deflate, context takeover": sum(
            deflated_sizes(js, context_takeover=True)
        ),
        "binary, one message per event": sum(map(len, binary)),
        "binary, one message per frame": sum(map(len, batched)),
        "binary, one message per frame + deflate, context takeover": sum(
            deflated_sizes(batched, context_takeover=True)
        ),
    }
    headers = {
        "JSON (as sent today)": sum(ws_header(len(m)) for m in js),
        "binary, one message per frame": sum(ws_header(len(m)) for m in batched),
    }
    out = {label: total / seconds for label, total in result.items()}
    out.update({f"WebSocket headers, {k}": v / seconds for k, v in headers.items()})
    out["events"] = len(events)
    out["frames"] = len(frames)
    return out


def per_event_sizes() -> list[tuple[str, int, int]]:
    """(event, JSON bytes, binary bytes) for one energy_update and one 8-point energy_field."""
    generating = sample_frames()["one model generating"]
    return [(e.TYPE, len(json_bytes(e)), len(pack(e))) for e in generating]


# --- output ---------------------------------------------------------------------------------


def render_tables(frames: Sequence[Sequence[FrameEvent]] | None = None) -> str:
    """The Markdown tables docs/binary-frames.md shows (deterministic without ``frames``)."""
    lines = ["| event | JSON bytes | binary bytes | binary / JSON |", "|---|---:|---:|---:|"]
    for name, js, binary in per_event_sizes():
        lines.append(f"| `{name}` | {js} | {binary} | {binary / js:.0%} |")
    lines += [
        "",
        "| one 60 Hz frame | JSON bytes | binary, per event | binary, batched |",
        "|---|---:|---:|---:|",
    ]
    for label, js, binary, batched in measure_samples():
        lines.append(f"| {label} | {js} | {binary} | {batched} |")
    lines += ["", *stream_table(frames if frames is not None else sample_stream())]
    return "\n".join(lines) + "\n"


def stream_table(frames: Sequence[Sequence[FrameEvent]]) -> list[str]:
    stats = measure_stream(frames)
    base = stats["JSON (as sent today)"]
    lines = [
        f"Stream of {stats['frames']:.0f} frames ({stats['events']:.0f} energy events):",
        "",
        "| encoding | payload bytes per second | vs JSON |",
        "|---|---:|---:|",
    ]
    for label, value in stats.items():
        if label in ("events", "frames"):
            continue
        lines.append(f"| {label} | {value:,.0f} | {value / base:.0%} |")
    return lines


async def record(url: str, seconds: float, prompt: bool) -> list[list[FrameEvent]]:
    """The energy frames a running server sends to one client, grouped by frame."""
    import httpx
    import trio
    from trio_websocket import open_websocket_url

    frames: dict[int, list[FrameEvent]] = {}
    async with open_websocket_url(url) as ws:
        if prompt:
            base = url.replace("ws://", "http://", 1).rsplit("/ws", 1)[0]
            async with httpx.AsyncClient() as http:
                answer = await http.post(base + "/prompt", json={"prompt": "tell me about light"})
                answer.raise_for_status()
        with trio.move_on_after(seconds):
            while True:
                data = await ws.get_message()
                kind = json.loads(data)["type"]
                if kind in ("energy_update", "energy_field"):
                    event = decode_event(data)
                    assert isinstance(event, FrameEvent)
                    frames.setdefault(event.frame_number, []).append(event)
    return [frames[n] for n in sorted(frames)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="record a running server's frames (ws://.../ws)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to record")
    parser.add_argument("--prompt", action="store_true", help="POST /prompt before recording")
    args = parser.parse_args(argv)
    if args.url is None:
        sys.stdout.write(render_tables())
        return 0
    import trio

    frames = trio.run(record, args.url, args.seconds, args.prompt)
    if not frames:
        print("no energy frames received", file=sys.stderr)
        return 1
    sys.stdout.write("\n".join(stream_table(frames)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
