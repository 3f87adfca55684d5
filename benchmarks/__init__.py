"""The benchmark suite of issue 6: this server beside FastAPI/uvicorn and `websockets` peers.

``python -m benchmarks.run --help`` (or ``nox -s bench``); the method is described in
``docs/benchmarks/README.md``.
"""
