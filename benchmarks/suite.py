"""The runner: contenders, scenarios, one measured run, the interleaved plan, the command line.

See ``docs/benchmarks/README.md`` for the method. Entry point: :func:`main` (also exported by
``benchmarks.run``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import procs, report
from benchmarks.loadgen import BIN_NS

CONTENDERS: dict[str, str] = {
    "wirthforge": "this server: hypercorn -k trio wirthforge_trio.app:app",
    "fastapi": "peer: FastAPI on uvicorn[standard], a sender task per connection",
    "websockets": "peer: websockets.asyncio.server with broadcast()",
    "wirthforge-broker": "this server on a Redis broker (a fresh redis-server per run)",
    "wirthforge-broker-w2": "this server as two Hypercorn workers on a Redis broker "
    "(hypercorn -w 2; CPU and RSS of the supervisor, both workers and redis-server)",
}
BROKER_CONTENDERS = ("wirthforge-broker", "wirthforge-broker-w2")
"""Contenders that get a fresh redis-server per run and ``WIRTHFORGE_BROKER`` pointing at it."""
WORKERS: dict[str, int] = {"wirthforge-broker-w2": 2}
"""Hypercorn workers per contender (1 when absent)."""
DEFAULT_CONTENDERS = ("wirthforge", "fastapi", "websockets")
"""Run unless --contenders says otherwise (the broker's cost and two workers on it are
measured on request: docs/benchmarks/broker.md)."""
REDIS_SERVER = ("redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
DEFAULT_CLIENTS = (1, 10, 100, 300, 1000)
QUICK_CLIENTS = (1, 10, 100)


def server_command(contender: str, port: int) -> list[str]:
    if contender in ("wirthforge", *BROKER_CONTENDERS):
        workers = WORKERS.get(contender, 1)
        return [
            *procs.script("hypercorn"),
            "-k",
            "trio",
            *(("-w", str(workers)) if workers > 1 else ()),
            "--bind",
            f"127.0.0.1:{port}",
            "wirthforge_trio.app:app",
        ]
    if contender == "fastapi":
        return [
            *procs.script("uvicorn"),
            "benchmarks.peers.fastapi_peer:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--app-dir",
            str(procs.ROOT),
        ]
    if contender == "websockets":
        return [sys.executable, "-m", "benchmarks.peers.websockets_peer", "--port", str(port)]
    raise ValueError(f"unknown contender {contender!r}; known: {', '.join(CONTENDERS)}")


@dataclass
class Options:
    clients: list[int]
    seconds: float
    repeats: int
    contenders: list[str]
    out: Path
    warmup: float
    grace: float
    ping_hz: float
    stalled: int
    stall_n: int | None
    generation: bool
    loadgen_procs: int
    pin: bool
    plots: bool
    quick: bool
    answer_heartbeats: bool = True
    start_timeout: float = 30.0
    server_cpus: list[int] = field(default_factory=list)
    load_cpus: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    repeat: int
    scenario: str  # fanout | stall | generation | idle
    n: int
    contender: str
    order: int  # position of the contender within this (repeat, scenario, n) group


# -- the plan --------------------------------------------------------------------------------


def plan(options: Options) -> list[Run]:
    """Every run, interleaved: per repeat, per scenario and N, the contenders in an order
    rotated by one each time, so that none always goes first (machine drift hits all alike)."""
    groups: list[tuple[str, int, list[str]]] = [
        ("fanout", n, options.contenders) for n in options.clients
    ]
    if 1 not in options.clients:
        groups.insert(0, ("idle", 1, options.contenders))
    if options.stalled > 0 and options.stall_n is not None:
        groups.append(("stall", options.stall_n, options.contenders))
    ours = [c for c in options.contenders if c.startswith("wirthforge")]
    if options.generation and ours:
        groups.append(("generation", 1, ours))
    runs: list[Run] = []
    turn = 0
    for repeat in range(options.repeats):
        for scenario, n, contenders in groups:
            shift = turn % len(contenders)
            ordered = contenders[shift:] + contenders[:shift]
            turn += 1
            runs.extend(Run(repeat, scenario, n, c, i) for i, c in enumerate(ordered))
    return runs


# -- one run -----------------------------------------------------------------------------------


def percentile_from_hist(hist: dict[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of a 10 µs-bin histogram, in ms (bin centre)."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return (b + 0.5) * BIN_NS / 1e6
    return None


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def measure(run: Run, options: Options, logs: Path) -> dict[str, Any]:
    """Start the contender fresh, load it, measure one window, stop everything."""
    port = procs.free_port()
    env = procs.child_environment(
        {"WIRTHFORGE_LOG_LEVEL": "WARNING"} if run.contender.startswith("wirthforge") else None
    )
    tag = f"r{run.repeat}-{run.scenario}-{run.n}-{run.contender}"
    server_cpus = set(options.server_cpus) or None
    workers = WORKERS.get(run.contender, 1)
    if workers > 1 and server_cpus is not None:
        # Several workers get every CPU the runner may use (docs/benchmarks/broker.md, "Two
        # workers on Redis against one process"): pinned to one core they could not be more
        # than one process; the load generator keeps its own pinning.
        server_cpus |= set(options.load_cpus)
    redis = None
    redis_port = 0
    if run.contender in BROKER_CONTENDERS:
        redis_port = procs.free_port()
        redis = procs.Child(
            [*REDIS_SERVER, "--port", str(redis_port)],
            cpus=server_cpus,
            env=procs.child_environment(),
            log_path=logs / f"{tag}-redis.log",
        )
        env["WIRTHFORGE_BROKER"] = f"redis://127.0.0.1:{redis_port}"
        time.sleep(0.3)
    server = procs.Child(
        server_command(run.contender, port),
        cpus=server_cpus,
        env=env,
        log_path=logs / f"{tag}-server.log",
    )
    generators: list[procs.Child] = []
    result: dict[str, Any] = {**asdict(run), "port": port, "errors": []}
    try:
        status = procs.wait_ready(server, port, options.start_timeout)
        if workers > 1:  # /status answered from one worker; the others must be up too
            procs.wait_redis_keys(redis_port, "*:alive:*", workers, options.start_timeout)
        clock = status["clock"]
        time.sleep(0.3)
        tree = procs.process_tree(server.pid)
        if workers > 1 and redis is not None:
            tree += procs.process_tree(redis.pid)
        rss_idle = procs.rss_bytes(tree)

        n_procs = max(1, min(options.loadgen_procs, run.n))
        shares = _split(run.n, n_procs)
        stalled = _split(options.stalled if run.scenario == "stall" else 0, n_procs)
        for i in range(n_procs):
            config = {
                "host": "127.0.0.1",
                "port": port,
                "path": "/ws",
                "origin_ns": clock["originMonotonicNs"],
                "rate": clock["rate"],
                "clients": shares[i],
                "stalled": stalled[i],
                "ping_hz": options.ping_hz if i == 0 else 0,
                "answer_heartbeats": options.answer_heartbeats,
                "grace": options.grace,
                "connect_timeout": 10 + 0.03 * run.n,
                "regenerate": run.scenario == "generation" and i == 0,
                "max_seconds": 60 + 0.05 * run.n + options.warmup + options.seconds,
            }
            cpus = {options.load_cpus[i % len(options.load_cpus)]} if options.load_cpus else None
            generators.append(
                procs.Child(
                    [sys.executable, "-m", "benchmarks.loadgen", json.dumps(config)],
                    cpus=cpus,
                    env=procs.child_environment(),
                    log_path=logs / f"{tag}-loadgen{i}.log",
                    pipes=True,
                )
            )
        connect_deadline = time.monotonic() + 20 + 0.05 * run.n
        connected = [g.read_json(connect_deadline) for g in generators]
        result["connect_seconds"] = max(c["seconds"] for c in connected)
        result["connect_failed"] = sum(c["failed"] for c in connected)
        result["errors"] += [e for c in connected for e in c["errors"]]

        start_ns = time.monotonic_ns() + int(options.warmup * 1e9)
        end_ns = start_ns + int(options.seconds * 1e9)
        for g in generators:
            g.send_json({"start_ns": start_ns, "end_ns": end_ns})
        spawned: list[Any] = []
        if workers > 1:  # how the kernel spread the clients, counted during the warm-up
            spawned = procs.worker_processes(procs.process_tree(server.pid))
            result["workers"] = len(spawned)
            result["server_cpus"] = sorted(server_cpus) if server_cpus else None
            result["worker_connections"] = [procs.connections_on(p, port) for p in spawned]
        _sleep_until_ns(start_ns)
        tree = procs.process_tree(server.pid)
        redis_tree = procs.process_tree(redis.pid) if redis is not None else []
        if workers > 1:  # the set-up's whole cost: supervisor, workers and redis-server
            tree += redis_tree
        # Read per process, once, so that the parts (workers, Redis) add up to the whole.
        parts0 = {p.pid: procs.cpu_time_ns([p]) for p in (*tree, *redis_tree)}
        cpu0 = sum(parts0[p.pid] for p in tree)
        t0 = time.monotonic_ns()
        rss0 = procs.rss_bytes(tree)
        _sleep_until_ns(end_ns)
        parts1 = {p.pid: procs.cpu_time_ns([p]) for p in (*tree, *redis_tree)}
        cpu1 = sum(parts1[p.pid] for p in tree)
        if spawned:  # each worker's share: is one of them the bottleneck?
            result["worker_cpu_ns"] = [parts1[p.pid] - parts0[p.pid] for p in spawned]
        if redis_tree:  # Redis's own share, beside the server's
            result["redis_cpu_ns"] = sum(parts1[p.pid] - parts0[p.pid] for p in redis_tree)
        t1 = time.monotonic_ns()
        rss1 = procs.rss_bytes(tree)
        if not server.alive():
            raise RuntimeError(f"the server died during the window: {server.log_tail()}")
        answer_deadline = time.monotonic() + options.grace + 15 + 0.02 * run.n
        results = [g.read_json(answer_deadline) for g in generators]
        result.update(
            combine(
                results,
                run=run,
                seconds=(t1 - t0) / 1e9,
                server_cpu_ns=cpu1 - cpu0,
                rss_idle=rss_idle,
                rss_start=rss0,
                rss_end=rss1,
            )
        )
    except Exception as exc:
        result["errors"].append(f"{type(exc).__name__}: {exc}")
        result["failed"] = True
    finally:
        for g in generators:
            g.stop(timeout=1.0)
        server.stop(timeout=2.0)
        if redis is not None:
            redis.stop(timeout=2.0)
    return result


def _sleep_until_ns(target: int) -> None:
    while True:
        left = (target - time.monotonic_ns()) / 1e9
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def combine(
    results: list[dict[str, Any]],
    *,
    run: Run,
    seconds: float,
    server_cpu_ns: int,
    rss_idle: int,
    rss_start: int,
    rss_end: int,
) -> dict[str, Any]:
    """One run's figures from its load generators' results and the server's counters."""
    lat: dict[int, int] = {}
    lat_user: dict[int, int] = {}
    earliest: dict[int, int] = {}
    for r in results:
        for key, target in (("lat_hist", lat), ("lat_user_hist", lat_user)):
            for b, count in r[key].items():
                target[int(b)] = target.get(int(b), 0) + count
        for n, value in r["earliest"].items():
            k = int(n)
            if k not in earliest or value < earliest[k]:
                earliest[k] = value
    frames_due = results[0]["frames_due"]
    received = [count for r in results for count in r["frames_received"]]
    received += [0] * max(0, run.n - len(received))  # clients that never connected
    msgs = sum(r["msgs"] for r in results)
    rtts = [ns / 1e6 for r in results for ns in r["rtt_ns"]]
    lateness = [ns / 1e6 for ns in earliest.values()]
    loadgen_cpu = [r["cpu_ns"] for r in results if r["cpu_ns"] is not None]
    loadgen_msgs = sum(r["msgs"] for r in results)
    heartbeats = sum(r["heartbeats"] for r in results)
    intervals = [ns / 1e6 for r in results for ns in r["heartbeat_intervals_ns"]]
    p50_late, p99_late = percentile(lateness, 0.5), percentile(lateness, 0.99)
    samples: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for r in results:
        for kind, text in r["samples"].items():
            samples.setdefault(kind, text)
        for kind, size in r["sizes"].items():
            sizes.setdefault(kind, size)
    out: dict[str, Any] = {
        "window_seconds": round(seconds, 4),
        "frames_due": frames_due,
        "frames_received": sum(received),
        "delivery": sum(received) / (frames_due * run.n) if frames_due and run.n else 0.0,
        "delivery_min_client": min(received) / frames_due if frames_due and received else 0.0,
        "latency_p50_ms": percentile_from_hist(lat, 0.50),
        "latency_p90_ms": percentile_from_hist(lat, 0.90),
        "latency_p99_ms": percentile_from_hist(lat, 0.99),
        "latency_p999_ms": percentile_from_hist(lat, 0.999),
        "latency_max_ms": max((r["lat_max_ns"] for r in results), default=0) / 1e6,
        "latency_user_p50_ms": percentile_from_hist(lat_user, 0.50),
        "latency_user_p99_ms": percentile_from_hist(lat_user, 0.99),
        "latency_user_max_ms": max((r["lat_user_max_ns"] for r in results), default=0) / 1e6,
        "latency_samples": sum(lat.values()),
        "negative_latencies": sum(r["negative"] for r in results),
        "frames_missed_by_all": max(0, frames_due - len(earliest)),
        "clock_lateness_p50_ms": p50_late,
        "clock_lateness_p99_ms": p99_late,
        "clock_lateness_max_ms": max(lateness) if lateness else None,
        "clock_jitter_ms": (
            p99_late - p50_late if p99_late is not None and p50_late is not None else None
        ),
        "msgs": msgs,
        "msgs_per_s": msgs / seconds if seconds else 0.0,
        "cpu_pct": 100.0 * server_cpu_ns / (seconds * 1e9) if seconds else 0.0,
        "cpu_us_per_msg": server_cpu_ns / 1e3 / msgs if msgs else None,
        "rss_idle_mb": rss_idle / 2**20,
        "rss_mb": rss_end / 2**20,
        "rss_per_conn_kb": (rss_end - rss_idle) / 1024 / run.n if run.n else None,
        "rss_growth_kb": (rss_end - rss_start) / 1024,
        "ping_p50_ms": percentile(rtts, 0.5),
        "ping_p99_ms": percentile(rtts, 0.99),
        "ping_samples": len(rtts),
        "heartbeats_per_client_s": heartbeats / (run.n * seconds) if run.n and seconds else 0.0,
        "heartbeat_responses": sum(r["heartbeat_responses"] for r in results),
        "heartbeat_interval_p50_ms": percentile(intervals, 0.5),
        "heartbeat_interval_max_ms": max(intervals) if intervals else None,
        "loadgen_cpu_pct": 100.0 * max(loadgen_cpu) / (seconds * 1e9) if loadgen_cpu else None,
        "loadgen_us_per_msg": sum(loadgen_cpu) / 1e3 / loadgen_msgs
        if loadgen_cpu and loadgen_msgs
        else None,
        "kernel_timestamps": all(r["user_stamps"] == 0 for r in results),
        "closed_during_window": sum(r["closed_during_window"] for r in results),
        "close_codes": [c for r in results for c in r["close_codes"]],
        "server_pings": sum(r["server_pings"] for r in results),
        "prompts": sum(r["prompts"] for r in results),
        "message_sizes": sizes,
        "samples": samples,
    }
    if run.scenario == "stall":
        out["stalled_clients"] = sum(r["stalled"] for r in results)
        out["stalled_rx_bytes_start"] = sum(r["stalled_rx"][0] for r in results)
        out["stalled_rx_bytes_end"] = sum(r["stalled_rx"][1] for r in results)
    for r in results:
        out.setdefault("errors", [])
        out["errors"] += r["errors"]
    return out


