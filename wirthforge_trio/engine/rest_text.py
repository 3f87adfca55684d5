"""The frame at rest as wire text: the codec's own text for it, with three numbers filled in.

At rest (``decipher.py``: nothing live, pending or lit) every frame is the default model's
energy_update, and from one frame to the next only its timestamp, frame number and
processing time change. Building that event, encoding it and framing it on every tick was
most of what an idle server did per frame beyond waking up (``docs/benchmarks/README.md``),
and it ran with caches gone cold between frames. So the text is made once by the codec, from
an event whose three changing numbers are placeholders, and cut at them; each frame joins the
pieces around its own numbers, written as the codec writes them (orjson for the float).
"""

from __future__ import annotations

from typing import Final

import orjson

from ..contract.codec import encode
from ..contract.events import FRAME_BUDGET_MS, EnergyUpdate, models_of

_TIMESTAMP: Final = 9_876_543_210_123
_FRAME_NUMBER: Final = 8_765_432_109
_PROCESSING_MS: Final = 7654.3219
"""Placeholders: numbers no real frame carries (a processing time is at most 16.67 ms)."""


class RestFrameText:
    """One model's energy_update at rest, ``total`` EU, as text for any frame."""

    __slots__ = ("_pieces", "channel", "model_ids", "total")

    def __init__(self, model_id: str, total: float) -> None:
        # Imported here: decipher.py builds the event and imports this module.
        from .decipher import energy_update

        self.total = total
        event = energy_update(model_id, total, 0, _PROCESSING_MS, _FRAME_NUMBER, _TIMESTAMP)
        self.channel: str = EnergyUpdate.CHANNEL
        self.model_ids = models_of(event)
        text = encode(event)
        marks = [str(_TIMESTAMP), str(_FRAME_NUMBER), orjson.dumps(_PROCESSING_MS).decode()]
        pieces = []
        rest = text
        for mark in marks:  # the envelope's order: timestamp, frameNumber, then the payload
            head, found, rest = rest.partition(mark)
            if not found or mark in rest:
                raise ValueError(f"the energy_update text does not hold {mark} once, in order")
            pieces.append(head)
        pieces.append(rest)
        self._pieces = tuple(pieces)

    def render(self, timestamp: int, frame_number: int, processing_ms: float) -> str:
        """The text :func:`~wirthforge_trio.contract.codec.encode` gives for this frame's
        energy_update (``tests/test_clock_and_decipher.py`` checks that they agree)."""
        before, between, payload, after = self._pieces
        processing = round(min(processing_ms, FRAME_BUDGET_MS), 4)
        return (
            f"{before}{timestamp}{between}{frame_number}{payload}"
            f"{orjson.dumps(processing).decode()}{after}"
        )
