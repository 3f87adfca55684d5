"""A server killed (SIGKILL) mid-generation and started again on the same SQLite store lets a
client resume: the completed session exactly, the interrupted one with every token the store
had committed, ended and marked interrupted. Two real server processes in sequence."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import trio

from wirthforge_trio.engine.recovery import INTERRUPTED
from wirthforge_trio.sources.demo import DemoSource

from .conftest import CheckedClient, _connect
from .test_commands import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DONE_PROMPT = "tell me about lighthouses and their keepers"
CUT_PROMPT = "a long answer about rivers, cut short by a crash"


def serve(store: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "wirthforge"), "serve", "--port", str(port), "--store", f"sqlite:{store}"],
        cwd=ROOT,
        env={**os.environ, "WIRTHFORGE_DEMO_SPEED": "1.0", "WIRTHFORGE_LOG_LEVEL": "WARNING"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def committed_tokens(store: Path, session_id: str) -> int:
    """Tokens of a session the store has committed (read as another process would)."""
    with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT tokens FROM batches WHERE session_id = ?", (session_id,))
        return sum(len(json.loads(batch)) for (batch,) in rows)


def stored_status(store: Path, session_id: str) -> str:
    with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        (status,) = db.execute("SELECT status FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return str(status)


async def post(port: int, prompt: str) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"http://127.0.0.1:{port}/prompt", json={"prompt": prompt})
    assert answer.status_code == 202, answer.text
    session_id: str = answer.json()["sessions"][0]["sessionId"]
    return session_id


async def tokens_of(client: CheckedClient, session_id: str, until: int | None) -> list[str]:
    """Tokens of one session as they stream: until it completes, or ``until`` are held."""
    tokens: list[str] = []
    while True:
        message = await client.receive_type("token_stream", seconds=60)
        payload = message["payload"]
        if payload["sessionId"] != session_id:
            continue
        tokens.extend(payload["tokens"])
        if payload["isComplete"] or (until is not None and len(tokens) >= until):
            return tokens


async def test_sessions_survive_a_killed_server_on_the_same_store(tmp_path: Path) -> None:
    store = tmp_path / "resume.db"
    first_port, second_port = free_port(), free_port()
    first = serve(store, first_port)
    try:
        await wait_healthy(first_port)
        assert stat.S_IMODE(store.stat().st_mode) == 0o600
        async with _connect(f"ws://127.0.0.1:{first_port}/ws?resume=1") as client:
            await client.send({"type": "resume", "payload": {}})
            instance = (await client.receive_type("state_snapshot"))["payload"]["serverInstance"]
            done = await post(first_port, DONE_PROMPT)
            done_tokens = await tokens_of(client, done, None)
            cut = await post(first_port, CUT_PROMPT)
            seen = await tokens_of(client, cut, 5)
            last_frame = client.last_frame
            # "Written" means committed: wait until the store holds what the client saw.
            await wait_until(lambda: committed_tokens(store, cut) >= len(seen), seconds=20)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
    finally:
        first.kill()
        first.communicate()
    kept = committed_tokens(store, cut)
    done_text = DemoSource(seed=0, name="demo").text_for(DONE_PROMPT)
    cut_text = DemoSource(seed=0, name="demo").text_for(CUT_PROMPT)
    assert "".join(done_tokens) == done_text
    assert stored_status(store, cut) == "streaming", "it ended before the crash: nothing proven"

    second = serve(store, second_port)
    try:
        await wait_healthy(second_port)
        async with _connect(f"ws://127.0.0.1:{second_port}/ws?resume=1") as client:
            await client.send(
                {
                    "type": "resume",
                    "payload": {
                        "serverInstance": instance,
                        "lastFrame": last_frame,
                        "sessions": [
                            {"sessionId": done, "tokens": 3},
                            {"sessionId": cut, "tokens": 2},
                        ],
                    },
                }
            )
            snapshot = await client.receive_type("state_snapshot")
            payload = snapshot["payload"]
            assert payload["resumed"] is True
            assert payload["serverInstance"] != instance  # a new run of the same log
            rows = {row["sessionId"]: row for row in payload["sessions"]}
            assert rows[done]["status"] == "complete" and rows[done]["resumable"]
            assert rows[cut]["status"] == "failed" and rows[cut]["reason"] == INTERRUPTED
            assert rows[cut]["tokens"] == kept
            replay: dict[str, dict[str, Any]] = {}
            with trio.fail_after(10):
                while len(replay) < 2:
                    message = await client.receive_type("token_stream")
                    replay[message["payload"]["sessionId"]] = message["payload"]
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.communicate(timeout=15)
        finally:
            second.kill()
    assert "".join(done_tokens[:3]) + "".join(replay[done]["tokens"]) == done_text
    assert replay[done]["isComplete"] is True
    cut_resumed = "".join(seen[:2]) + "".join(replay[cut]["tokens"])
    assert len(seen[:2]) + len(replay[cut]["tokens"]) == kept >= len(seen)
    assert cut_text.startswith(cut_resumed)
    assert replay[cut]["isComplete"] is True
    check_files(tmp_path)


def check_files(directory: Path) -> None:
    """The database and its WAL: each readable by its owner only, the prompts in none."""
    for path in directory.iterdir():
        data = path.read_bytes()
        assert DONE_PROMPT.encode() not in data and CUT_PROMPT.encode() not in data, path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def wait_until(predicate: Callable[[], bool], seconds: float) -> None:
    """Poll ``predicate`` (another process's file: nothing to wait on) until it holds."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - a file written by another process
            await trio.sleep(0.05)
