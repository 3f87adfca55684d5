"""What the SQLite resume store costs: on the frame clock's path (the Decipher's tick with
and without a store) and in its writer thread (one batch's commit).

Generating frames: every session gets one token per frame, as a fast model does; each
frame's lossless batch is handed to the store's queue, and the writer commits every
``--batch-frames`` frames (6 = the 0.1 s flush interval at 60 Hz).

    python benchmarks/store_cost.py [--frames 3000] [--sessions 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import trio

from wirthforge_trio.engine.decipher import Decipher
from wirthforge_trio.engine.energy import PROFILES
from wirthforge_trio.engine.sqlite_log import SqliteLog
from wirthforge_trio.sources.base import Token


async def measure(frames: int, sessions: int, batch_frames: int, store: bool) -> dict[str, float]:
    decipher = Decipher(["demo"], PROFILES["default"], "demo")
    log = None
    if store:
        directory = tempfile.mkdtemp()
        log = SqliteLog(Path(directory) / "store.db")
        decipher.log = log
        decipher.restore(await log.open("i-bench"), trio.current_time(), time.time())
    live = [decipher.start_session("demo", trio.current_time()) for _ in range(sessions)]
    ticks: list[float] = []
    commits: list[float] = []
    for frame in range(1, frames + 1):
        now = trio.current_time()
        for session in live:
            decipher.on_token(session, Token(text=" word", at=now))
        started = time.perf_counter()
        decipher.tick(frame, now)
        ticks.append(time.perf_counter() - started)
        if log is not None and frame % batch_frames == 0:
            started = time.perf_counter()
            await log._flush()
            commits.append(time.perf_counter() - started)
    result = {
        "tick_us_p50": statistics.median(ticks) * 1e6,
        "tick_us_mean": statistics.fmean(ticks) * 1e6,
    }
    if commits:
        result["commit_ms_p50"] = statistics.median(commits) * 1e3
        result["commit_ms_p99"] = sorted(commits)[int(len(commits) * 0.99)] * 1e3
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--batch-frames", type=int, default=6)
    args = parser.parse_args()
    for store in (False, True, False, True):
        figures = trio.run(measure, args.frames, args.sessions, args.batch_frames, store)
        shown = ", ".join(
            f"{k} {v:.1f}" if "us" in k else f"{k} {v:.2f}" for k, v in figures.items()
        )
        print(f"{'sqlite' if store else 'memory'}: {shown}")


if __name__ == "__main__":
    main()
