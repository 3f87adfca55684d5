"""What the server logged while a test ran, collected for the test to read."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def records_logged(level: int = logging.DEBUG) -> Iterator[list[logging.LogRecord]]:
    """Collect every record at ``level`` or above of the server's loggers (and the root's)
    meanwhile."""
    found: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(record)

    handler = Collect(level=level)
    # The package's logger propagates to the root; Hypercorn's does not.
    loggers = [logging.getLogger(n) for n in ("", "hypercorn.error")]
    package = logging.getLogger("wirthforge_trio")
    package_level = package.level
    package.setLevel(min(level, package.getEffectiveLevel()))
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield found
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        package.setLevel(package_level)


@contextmanager
def errors_logged() -> Iterator[list[str]]:
    """The ERROR records logged meanwhile, formatted, for the caller to read afterwards."""
    found: list[str] = []
    formatter = logging.Formatter()
    with records_logged(logging.ERROR) as records:
        yield found
    found.extend(f"{r.name}: {formatter.format(r)}" for r in records)
