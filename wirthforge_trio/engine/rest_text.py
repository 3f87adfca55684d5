"""The frame at rest as wire text: the codec's own text for it, with three numbers filled in.

At rest (``decipher.py``: nothing live, pending or lit) every frame is the default model's
energy_update, and from one frame to the next only its timestamp, frame number and
processing time change. So the text is made once by the codec, from an event whose three
changing numbers are placeholders, and cut at them; each frame joins the pieces around its
own numbers, written as the codec writes them. Invariant: the text equals what the codec
would give for the same event (docs/decisions.md, "Timing and liveness"; the figures are in
docs/benchmarks/README.md).

The processing time is the one float: taken in whole nanoseconds, cut to the codec's four
decimals of a millisecond, and written from a table of the 10,000 fractions.
"""

from __future__ import annotations

from typing import Final

import orjson

from ..contract.codec import encode
from ..contract.events import FRAME_BUDGET_MS, EnergyUpdate, models_of
from .energy import energy_update

_TIMESTAMP: Final = 9_876_543_210_123
_FRAME_NUMBER: Final = 8_765_432_109
_PROCESSING_MS: Final = 7654.3219
"""Placeholders: numbers no real frame carries (a processing time is at most 16.67 ms)."""

_UNIT_NS: Final = 100
"""The processing time's unit as sent: the codec rounds milliseconds to four decimals."""
_MAX_UNITS: Final = round(FRAME_BUDGET_MS * 1_000_000) // _UNIT_NS
_FRACTIONS: Final = tuple(f"{units:04d}".rstrip("0") or "0" for units in range(10_000))
"""The decimals of a millisecond, ``_FRACTIONS[units % 10_000]``, as a float is written
(no trailing zeros, but at least one digit)."""


class RestFrameText:
    """One model's energy_update at rest, ``total`` EU, as text for any frame."""

    __slots__ = ("_pieces", "channel", "model_ids", "total")

    def __init__(self, model_id: str, total: float) -> None:
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

    def render(self, timestamp: int, frame_number: int, processing_ns: int) -> str:
        """The text :func:`~wirthforge_trio.contract.codec.encode` gives for this frame's
        energy_update, with ``processing_ns`` cut to the 0.1 µs the codec keeps and to the
        frame budget (``tests/unit/test_clock_and_decipher.py`` checks that they agree, for every
        processing time that can be sent)."""
        before, between, payload, after = self._pieces
        whole, fraction = divmod(min(processing_ns // _UNIT_NS, _MAX_UNITS), 10_000)
        return (
            f"{before}{timestamp}{between}{frame_number}{payload}"
            f"{whole}.{_FRACTIONS[fraction]}{after}"
        )
