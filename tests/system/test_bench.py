"""The benchmark's mechanics (issue 6): framing against real WebSocket libraries, the plan, and a
brief run of all three contenders that must produce well-formed output.

Speed itself is judged from the benchmark's report, never here: no assertion below is timed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from wsproto.frame_protocol import FrameProtocol

from benchmarks import run, suite, wake_floor
from benchmarks.peers import common
from benchmarks.wsframes import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameReader,
    HandshakeError,
    ProtocolError,
    accept_for,
    encode_client_frame,
    parse_handshake_response,
)
from tests.support.commands import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZES = (0, 1, 125, 126, 127, 65535, 65536, 70000)
CONTENDERS = ("wirthforge", "fastapi", "websockets")


# -- framing -----------------------------------------------------------------------------------


def server_frame(payload: bytes, opcode: Opcode = Opcode.TEXT, fin: bool = True) -> bytes:
    """A frame as the `websockets` library's server side writes it (unmasked)."""
    return Frame(opcode, payload, fin=fin).serialize(mask=False)


def parse_as_server(data: bytes) -> Frame:
    """Our client frame, parsed by the `websockets` library as a server parses client frames."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", SIZES)
def test_reader_reads_websockets_frames(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = server_frame(payload)
    assert FrameReader().feed(data) == [(OP_TEXT, payload)]


@pytest.mark.parametrize("size", SIZES)
def test_reader_reads_byte_by_byte(size: int) -> None:
    payload = b"z" * size
    data = server_frame(payload) + server_frame(b"next")
    reader = FrameReader()
    got: list[tuple[int, bytes]] = []
    step = 1 if size < 200 else 997
    for i in range(0, len(data), step):
        got += reader.feed(data[i : i + step])
    assert got == [(OP_TEXT, payload), (OP_TEXT, b"next")]
    assert reader.pending == 0


def test_reader_reassembles_fragments_around_a_control_frame() -> None:
    data = (
        server_frame(b"first ", fin=False)
        + server_frame(b"ping!", Opcode.PING)
        + server_frame(b"x" * 126, Opcode.CONT, fin=False)
        + server_frame(b" last", Opcode.CONT)
    )
    messages = FrameReader().feed(data)
    assert messages == [(OP_PING, b"ping!"), (OP_TEXT, b"first " + b"x" * 126 + b" last")]


def test_reader_refuses_what_a_server_must_not_send() -> None:
    masked = encode_client_frame(b"hello")
    with pytest.raises(ProtocolError):
        FrameReader().feed(masked)
    with pytest.raises(ProtocolError):
        FrameReader().feed(server_frame(b"orphan", Opcode.CONT))


@pytest.mark.parametrize("size", SIZES)
def test_client_frames_parse_in_websockets(size: int) -> None:
    payload = bytes(i % 253 for i in range(size))
    frame = parse_as_server(encode_client_frame(payload))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert bytes(frame.data) == payload


@pytest.mark.parametrize("size", (125, 126, 65536))
def test_client_frames_parse_in_wsproto(size: int) -> None:
    text = "é" * (size // 2) + "a" * (size % 2)
    protocol = FrameProtocol(client=False, extensions=[])
    protocol.receive_bytes(encode_client_frame(text.encode()))
    frames = list(protocol.received_frames())
    assert len(frames) == 1
    assert frames[0].payload == text
    assert frames[0].message_finished


def test_client_control_frames() -> None:
    frame = parse_as_server(encode_client_frame(b"\x03\xe8", OP_CLOSE))
    assert frame.opcode is Opcode.CLOSE
    assert bytes(frame.data) == b"\x03\xe8"


def test_handshake() -> None:
    # RFC 6455, section 1.3
    assert accept_for(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    assert parse_handshake_response(head[:20], key) == -1
    assert parse_handshake_response(head + b"\x81\x00", key) == len(head)
    with pytest.raises(HandshakeError):
        parse_handshake_response(b"HTTP/1.1 403 Forbidden\r\n\r\n", key)
    with pytest.raises(HandshakeError):
        parse_handshake_response(head.replace(b"s3pP", b"AAAA"), key)


# -- the plan and the arithmetic ---------------------------------------------------------------


def test_plan_rotates_the_contenders() -> None:
    args = suite.parser().parse_args(["--clients", "1,10,100", "--repeats", "3", "--no-pin"])
    options = suite.options_from(args)
    runs = suite.plan(options)
    fanout = [r for r in runs if r.scenario == "fanout"]
    assert len(fanout) == 3 * 3 * 3
    firsts = [r.contender for r in fanout if r.order == 0]
    assert sorted(firsts.count(c) for c in CONTENDERS) == [3, 3, 3]
    assert {(r.scenario, r.n) for r in runs if r.scenario != "fanout"} == {
        ("stall", 100),
        ("generation", 1),
    }


def test_percentiles() -> None:
    hist = {0: 50, 10: 49, 100: 1}  # bins of 10 µs
    assert suite.percentile_from_hist(hist, 0.5) == pytest.approx(0.005)
    assert suite.percentile_from_hist(hist, 0.99) == pytest.approx(0.105)
    assert suite.percentile_from_hist(hist, 1.0) == pytest.approx(1.005)
    assert suite.percentile_from_hist({}, 0.5) is None
    assert suite.percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_peer_shapes_match_the_captured_server_messages() -> None:
    built = {
        "startup_complete": common.startup_complete(),
        "energy_update": common.energy_update(154, 0.0302),
        "heartbeat": common.heartbeat(0, "c-d40ea4e47b54", 59.99),
        "pong": common.pong({"t": 123456789, "x": "abc"}),
    }
    for kind, text in built.items():
        captured = json.loads(common.CAPTURED[kind])
        assert shape(json.loads(text)) == shape(captured), kind
        assert abs(len(text) - len(common.CAPTURED[kind])) <= 4, kind


def test_runner_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT.parent,
    )
    assert done.returncode == 0, done.stderr
    assert "--clients" in done.stdout


# -- a brief run of everything -----------------------------------------------------------------


def shape(value: Any) -> Any:
    """Keys (in order) and value types, recursively: what "the same JSON" means."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return "number" if isinstance(value, int | float) else type(value).__name__