# -- machine and environment -------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    memory = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu_model,
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
    }


def versions() -> dict[str, str | None]:
    names = (
        "wirthforge-trio",
        "trio",
        "hypercorn",
        "quart",
        "quart-trio",
        "wsproto",
        "h11",
        "orjson",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "websockets",
    )
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    """The checked-out commit, read from .git without running git."""
    git = procs.ROOT / ".git"
    with contextlib.suppress(OSError):
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            path = git / ref
            if path.exists():
                return path.read_text().strip()
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
            return None
        return head
    return None


# -- the command line --------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of N") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("client counts must be 1 or more")
    return values


def _contenders(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s) {', '.join(unknown) or '(none)'}; known: {', '.join(CONTENDERS)}"
        )
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="WebSocket fan-out benchmark: this server beside FastAPI/uvicorn and "
        "websockets peers, interleaved; writes results.json, results.md and PNG plots.",
    )
    p.add_argument("--clients", type=_int_list, help="N values (default 1,10,100,300,1000)")
    p.add_argument("--seconds", type=float, help="measurement window per run (default 10)")
    p.add_argument("--repeats", type=int, help="repeats of the whole plan (default 3)")
    p.add_argument(
        "--contenders",
        type=_contenders,
        default=list(DEFAULT_CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)}",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=procs.ROOT / "docs" / "benchmarks",
        help="output directory (default docs/benchmarks of this checkout)",
    )
    p.add_argument("--warmup", type=float, help="seconds after all clients connected (default 2)")
    p.add_argument(
        "--grace", type=float, help="seconds after the window for late frames (default 1)"
    )
    p.add_argument("--ping-hz", type=float, default=10.0, help="pings per second (default 10)")
    p.add_argument(
        "--no-heartbeat-responses",
        action="store_true",
        help="clients do not answer heartbeats (with and without: what a client message costs)",
    )
    p.add_argument(
        "--stalled", type=int, default=10, help="stalled clients in the stall scenario (10; 0: off)"
    )
    p.add_argument("--stall-n", type=int, help="normal clients beside them (default 100)")
    p.add_argument(
        "--no-generation", action="store_true", help="skip the generation-on CPU scenario"
    )
    p.add_argument(
        "--loadgen-procs", type=int, default=1, help="load generator processes (default 1)"
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run: N=1,10,100, 2 s windows, 1 repeat, short warm-up",
    )
    return p


