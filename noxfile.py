"""nox sessions: `nox` runs the tests, the end-to-end group again on the ordinary send path
(`asgi_path`) and on the lowest releases pyproject.toml allows (`lowest`), lint and
typecheck; `nox -s real-model` the tests against a real model; `nox -s bench` the benchmark
suite, `nox -s soak` the long reliability variants, `nox -s schema` and `nox -s diagrams`
regenerate schemas/ and diagrams/*.svg."""

from __future__ import annotations

import glob
import os
import subprocess

import nox

LOWEST_CONSTRAINTS = "constraints-lowest.txt"
"""The lowest release of each dependency that pyproject.toml allows, pinned."""

# Every run proves both send paths: the end-to-end group again with the fast path off, and
# on the lowest releases pyproject.toml allows (docs/decisions.md, "The send path: one seam").
nox.options.sessions = ["tests", "asgi_path", "lowest", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"

# 3.11 resolves quart-trio 0.12 with Quart 0.22; 3.13 resolves quart-trio 0.13 with Quart 0.23.
# Both must work. 3.11 is required; 3.13 runs wherever the machine has it.


def _has_python(version: str) -> bool:
    """Whether `pythonX.Y` runs here; pyenv's versions that are installed but not selected
    (whose shim fails) are put on the PATH first."""
    for bin_dir in glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin")):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ["PATH"]
    try:
        run = subprocess.run([f"python{version}", "-c", "pass"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0


PYTHONS = ["3.11"] + (["3.13"] if _has_python("3.13") else [])


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite (unit, end to end against a real Hypercorn server, browser, commands,
    the benchmark's mechanics)."""
    session.install("-e", ".[test,bench]")
    session.run(
        "python",
        "-c",
        "import quart, quart_trio, importlib.metadata as m; "
        "print('quart', m.version('quart'), 'quart-trio', m.version('quart-trio'))",
    )
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def asgi_path(session: nox.Session) -> None:
    """The end-to-end tests with the fast path off: the ordinary ASGI send path, whole."""
    session.install("-e", ".[test,bench]")
    session.run(
        "pytest", "-q", "-m", "e2e", *session.posargs, env={"WIRTHFORGE_DIRECT_WRITES": "0"}
    )


@nox.session(python="3.11")
def lowest(session: nox.Session) -> None:
    """The end-to-end tests on the lowest releases pyproject.toml allows (pinned in
    constraints-lowest.txt; raise a lower bound there and in pyproject.toml together)."""
    session.install("-c", LOWEST_CONSTRAINTS, "-e", ".[test,bench]")
    session.run(
        "python",
        "-c",
        "import importlib.metadata as m; print(*(f'{p} {m.version(p)}' for p in "
        "('trio', 'hypercorn', 'wsproto', 'quart', 'quart-trio')), sep=', ')",
    )
    session.run("pytest", "-q", "-m", "e2e", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff, and the import layers (import-linter)."""
    session.install("ruff", "import-linter")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The layers contract in pyproject.toml: a wrong arrow between layers fails here.
    session.run("lint-imports", env={"PYTHONPATH": session.invoked_from})


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test,bench]")  # `wirthforge bench` imports the benchmark suite
    session.run("mypy")


@nox.session(python="3.11")
def schema(session: nox.Session) -> None:
    """Regenerate schemas/ from the contract classes."""
    session.install("-e", ".")
    session.run("wirthforge", "schema")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The benchmark suite: this server beside FastAPI/uvicorn and `websockets` peers.

    Writes docs/benchmarks/results.{json,md} and the PNG plots; options after `--`, e.g.
    `nox -s bench -- --quick` or `nox -s bench -- --clients 1,10,100 --repeats 1`.
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks.run", *session.posargs)


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """The long reliability variants: more fuzz examples, more churn, more generations."""
    session.install("-e", ".[test,bench]")
    session.run(
        "pytest",
        "-q",
        "tests/e2e/test_fuzz.py",
        "tests/e2e/test_churn.py",
        "tests/e2e/test_slow_consumers.py",
        *session.posargs,
        env={"WIRTHFORGE_SOAK": "1"},
    )


@nox.session(python=False)
def diagrams(session: nox.Session) -> None:
    """Render diagrams/*.mmd to SVG with the Mermaid CLI and Debian's Chromium (npm needed)."""
    mmdc_home = os.path.join(os.environ.get("TMPDIR", "/tmp"), "wirthforge-mmdc")
    mmdc = os.path.join(mmdc_home, "node_modules", ".bin", "mmdc")
    if not os.path.exists(mmdc):
        os.makedirs(mmdc_home, exist_ok=True)
        session.run(
            "npm",
            "install",
            "--prefix",
            mmdc_home,
            "@mermaid-js/mermaid-cli",
            env={"PUPPETEER_SKIP_DOWNLOAD": "1"},
            external=True,
        )
    session.run("python3", "diagrams/render.py", "--mmdc", mmdc, external=True)


@nox.session(name="real-model", python="3.11")
def real_model(session: nox.Session) -> None:
    """End to end against a real model: llama.cpp's server with SmolLM2-135M-Instruct.

    Builds the runtime once (about 7 minutes on 2 cores; cached outside the clone, see
    tests/real_model/build_runtime.py), then runs tests/real_model/. Needs Debian's
    `build-essential` and `cmake`. Here a missing runtime fails the tests; they never skip.
    """
    session.install("-e", ".[test]")
    script = "tests/real_model/build_runtime.py"
    session.run("python", script)
    output = session.run("python", script, "--check", silent=True)
    folder = str(output).strip().splitlines()[-1]
    session.run(
        "pytest",
        "-q",
        "-m",
        "real_model",
        "tests/real_model",
        *session.posargs,
        env={"WIRTHFORGE_REAL_RUNTIME": folder},
    )
