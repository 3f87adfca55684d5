"""Security end to end, against a real server: loopback by default, the access token (header,
subprotocol, never the URL), the message rate limit, connection limits, and the /prompt
limits. The rules themselves are unit-tested in test_limits.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from tests.support.commands import BIN, ROOT, wait_healthy
from tests.support.network import free_port, lan_address
from tests.support.server import RunningServer, start_server, test_settings
from tests.support.tokens import BEARER, TOKEN, WS_BEARER
from wirthforge_trio.watch import watch


def env_without_token() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WIRTHFORGE_")}


def spawn(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``wirthforge ARGS`` with its output in ``log`` (DEBUG output may outgrow a pipe)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "wirthforge"), *args],
            cwd=ROOT,
            env={**env_without_token(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def rejected(url: str, **kwargs: Any) -> ConnectionRejected:
    """The handshake's refusal (fails the test if the server accepts)."""
    with pytest.raises(ConnectionRejected) as refusal:
        async with open_websocket_url(url, **kwargs):
            pass  # pragma: no cover - the handshake must fail
    return refusal.value


def header(refusal: ConnectionRejected, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in refusal.headers or ():
        if key.lower() == wanted:
            return bytes(value).decode()
    return None


def error_of(refusal: ConnectionRejected) -> str:
    message = json.loads(refusal.body or b"{}")["error"]
    assert isinstance(message, str)
    return message


@pytest.fixture
async def guarded(nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    running = await start_server(nursery, test_settings(token=TOKEN))
    yield running
    running.stop.set()


# --- the command line ------------------------------------------------------------------------


def test_serve_refuses_a_non_loopback_bind_without_a_token() -> None:
    for args in (["--host", "0.0.0.0"], ["--host", "::"]):
        result = subprocess.run(
            [str(BIN / "wirthforge"), "serve", *args, "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=ROOT,
            env=env_without_token(),
        )
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "WIRTHFORGE_TOKEN" in lines[0] and "--token" in lines[0] and "loopback" in lines[0]
        assert "Traceback" not in result.stderr
    # A token that a subprotocol cannot carry, or too short: refused without repeating it.
    result = subprocess.run(
        [str(BIN / "wirthforge"), "serve", "--host", "0.0.0.0", "--token", "hunter2 hunter2"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        env=env_without_token(),
    )
    assert result.returncode == 2
    assert "WIRTHFORGE_TOKEN" in result.stderr and "hunter2" not in result.stderr


async def test_serve_with_a_token_on_all_addresses_and_the_token_never_logged(
    tmp_path: Path,
) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    process = spawn(
        ["serve", "--host", "0.0.0.0", "--port", str(port)],
        log,
        WIRTHFORGE_TOKEN=TOKEN,
        WIRTHFORGE_LOG_LEVEL="DEBUG",
    )
    try:
        await wait_healthy(port)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.get("/status")).status_code == 401
            wrong = await http.get("/status", headers={"Authorization": "Bearer x"})
            assert wrong.status_code == 403
            assert (await http.get("/status", headers=BEARER)).status_code == 200
            assert (await http.get(f"/status?token={TOKEN}", headers=BEARER)).status_code == 400
            posted = await http.post("/prompt", json={"prompt": "hello"}, headers=BEARER)
            assert posted.status_code == 202
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws", extra_headers=WS_BEARER) as ws:
            assert json.loads(await ws.get_message())["type"] == "startup_complete"
        await rejected(
            f"ws://127.0.0.1:{port}/ws", subprotocols=["wirthforge.token.wrong-wrong-wrong-x"]
        )
        process.send_signal(signal.SIGINT)
        process.wait(15)
    finally:
        process.kill()
    output = log.read_text()
    assert process.returncode == 0, output
    assert "#token=<token>" in output  # how to open the page is said, the token is not
    assert "refused" in output  # the refusals are logged...
    assert TOKEN not in output  # ...and nothing, at DEBUG, ever shows the token
    assert "Traceback" not in output


# --- the page, in a real browser --------------------------------------------------------------


def test_the_page_in_a_real_browser_takes_the_token_from_the_fragment(tmp_path: Path) -> None:
    """Chromium opens http://HOST:PORT/#token=...: the page's WebSocket offers the token as a
    subprotocol (and accepts the server's choice), its fetches send it as a Bearer header,
    and no URL the browser requests carries it. Without the fragment it cannot connect."""
    from playwright.sync_api import sync_playwright

    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM} (see tests/test_browser.py)")
    address = lan_address() or "127.0.0.1"
    port = free_port()
    log = tmp_path / "server.log"
    process = spawn(
        ["serve", "--host", "0.0.0.0", "--port", str(port)],
        log,
        WIRTHFORGE_TOKEN=TOKEN,
        WIRTHFORGE_DEMO_SPEED="3",
    )
    base = f"http://{address}:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                urls: list[str] = []
                page.on("request", lambda r: urls.append(r.url))
                page.on("websocket", lambda ws: urls.append(ws.url))
                page.goto(f"{base}/#token={TOKEN}")
                page.wait_for_function(
                    "() => document.getElementById('state').dataset.state === 'connected'",
                    timeout=10_000,
                )
                # The browser accepted the server's choice of subprotocol.
                assert (
                    page.evaluate("() => window.wirthforge.client._ws.protocol") == "wirthforge.v1"
                )
                # /models answered (Bearer header): the picker lists the model.
                page.wait_for_selector("#model-picker input[value='demo']", timeout=5_000)
                page.fill("#prompt", "How do tides work")
                page.click("#send")
                page.wait_for_selector(".run .session", timeout=5_000)
                page.wait_for_function(
                    "() => document.querySelector('.run .session')?.dataset.complete === 'true'",
                    timeout=30_000,
                )
                assert len(str(page.locator(".run .session .text").text_content())) > 20
                assert page.locator("#errors li").count() == 0
                assert urls and not any(TOKEN in url for url in urls), urls
                # The same page without the token: refused at the handshake, never connected.
                bare = browser.new_page()
                bare.goto(base)
                bare.wait_for_function(
                    "() => document.getElementById('state').dataset.state === 'reconnecting'",
                    timeout=10_000,
                )
                assert bare.locator("#state").get_attribute("data-state") != "connected"
            finally:
                browser.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        finally:
            process.kill()
    output = log.read_text()
    assert "refused a WebSocket handshake" in output and "no access token" in output
    assert TOKEN not in output


# --- the token -------------------------------------------------------------------------------


async def test_token_in_the_authorization_header_opens_the_websocket(
    guarded: RunningServer,
) -> None:
    async with guarded.connect(extra_headers=WS_BEARER) as client:
        assert (await client.receive())["type"] == "startup_complete"
        assert client.ws.subprotocol is None  # none offered, none selected
        await client.send({"type": "ping", "payload": {"n": 1}})
        assert (await client.receive_type("pong"))["payload"] == {"n": 1}


async def test_token_as_a_subprotocol_opens_the_websocket(guarded: RunningServer) -> None:
    offered = ["wirthforge.v1", f"wirthforge.token.{TOKEN}"]
    async with guarded.connect(subprotocols=offered) as client:
        assert (await client.receive())["type"] == "startup_complete"
        assert client.ws.subprotocol == "wirthforge.v1"  # the token is not echoed back
    # Offered alone, the token protocol is selected (a browser needs one selected).
    async with guarded.connect(subprotocols=[f"wirthforge.token.{TOKEN}"]) as client:
        assert (await client.receive())["type"] == "startup_complete"
        assert client.ws.subprotocol == f"wirthforge.token.{TOKEN}"


async def test_missing_token_is_401_and_wrong_token_is_403(guarded: RunningServer) -> None:
    refusal = await rejected(guarded.ws_url)
    assert refusal.status_code == 401
    assert (header(refusal, "WWW-Authenticate") or "").startswith("Bearer")
    assert "Authorization: Bearer" in error_of(refusal)
    assert "wirthforge.token." in error_of(refusal)
    for kwargs in (
        {"extra_headers": [(b"Authorization", b"Bearer not-the-token-at-all")]},
        {"extra_headers": [(b"Authorization", f"Bearer {TOKEN}x".encode())]},
        {"subprotocols": ["wirthforge.v1", f"wirthforge.token.{TOKEN[:-1]}"]},
    ):
        refusal = await rejected(guarded.ws_url, **kwargs)
        assert refusal.status_code == 403
        assert "wrong" in error_of(refusal)
        assert TOKEN not in (refusal.body or b"").decode()
    # The plain protocol name without the token is no way in either.
    assert (await rejected(guarded.ws_url, subprotocols=["wirthforge.v1"])).status_code == 401


async def run_watch(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [str(BIN / "wirthforge"), "watch", "--url", url, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**env_without_token(), **env},
        )


async def test_watch_sends_the_token_and_says_what_to_do_when_refused(
    guarded: RunningServer,
) -> None:
    """``wirthforge watch`` sends WIRTHFORGE_TOKEN (or ``--token``) as a Bearer header. Refused
    for a missing or wrong token, it stops at once (retrying cannot help) with one line that
    names the status and the fix, and never the token."""
    watching = await run_watch(
        guarded.ws_url, "--summary", "--seconds", "1.5", WIRTHFORGE_TOKEN=TOKEN
    )
    assert watching.returncode == 0, watching.stderr
    assert b"state=connected" in watching.stdout
    given = await run_watch(guarded.ws_url, "--seconds", "0.5", "--token", TOKEN)
    assert given.returncode == 0 and b"energy_update" in given.stdout, given.stderr
    for args, env, status, words in (
        ((), {}, b"401", b"WIRTHFORGE_TOKEN"),
        (("--token", "not-the-right-token"), {}, b"403", b"wrong"),
        ((), {"WIRTHFORGE_TOKEN": TOKEN + "x"}, b"403", b"wrong"),
    ):
        started = trio.current_time()
        refused = await run_watch(guarded.ws_url, *args, **env)
        assert trio.current_time() - started < 15  # no retrying (watch runs until stopped)
        assert refused.returncode == 1
        lines = refused.stderr.decode().strip().splitlines()
        # "connecting to URL", then the one line that says why it stops
        assert len(lines) == 2 and lines[0].startswith("wirthforge watch: connecting"), lines
        refusal = lines[1].encode()
        assert status in refusal and words in refusal and b"--token" in refusal
        assert TOKEN.encode() not in refused.stderr + refused.stdout
        assert b"Traceback" not in refused.stderr


async def test_watch_stops_when_a_reconnect_is_refused(
    nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that took the first connection and refuses the next one (say, it came back
    with another token): watch stops with the refusal and exit status 1, not silently."""
    requests: list[int] = []

    async def first_then_refuse(request: WebSocketRequest) -> None:
        requests.append(len(requests))
        if len(requests) == 1:
            ws = await request.accept()
            await ws.aclose(1011, "restarting")
        else:
            await request.reject(401, body=b'{"error": "this server requires its access token"}')

    server = await nursery.start(serve_websocket, first_then_refuse, "127.0.0.1", 0, None)
    with trio.fail_after(20):
        status = await watch(f"ws://127.0.0.1:{server.port}/ws", summary=False, token=None)
    assert status == 1 and len(requests) == 2
    err = capsys.readouterr().err
    assert "refused the connection (HTTP 401: this server requires its access token)" in err
    assert "WIRTHFORGE_TOKEN" in err


async def test_token_in_the_query_is_refused_with_400(guarded: RunningServer) -> None:
    for query in (f"token={TOKEN}", f"access_token={TOKEN}", f"resume=1&Token={TOKEN}"):
        refusal = await rejected(f"{guarded.ws_url}?{query}", extra_headers=WS_BEARER)
        assert refusal.status_code == 400
        assert "Authorization: Bearer" in error_of(refusal)
    async with guarded.http() as http:
        for path in ("/status", "/", "/models"):
            response = await http.get(f"{path}?token={TOKEN}", headers=BEARER)
            assert response.status_code == 400, path
            assert "#token=" in response.json()["error"]


async def test_http_routes_that_start_or_cancel_work_need_the_token(
    guarded: RunningServer,
) -> None:
    async with guarded.http() as http:
        for method, path in (
            ("POST", "/prompt"),
            ("DELETE", "/prompt/s-anything"),
            ("GET", "/status"),
            ("GET", "/models"),
        ):
            kwargs: dict[str, Any] = {"json": {"prompt": "hi"}} if method == "POST" else {}
            missing = await http.request(method, path, **kwargs)
            assert missing.status_code == 401, path
            assert missing.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in missing.json()["error"]
            wrong = await http.request(
                method, path, headers={"Authorization": "Bearer nope-nope-nope-nope"}, **kwargs
            )
            assert wrong.status_code == 403, path
            assert "wrong" in wrong.json()["error"]
            other_scheme = await http.request(
                method, path, headers={"Authorization": f"Basic {TOKEN}"}, **kwargs
            )
            assert other_scheme.status_code == 401, path
        posted = await http.post("/prompt", json={"prompt": "hi"}, headers=BEARER)
        assert posted.status_code == 202
        session = posted.json()["sessions"][0]["sessionId"]
        cancelled = await http.delete(f"/prompt/{session}", headers=BEARER)
        assert cancelled.status_code == 202
        assert (await http.get("/status", headers=BEARER)).status_code == 200
        assert (await http.get("/models", headers=BEARER)).status_code == 200


async def test_page_static_files_and_health_need_no_token(guarded: RunningServer) -> None:
    async with guarded.http() as http:
        page = await http.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert (await http.get("/static/wirthforge-client.js")).status_code == 200
        # /health answers without the token, but with its status only.
        brief = await http.get("/health")
        assert brief.status_code == 200
        assert brief.json() == {"status": "ok"}
        full = await http.get("/health", headers=BEARER)
        assert set(full.json()) >= {"status", "version", "models"}


async def test_without_a_token_only_loopback_is_served(nursery: trio.Nursery) -> None:
    """A server listening on every address with no token (embedded, or a plain ``hypercorn
    --bind 0.0.0.0``) answers on loopback and refuses anything arriving on another address."""
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect to")
    running = await start_server(nursery, test_settings(host="0.0.0.0"))
    port = running.url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(base_url=f"http://{address}:{port}", timeout=5) as http:
        for method, path in (("GET", "/status"), ("GET", "/"), ("POST", "/prompt")):
            response = await http.request(method, path)
            assert response.status_code == 403, path
            assert "WIRTHFORGE_TOKEN" in response.json()["error"]
            assert address in response.json()["error"]
        assert (await http.get("/health")).json() == {"status": "ok"}
    refusal = await rejected(f"ws://{address}:{port}/ws")
    assert refusal.status_code == 403 and "WIRTHFORGE_TOKEN" in error_of(refusal)
    # Loopback is served as usual.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        assert (await http.get("/status")).status_code == 200
    async with running.connect_url(f"ws://127.0.0.1:{port}/ws") as client:
        assert (await client.receive())["type"] == "startup_complete"
    running.stop.set()


# --- limits ----------------------------------------------------------------------------------


async def test_message_rate_limit_warns_drops_then_closes_1008(nursery: trio.Nursery) -> None:
    running = await start_server(
        nursery,
        test_settings(max_message_rate=5.0, max_message_burst=5, rate_limit_close_after=0.6),
    )
    async with running.connect() as client:
        await client.receive_type("startup_complete")
        for n in range(20):
            await client.send({"type": "ping", "payload": {"n": n}})
        warning = await client.receive_type("error_event")
        assert warning["payload"]["code"] == "RATE_LIMITED"
        assert warning["payload"]["severity"] == "warning"
        assert warning["payload"]["recoverable"] is True
        assert "1008" in warning["payload"]["message"]

        async def keep_sending() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await client.send({"type": "ping", "payload": {"n": -1}})
                    await trio.sleep(0.02)

        # It goes on sending over the limit: 0.6 s into it, the connection is closed.
        with trio.fail_after(5):
            async with trio.open_nursery() as senders:
                senders.start_soon(keep_sending)
                with pytest.raises(ConnectionClosed):
                    while True:
                        await client.receive()
                senders.cancel_scope.cancel()
        assert client.ws.closed is not None and client.ws.closed.code == 1008
        every = [json.loads(r) for r in client.raw]
        errors = [m["payload"] for m in every if m["type"] == "error_event"]
        # Told once, then once more on closing: no flood of errors for a flood of messages.
        assert [(e["code"], e["severity"]) for e in errors] == [
            ("RATE_LIMITED", "warning"),
            ("RATE_LIMIT_EXCEEDED", "error"),
        ]
        pongs = [m["payload"]["n"] for m in every if m["type"] == "pong"]
        # The burst was answered, the pings over it never; later ones only at the 5/s rate.
        assert [n for n in pongs if n >= 0] == list(range(5))
        assert len(pongs) < 5 + 5 * 2
    running.stop.set()


async def test_normal_clients_are_never_rate_limited(server: RunningServer) -> None:
    async with server.connect() as client:
        await client.receive_type("startup_complete")
        for n in range(150):  # a brisk burst, well within the defaults
            await client.send({"type": "ping", "payload": {"n": n}})
        for n in range(150):
            assert (await client.receive_type("pong"))["payload"] == {"n": n}
        assert not any('"error_event"' in r for r in client.raw)


async def test_connection_limit_is_503_with_retry_after(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, test_settings(max_connections=2))
    async with running.connect() as first, running.connect() as second:
        await first.receive_type("startup_complete")
        await second.receive_type("startup_complete")
        refusal = await rejected(running.ws_url)
        assert refusal.status_code == 503
        assert header(refusal, "Retry-After") == "5"
        assert "WIRTHFORGE_MAX_CONNECTIONS" in error_of(refusal)
    # The slots are given back when connections close.
    with trio.fail_after(5):
        while True:
            try:
                async with running.connect() as client:
                    assert (await client.receive())["type"] == "startup_complete"
                    break
            except ConnectionRejected:
                await trio.sleep(0.05)
    async with running.connect() as a, running.connect() as b:
        await a.receive_type("startup_complete")
        await b.receive_type("startup_complete")
    running.stop.set()


async def test_per_address_limit_is_503_and_loopback_is_exempt(nursery: trio.Nursery) -> None:
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    running = await start_server(
        nursery, test_settings(host="0.0.0.0", token=TOKEN, max_connections_per_address=2)
    )
    port = running.url.rsplit(":", 1)[1]
    lan_url = f"ws://{address}:{port}/ws"
    async with (
        running.connect_url(lan_url, extra_headers=WS_BEARER) as a,
        running.connect_url(lan_url, extra_headers=WS_BEARER) as b,
    ):
        await a.receive_type("startup_complete")
        await b.receive_type("startup_complete")
        refusal = await rejected(lan_url, extra_headers=WS_BEARER)
        assert refusal.status_code == 503
        assert header(refusal, "Retry-After") == "5"
        assert "WIRTHFORGE_MAX_CONNECTIONS_PER_ADDRESS" in error_of(refusal)
        assert address in error_of(refusal)
        # Loopback clients are not counted per address (all local clients are 127.0.0.1).
        loopback = f"ws://127.0.0.1:{port}/ws"
        async with (
            running.connect_url(loopback, extra_headers=WS_BEARER) as c,
            running.connect_url(loopback, extra_headers=WS_BEARER) as d,
            running.connect_url(loopback, extra_headers=WS_BEARER) as e,
        ):
            for client in (c, d, e):
                await client.receive_type("startup_complete")
    running.stop.set()


async def test_prompt_size_limit_is_413(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, test_settings(max_prompt_bytes=100))
    async with running.http() as http:
        assert (await http.post("/prompt", json={"prompt": "x" * 100})).status_code == 202
        response = await http.post("/prompt", json={"prompt": "é" * 51})  # 102 bytes
        assert response.status_code == 413
        assert "WIRTHFORGE_MAX_PROMPT_BYTES" in response.json()["error"]
        assert "100" in response.json()["error"]
        # A body over the request cap gets the same kind of answer, not a generic page.
        huge = json.dumps({"prompt": "y" * (2 * 1024 * 1024)})
        response = await http.post(
            "/prompt", content=huge, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert response.headers["Content-Type"].startswith("application/json")
        assert "WIRTHFORGE_MAX_PROMPT_BYTES" in response.json()["error"]
    running.stop.set()


async def test_concurrent_sessions_limit_is_429_with_retry_after(nursery: trio.Nursery) -> None:
    running = await start_server(
        nursery, test_settings(models=("demo", "demo:sage"), max_sessions=2, demo_speed=0.5)
    )
    async with running.http() as http:
        first = await http.post("/prompt", json={"prompt": "one"})
        assert first.status_code == 202
        council = await http.post(
            "/prompt", json={"prompt": "two", "models": ["demo", "demo-sage"]}
        )
        assert council.status_code == 429
        assert council.headers["Retry-After"] == "5"
        assert "WIRTHFORGE_MAX_SESSIONS" in council.json()["error"]
        second = await http.post("/prompt", json={"prompt": "two"})
        assert second.status_code == 202
        third = await http.post("/prompt", json={"prompt": "three"})
        assert third.status_code == 429
        # Unknown models are still told as such, whatever is running.
        unknown = await http.post("/prompt", json={"prompt": "x", "models": ["gpt-9"]})
        assert unknown.status_code == 422 and "gpt-9" in unknown.json()["error"]
        # Cancelling frees the room (once the session has completed, within a frame or two).
        for posted in (first, second):
            session = posted.json()["sessions"][0]["sessionId"]
            assert (await http.delete(f"/prompt/{session}")).status_code == 202
        with trio.fail_after(5):
            while True:
                if (await http.post("/prompt", json={"prompt": "four"})).status_code == 202:
                    break
                await trio.sleep(0.05)
    running.stop.set()


async def test_a_council_larger_than_the_session_limit_is_422(nursery: trio.Nursery) -> None:
    running = await start_server(
        nursery, test_settings(models=("demo", "demo:sage"), max_sessions=1)
    )
    async with running.http() as http:
        response = await http.post("/prompt", json={"prompt": "x", "models": ["demo", "demo-sage"]})
        assert response.status_code == 422
        assert "WIRTHFORGE_MAX_SESSIONS" in response.json()["error"]
    running.stop.set()