def options_from(args: argparse.Namespace) -> Options:
    quick = args.quick
    clients = args.clients or list(QUICK_CLIENTS if quick else DEFAULT_CLIENTS)
    stall_n = args.stall_n
    if stall_n is None:
        below = [n for n in clients if n <= 100]
        stall_n = 100 if 100 in clients else (max(below) if below else min(clients))
    options = Options(
        clients=clients,
        seconds=args.seconds if args.seconds is not None else (2.0 if quick else 10.0),
        repeats=args.repeats if args.repeats is not None else (1 if quick else 3),
        contenders=args.contenders,
        out=args.out,
        warmup=args.warmup if args.warmup is not None else (0.5 if quick else 2.0),
        grace=args.grace if args.grace is not None else (0.5 if quick else 1.0),
        ping_hz=args.ping_hz,
        stalled=max(0, args.stalled),
        stall_n=stall_n,
        generation=not args.no_generation,
        loadgen_procs=max(1, args.loadgen_procs),
        pin=not args.no_pin,
        plots=not args.no_plots,
        quick=quick,
        answer_heartbeats=not args.no_heartbeat_responses,
    )
    if options.seconds <= 0 or options.repeats < 1:
        raise SystemExit("--seconds must be positive and --repeats at least 1")
    allowed = sorted(os.sched_getaffinity(0))
    if options.pin and len(allowed) >= 2:
        # The server gets a core of its own; the load generators (and this runner, which
        # mostly sleeps) share the rest.
        options.server_cpus = allowed[:1]
        options.load_cpus = allowed[1:]
    else:
        options.pin = False
    return options


