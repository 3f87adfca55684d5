"""Run the benchmark suite: ``python -m benchmarks.run`` or ``python benchmarks/run.py``.

    python -m benchmarks.run                       # the full run (N = 1,10,100,300,1000; 3 repeats)
    python -m benchmarks.run --quick               # a short smoke run
    python -m benchmarks.run --clients 1,10,100 --seconds 3 --repeats 1 --out /tmp/bench

Writes results.json, results.md, latency.png, delivery.png and cpu.png to --out
(default docs/benchmarks). The method: docs/benchmarks/README.md.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.suite import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
