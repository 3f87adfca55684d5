"""The SQLite resume log on its own (no socket): what it keeps, what retention drops, the file
mode, and the settings around it (store and broker URLs, the broker's password never shown)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
import trio

from tests.support.broker import Redis
from tests.support.logs import records_logged
from tests.support.network import free_port
from tests.support.server import start_server, test_settings
from wirthforge_trio.config import Settings, SettingsError
from wirthforge_trio.contract.events import ErrorEvent, ErrorPayload
from wirthforge_trio.engine.decipher import Decipher, Retention
from wirthforge_trio.engine.energy import PROFILES
from wirthforge_trio.engine.resume_log import StoreError
from wirthforge_trio.engine.sqlite_log import SqliteLog
from wirthforge_trio.sources.base import Token
from wirthforge_trio.web import create_app

PASSWORD = "pa55-word-never-logged"


def decipher(retention: Retention | None = None) -> Decipher:
    return Decipher(["demo"], PROFILES["default"], "demo", retention=retention)


def token(text: str) -> Token:
    return Token(text=text, at=0.0)


def note(message: str) -> ErrorEvent:
    return ErrorEvent(
        timestamp=1,
        payload=ErrorPayload(
            severity="warning", code="NOTE", message=message, component="orchestrator"
        ),
    )


async def one_run(path: Path, retention: Retention | None, work: list[str]) -> Decipher:
    """A run on the store: recover, then for each word a finished session and an event."""
    store = SqliteLog(path)
    engine = decipher(retention)
    engine.log = store
    engine.restore(await store.open(f"i-run{len(work)}"), trio.current_time(), 1e9)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        frame = 0
        for word in work:
            session = engine.start_session("demo", trio.current_time())
            engine.on_token(session, token(word))
            engine.report(note(word))
            frame += 1
            engine.tick(frame, trio.current_time())
            engine.end_session(session, trio.current_time())
            frame += 1
            engine.tick(frame, trio.current_time())
        nursery.cancel_scope.cancel()  # the writer commits what is queued on its way out
    return engine


async def test_a_new_run_recovers_sessions_and_events_within_retention(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    retention = Retention(sessions=2, events=3)
    first = await one_run(path, retention, ["a", "b", "c", "d"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = await one_run(path, retention, [])
    assert second.predecessors == ("i-run4",)
    assert second.run == 1
    assert [s.text for s in second.sessions.values()] == ["c", "d"]
    assert [s.text for s in second.sessions.values()] == [s.text for s in first.sessions.values()]
    assert all(s.status == "complete" and not s.interrupted for s in second.sessions.values())
    assert [logged.event for logged in second.history] == [logged.event for logged in first.history]
    kept = [logged.event for logged in second.history if isinstance(logged.event, ErrorEvent)]
    assert [e.payload.message for e in kept] == ["b", "c", "d"]


async def test_a_session_live_when_its_run_stopped_comes_back_ended_and_interrupted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    store = SqliteLog(path)
    engine = decipher()
    engine.log = store
    engine.restore(await store.open("i-first"), trio.current_time(), 1e9)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        session = engine.start_session("demo", trio.current_time())
        for word in ("one ", "two "):
            engine.on_token(session, token(word))
        engine.tick(1, trio.current_time())
        engine.on_token(session, token("unpublished"))  # never sent: never kept either
        nursery.cancel_scope.cancel()
    again = decipher()
    again.restore(await SqliteLog(path).open("i-second"), trio.current_time(), 1e9)
    recovered = again.sessions[session.id]
    assert recovered.tokens == ["one ", "two "]
    assert recovered.status == "failed" and recovered.interrupted
    assert recovered.completion_sent and recovered.ended_at is not None


def test_a_path_that_cannot_hold_a_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "not.db").write_text("not a database")
    for path in (tmp_path / "missing" / "x.db", tmp_path / "not.db"):
        with pytest.raises(StoreError, match="WIRTHFORGE_STORE"):
            SqliteLog(path)
    with pytest.raises(SettingsError, match="WIRTHFORGE_STORE"):
        create_app(Settings(store=f"sqlite:{tmp_path / 'missing' / 'x.db'}"))


def test_without_a_store_the_engine_writes_nowhere() -> None:
    app = create_app(Settings())
    assert app.wirthforge.engine.log is None
    assert app.wirthforge.engine.decipher.log is None


@pytest.mark.parametrize("value", ["resume.db", "sqlite:", "postgres://x/y", "sqlite:   "])
def test_a_store_setting_must_be_sqlite_path(value: str) -> None:
    with pytest.raises(SettingsError, match="sqlite:PATH"):
        Settings(store=value)


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{PASSWORD}@host:6379",
        f"redis://:{PASSWORD}@host:99999",
        f"redis://:{PASSWORD}@/0",
        f"redis://:{PASSWORD}@host/zero",
    ],
)
def test_a_bad_broker_url_is_refused_without_repeating_its_password(url: str) -> None:
    with pytest.raises(SettingsError, match="WIRTHFORGE_BROKER") as caught:
        Settings(broker=url)
    assert PASSWORD not in str(caught.value)


def test_a_broker_url_is_kept_and_shown_redacted() -> None:
    settings = Settings.from_env({"WIRTHFORGE_BROKER": f"redis://me:{PASSWORD}@10.0.0.5:6380/2"})
    assert settings.broker == f"redis://me:{PASSWORD}@10.0.0.5:6380/2"
    assert settings.broker_redacted == "redis://***@10.0.0.5:6380/2"
    assert PASSWORD not in repr(settings)
    assert Settings(broker="redis://localhost").broker_redacted == "redis://localhost"


async def test_the_broker_password_is_never_logged(nursery: trio.Nursery) -> None:
    guarded = Redis(port=free_port(), password=PASSWORD)
    guarded.start()
    package = logging.getLogger("wirthforge_trio")
    level = package.level
    package.setLevel(logging.DEBUG)
    try:
        with records_logged() as records:
            server = await start_server(
                nursery, test_settings(broker=guarded.url, log_level="DEBUG")
            )
            server.stop.set()
    finally:
        package.setLevel(level)
        guarded.stop()
    lines = [record.getMessage() for record in records]
    assert any(f"redis://***@127.0.0.1:{guarded.port}/0" in line for line in lines), lines
    assert not any(PASSWORD in line for line in lines)


async def test_a_session_of_a_model_no_longer_run_is_dropped_from_the_store(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    await one_run(path, None, ["a"])
    store = SqliteLog(path)
    other = Decipher(["other"], PROFILES["default"], "other")
    other.log = store
    other.restore(await store.open("i-other"), trio.current_time(), 1e9)
    assert not other.sessions
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        nursery.cancel_scope.cancel()
    assert not (await SqliteLog(path).open("i-third")).sessions