def _describe(result: dict[str, Any]) -> str:
    if result.get("failed"):
        return "FAILED: " + "; ".join(result["errors"])[:400]

    def f(key: str, fmt: str = ".2f") -> str:
        value = result.get(key)
        return "-" if value is None else format(value, fmt)

    return (
        f"delivery {100 * result['delivery']:.2f}%  latency p50 {f('latency_p50_ms')} "
        f"p99 {f('latency_p99_ms')} max {f('latency_max_ms')} ms  cpu {f('cpu_pct', '.1f')}% "
        f"= {f('cpu_us_per_msg', '.1f')} µs/msg  rss/conn {f('rss_per_conn_kb', '.0f')} KiB  "
        f"ping p50 {f('ping_p50_ms')} ms  loadgen {f('loadgen_cpu_pct', '.0f')}%"
    )


REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "always": ("psutil", "orjson"),
    "plots": ("matplotlib",),
    "wirthforge": ("hypercorn", "wirthforge_trio"),
    "fastapi": ("fastapi", "uvicorn"),
    "websockets": ("websockets",),
    "wirthforge-broker": ("hypercorn", "wirthforge_trio", "coredis"),
    "wirthforge-broker-w2": ("hypercorn", "wirthforge_trio", "coredis"),
}


def missing_modules(options: Options) -> list[str]:
    import importlib.util

    wanted = [*REQUIREMENTS["always"], *(REQUIREMENTS["plots"] if options.plots else ())]
    for contender in options.contenders:
        wanted += REQUIREMENTS[contender]
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see :func:`parser` for the options); 0 when every run succeeded."""
    args = parser().parse_args(argv)
    options = options_from(args)
    missing = missing_modules(options)
    if missing:
        print(
            f"benchmark: missing {', '.join(missing)}: install the bench extra "
            "(pip install -e '.[bench]', or run `nox -s bench`)",
            file=sys.stderr,
        )
        return 2
    runs = plan(options)
    options.out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "commit": git_commit(),
        "options": {
            **{k: v for k, v in asdict(options).items() if k != "out"},
            "out": str(options.out),
        },
        "contenders": {name: CONTENDERS[name] for name in options.contenders},
        "server_commands": {name: server_command(name, 0) for name in options.contenders},
        "planned_runs": len(runs),
    }
    print(
        f"benchmark: {len(runs)} runs, contenders {', '.join(options.contenders)}, "
        f"N {options.clients}, {options.seconds:g} s windows, {options.repeats} repeat(s); "
        + (
            f"server on CPU {options.server_cpus}, load on CPU {options.load_cpus}"
            + (
                " (several workers: every CPU)"
                if any(WORKERS.get(c, 1) > 1 for c in options.contenders)
                else ""
            )
            if options.pin
            else "no CPU pinning"
        ),
        flush=True,
    )
    previous_affinity = os.sched_getaffinity(0)
    previous_sigterm = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
        signal.signal(signal.SIGTERM, on_sigterm)
    results: list[dict[str, Any]] = []
    interrupted = False
    try:
        if options.pin:
            os.sched_setaffinity(0, set(options.load_cpus))
        with tempfile.TemporaryDirectory(prefix="wirthforge-bench-") as logs:
            for i, run in enumerate(runs, 1):
                label = f"[{i}/{len(runs)}] r{run.repeat + 1} {run.scenario} N={run.n} " + (
                    f"+{options.stalled} stalled " if run.scenario == "stall" else ""
                )
                print(f"{label}{run.contender} ...", end=" ", flush=True)
                result = measure(run, options, Path(logs))
                results.append(result)
                print(_describe(result), flush=True)
                # keep what was measured even if a later run is interrupted
                report.write_json(options.out / "results.json", meta, results, partial=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing what was measured", flush=True)
    finally:
        procs.stop_all()
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, previous_affinity)
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous_sigterm)
    meta["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    meta["interrupted"] = interrupted
    summary = report.summarise(results, options.contenders, options.clients)
    report.write_json(options.out / "results.json", meta, results, summary=summary)
    report.write_markdown(options.out / "results.md", meta, summary)
    written = ["results.json", "results.md"]
    if options.plots:
        written += report.write_plots(options.out, summary, options.contenders, options.clients)
    print(f"wrote {', '.join(str(options.out / name) for name in written)}", flush=True)
    failed = [r for r in results if r.get("failed")]
    if failed:
        print(f"{len(failed)} run(s) failed; see their errors in results.json", file=sys.stderr)
    return 130 if interrupted else (1 if failed else 0)
