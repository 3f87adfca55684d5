"""``wirthforge serve | watch | schema | bench``: the command line. Errors name their fix,
never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio

from .config import DEFAULT_PORT, ENVIRONMENT_VARIABLES, Settings, SettingsError, check_token
from .engine.resume_log import StoreError
from .version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wirthforge",
        description="WIRTHFORGE's real-time WebSocket server (WF-TECH-003) on Trio.",
        epilog="Every setting also comes from the environment: " + ", ".join(ENVIRONMENT_VARIABLES),
    )
    parser.add_argument("--version", action="version", version=f"wirthforge-trio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server (default ws://127.0.0.1:8145/ws)")
    serve.add_argument(
        "--host",
        help="address to bind (default 127.0.0.1, loopback only; any other needs a token)",
    )
    serve.add_argument(
        "--token",
        help="access token every client must send (required off loopback); prefer "
        "WIRTHFORGE_TOKEN, since other local users can read a command line",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        metavar="NAME",
        help="another name this server answers to in the Host header, repeatable (NAME or "
        "NAME:PORT; default: loopback names and the bind address); replaces "
        "WIRTHFORGE_ALLOWED_HOSTS",
    )
    serve.add_argument(
        "--port", type=int, help=f"port (default {DEFAULT_PORT}, or 8146 when it is taken)"
    )
    serve.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="MODEL",
        help="model to run, repeatable: demo (the default, built in), demo:NAME, ollama:NAME "
        "(e.g. ollama:qwen3:0.6b) or openai:NAME (any OpenAI-compatible server)",
    )
    serve.add_argument("--ollama-url", help="Ollama's base URL (default http://127.0.0.1:11434)")
    serve.add_argument(
        "--openai-url",
        help="an OpenAI-compatible server's base URL, with /v1 (default http://127.0.0.1:8080/v1)",
    )
    serve.add_argument(
        "--preload", action="store_true", default=None, help="load runtime models at start-up"
    )
    serve.add_argument(
        "--max-tokens",
        type=int,
        help="most tokens one generation may produce (default 512); a prompt may ask for fewer",
    )
    serve.add_argument(
        "--tier",
        choices=["Low-Tier", "Mid-Tier", "High-Tier"],
        help="hardware tier to report (default: detected)",
    )
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--store",
        help="keep the resume log across restarts in SQLite: sqlite:PATH (default: memory "
        "only, nothing written to disk)",
    )
    serve.add_argument(
        "--broker",
        help="broker URL that makes several processes one stream: redis://HOST[:PORT]; "
        "prefer WIRTHFORGE_BROKER when it holds a password",
    )

    watch = commands.add_parser("watch", help="follow a running server's stream")
    watch.add_argument("--url", default="ws://127.0.0.1:8145/ws", help="the server's WebSocket")
    watch.add_argument("--summary", action="store_true", help="one line per second")
    watch.add_argument("--seconds", type=float, help="stop after this many seconds")
    watch.add_argument(
        "--token",
        help="the server's access token, if it has one (default: WIRTHFORGE_TOKEN; prefer "
        "the variable, since other local users can read a command line)",
    )

    commands.add_parser(
        "bench",
        add_help=False,
        help="run the benchmark suite from a source checkout (wirthforge bench --help)",
    )

    schema = commands.add_parser(
        "schema", help="write the JSON Schemas generated from the contract"
    )
    schema.add_argument("--out", type=Path, default=Path("schemas"), help="directory (schemas/)")
    schema.add_argument(
        "--check",
        action="store_true",
        help="only check that the files are up to date (exit 1 if not)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # Its own options (parsed by the benchmark's runner), passed through untouched.
        return _bench(arguments[1:])
    args = _parser().parse_args(arguments)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "watch":
            return _watch(args)
        return _schema(args)
    except (SettingsError, StoreError) as exc:
        print(f"wirthforge: error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # Raised inside a nursery (a port taken at bind time, say): still one clear line.
        settings_error, rest = group.split((SettingsError, StoreError))
        if settings_error is None or rest is not None:
            raise
        first = _first_leaf(settings_error)
        print(f"wirthforge: error: {first}", file=sys.stderr)
        return 2


def _watch(args: argparse.Namespace) -> int:
    """``wirthforge watch``: Ctrl+C ends it quietly with status 130, never a traceback."""
    from .watch import INTERRUPTED, watch_until_interrupted

    token = args.token or os.environ.get("WIRTHFORGE_TOKEN") or None
    if token is not None:
        check_token(token)  # one that no header could carry is named, not sent
    try:
        return trio.run(
            partial(
                watch_until_interrupted,
                args.url,
                summary=args.summary,
                seconds=args.seconds,
                token=token,
            )
        )
    except KeyboardInterrupt:  # Ctrl+C outside the watch's own handler (start, end)
        return INTERRUPTED


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _bench(argv: list[str]) -> int:
    """``wirthforge bench``: the benchmark suite lives in the source checkout's benchmarks/."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        print(
            "wirthforge: error: `wirthforge bench` runs from a source checkout (benchmarks/ "
            "beside wirthforge_trio/), installed with `pip install -e '.[bench]'`",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.run import main as bench_main

    result: int = bench_main(argv)
    return result


def _serve(args: argparse.Namespace) -> int:
    """``wirthforge serve``: Ctrl+C at any point, start-up included, is a stop with status 0."""
    try:
        return _serve_until_stopped(args)
    except KeyboardInterrupt:  # before the signal receiver opened (decisions.md, "Shutdown")
        return 0


def _serve_until_stopped(args: argparse.Namespace) -> int:
    from .security import check_exposure
    from .server import Server, serve_until_signal
    from .web.application import configure_logging, create_app

    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        models=tuple(args.models) if args.models else None,
        tier=args.tier,
        log_level=args.log_level,
        ollama_url=args.ollama_url,
        openai_url=args.openai_url,
        preload=args.preload,
        token=args.token,
        allowed_hosts=tuple(args.allowed_hosts) if args.allowed_hosts else None,
        store=args.store,
        broker=args.broker,
        max_tokens=args.max_tokens,
    )
    check_exposure(settings)
    explicit_port = args.port is not None or settings.port != DEFAULT_PORT
    configure_logging(settings.log_level)
    app = create_app(settings)

    def say_where(server: Server) -> None:
        if server.port != settings.port:  # the default port was taken: say so
            print(
                f"port {settings.port} is taken (another wirthforge?); using {server.port} instead",
                flush=True,
            )
        print(
            f"wirthforge-trio {__version__}: {server.ws_url}  (health: {server.url}/health; "
            "Ctrl+C to stop)",
            flush=True,
        )
        if settings.token is not None:
            print(
                "access token required: browsers open the page as "
                f"{server.url}/#token=<token>, other clients send "
                "'Authorization: Bearer <token>'",
                flush=True,
            )

    trio.run(
        partial(
            serve_until_signal,
            settings,
            app=app,
            explicit_port=explicit_port,
            on_started=say_where,
        )
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    from .contract import schema

    files = schema.generated_files()
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (args.out / name).exists()
            or (args.out / name).read_text(encoding="utf-8") != text
        ]
        if stale:
            print(
                f"stale schema file(s) in {args.out}: {', '.join(stale)}; "
                "regenerate with `wirthforge schema`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out}: up to date")
        return 0
    for path in schema.write(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