def require_linux() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the benchmark needs Linux (epoll, SO_TIMESTAMPNS, /proc, CPU affinity)")


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_linux()
    out = tmp_path_factory.mktemp("bench")
    code = run.main(
        [
            "--clients",
            "1,3",
            "--seconds",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0.3",
            "--grace",
            "0.3",
            "--stalled",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0, (out / "results.json").read_text()[-3000:]
    return out


@pytest.fixture(scope="module")
def results(bench_out: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((bench_out / "results.json").read_text())
    return document


def test_every_contender_and_n_was_measured(results: dict[str, Any]) -> None:
    assert not results["partial"]
    meta = results["meta"]
    assert meta["date"] and meta["machine"]["cpus"] and meta["versions"]["trio"]
    runs = results["runs"]
    assert not [r["errors"] for r in runs if r.get("failed")]
    for contender in CONTENDERS:
        for n in (1, 3):
            [r] = [
                r
                for r in runs
                if r["contender"] == contender and r["scenario"] == "fanout" and r["n"] == n
            ]
            assert r["frames_due"] > 0
            assert r["frames_received"] > 0
            assert 0.0 <= r["delivery"] <= 1.0
            assert 0.0 <= r["delivery_min_client"] <= r["delivery"]
            for key in (
                "latency_p50_ms",
                "latency_p99_ms",
                "latency_max_ms",
                "latency_user_p99_ms",
                "clock_lateness_p50_ms",
                "clock_jitter_ms",
                "ping_p50_ms",
                "ping_p99_ms",
            ):
                assert isinstance(r[key], float) and r[key] >= 0.0, (contender, n, key)
            assert r["latency_p50_ms"] <= r["latency_p99_ms"] <= r["latency_max_ms"] + 0.01
            assert r["msgs"] > 0 and r["cpu_us_per_msg"] > 0 and r["cpu_pct"] > 0
            assert isinstance(r["rss_per_conn_kb"], float)
            assert r["ping_samples"] > 0
            assert r["connect_failed"] == 0
            assert r["negative_latencies"] == 0
            assert {"energy_update", "heartbeat", "pong", "startup_complete"} <= set(r["samples"])
            heartbeats = r["heartbeats_per_client_s"] * n * r["window_seconds"]
            assert r["heartbeat_responses"] == round(heartbeats)  # every one answered


def test_heartbeats_can_go_unanswered(tmp_path: Path) -> None:
    """``--no-heartbeat-responses``: the clients get their heartbeats, answer none, and the
    server (which enforces no deadline before a first answer) keeps serving them."""
    require_linux()
    code = run.main(
        [
            *("--contenders", "wirthforge", "--clients", "2", "--seconds", "1.5"),
            *("--repeats", "1", "--warmup", "0.3", "--grace", "0.3", "--stalled", "0"),
            *("--no-generation", "--no-plots", "--no-heartbeat-responses", "--out", str(tmp_path)),
        ]
    )
    document = json.loads((tmp_path / "results.json").read_text())
    assert code == 0, document["runs"]
    assert document["meta"]["options"]["answer_heartbeats"] is False
    assert "heartbeats left unanswered" in (tmp_path / "results.md").read_text(encoding="utf-8")
    [r] = [r for r in document["runs"] if r["scenario"] == "fanout"]
    assert r["heartbeats_per_client_s"] > 0
    assert r["heartbeat_responses"] == 0
    assert r["closed_during_window"] == 0
    assert r["frames_received"] > 0


def test_two_workers_on_redis_are_one_measured_set_up(tmp_path: Path) -> None:
    """``wirthforge-broker-w2`` (issue 24): both workers joined before the clients connect,
    every client is held by one of them, and the CPU covers supervisor, workers and Redis."""
    require_linux()
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `apt-get install redis-server`")
    assert "wirthforge-broker-w2" not in suite.DEFAULT_CONTENDERS  # run only on request
    code = run.main(
        [
            *("--contenders", "wirthforge-broker-w2", "--clients", "3", "--seconds", "1"),
            *("--repeats", "1", "--warmup", "0.3", "--grace", "0.3", "--stalled", "0"),
            *("--no-generation", "--no-plots", "--out", str(tmp_path)),
        ]
    )
    document = json.loads((tmp_path / "results.json").read_text())
    assert code == 0, document["runs"]
    command = document["meta"]["server_commands"]["wirthforge-broker-w2"]
    assert command[command.index("-w") + 1] == "2"
    [r] = [r for r in document["runs"] if r["scenario"] == "fanout"]
    assert r["workers"] == 2
    assert sum(r["worker_connections"]) == 3
    assert r["delivery"] > 0 and r["connect_failed"] == 0 and r["negative_latencies"] == 0
    assert r["redis_cpu_ns"] > 0
    assert all(ns > 0 for ns in r["worker_cpu_ns"])  # each worker runs its own frame clock
    tree_ns = r["cpu_pct"] / 100 * r["window_seconds"] * 1e9  # window rounded to 0.1 ms
    assert tree_ns >= (sum(r["worker_cpu_ns"]) + r["redis_cpu_ns"]) * 0.999
    if len(os.sched_getaffinity(0)) >= 2:
        assert r["server_cpus"] == sorted(os.sched_getaffinity(0))


def test_peers_send_the_servers_json(results: dict[str, Any]) -> None:
    runs = [r for r in results["runs"] if r["scenario"] == "fanout" and r["n"] == 1]
    by = {r["contender"]: r for r in runs}
    reference = by["wirthforge"]
    for contender in ("fastapi", "websockets"):
        for kind in ("energy_update", "heartbeat", "startup_complete"):
            mine, theirs = by[contender]["samples"][kind], reference["samples"][kind]
            assert shape(json.loads(mine)) == shape(json.loads(theirs)), (contender, kind)
            assert abs(len(mine) - len(theirs)) <= 8, (contender, kind)
        pong = json.loads(by[contender]["samples"]["pong"])
        assert set(pong["payload"]) == {"i", "t"}


def test_stall_and_generation_scenarios(results: dict[str, Any]) -> None:
    stalls = [r for r in results["runs"] if r["scenario"] == "stall"]
    assert {r["contender"] for r in stalls} == set(CONTENDERS)
    for r in stalls:
        assert r["stalled_clients"] == 2
        assert r["stalled_rx_bytes_end"] > 0  # their receive buffers hold what they never read
        assert r["frames_received"] > 0
    [generation] = [r for r in results["runs"] if r["scenario"] == "generation"]
    assert generation["contender"] == "wirthforge"
    assert generation["prompts"] >= 1


def test_summary(results: dict[str, Any]) -> None:
    summary = results["summary"]
    for contender in CONTENDERS:
        entry = summary["by_contender"][contender]
        assert set(entry["fanout"]) == {"1", "3"}
        stats = entry["fanout"]["1"]["latency_p99_ms"]
        assert stats["min"] <= stats["median"] <= stats["max"]
        assert entry["largest_n_held"] in (None, 1, 3)
        assert entry["idle_cpu_pct"]["median"] > 0
    assert summary["by_contender"]["wirthforge"]["generation_cpu_pct"]["on"] is not None
    comparison = summary["comparison"]
    assert comparison["reference_n"] == 3
    assert comparison["cpu_us_per_msg"]["best_peer"] in ("fastapi", "websockets")
    assert {t["target"] for t in summary["targets"]} >= {"1 client: p99 ≤ 1 ms"}


def test_markdown_and_plots(bench_out: Path) -> None:
    markdown = (bench_out / "results.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Benchmark results")
    for contender in CONTENDERS:
        assert f"| {contender} |" in markdown or f" {contender} |" in markdown
    assert "## frame latency p99 (ms)" in markdown
    assert "## Largest N held" in markdown
    for name in ("latency.png", "delivery.png", "cpu.png"):
        data = (bench_out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 1000
    assert not (bench_out / "results.json.tmp").exists()
    assert os.sched_getaffinity(0)  # the runner gave this process its CPUs back


# -- the wake-up floor -------------------------------------------------------------------------


def test_floor_answers_every_whole_ping_once() -> None:
    pings = wake_floor._Pings()
    ping, response = wake_floor.PING, wake_floor.RESPONSE
    assert pings.answers(ping + response + ping) == wake_floor.PONG * 2
    assert pings.answers(response) == b""
    assert pings.answers(ping[:7]) == b""  # a ping cut in two by the reads
    assert pings.answers(ping[7:] + ping[:3]) == wake_floor.PONG
    assert pings.answers(ping[3:]) == wake_floor.PONG
    assert pings.answers(b"") == b""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd, /proc, affinity")
@pytest.mark.parametrize("mode", wake_floor.CLIENT_MODES)
def test_floor_loops_serve_their_client(mode: str) -> None:
    cpu = min(os.sched_getaffinity(0))
    floor = wake_floor.measure(mode, 0.3, cpu)
    assert floor.percent > 0.0
    assert floor.received is not None
    # The loops run 2.3 s: about 138 frames, 2 heartbeats and 23 pings answered. Only that
    # they were served is checked here, not how punctually.
    assert floor.received["frames"] > 60
    assert floor.received["heartbeats"] >= 1
    assert floor.received["pongs"] > 10
