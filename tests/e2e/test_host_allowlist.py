"""Issue 21 end to end: DNS rebinding (a foreign name in ``Host``) and cross-site requests.

Each attack is sent as a browser would send it, to a real Hypercorn server, with the headers
the browser cannot be stopped from sending (``Host``, ``Origin``, a simple ``Content-Type``);
beside each, what must keep working. docs/security.md describes the rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from playwright.sync_api import sync_playwright
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, ServerProcess
from tests.support.commands import BIN, start, wait_healthy
from tests.support.network import free_port, lan_address
from tests.support.server import RunningServer, start_server, test_settings
from tests.support.tokens import BEARER, TOKEN
from tests.support.waits import wait_until
from wirthforge_trio.config import Settings, SettingsError

EVIL = "evil.example"


async def ws_handshake(
    port: int,
    host: str,
    *,
    origin: str | None = None,
    path: str = "/ws",
    headers: list[tuple[bytes, bytes]] | None = None,
    address: str = "127.0.0.1",
) -> tuple[int, Any]:
    """A WebSocket handshake (wsproto over a real socket) sending exactly this ``Host``.

    Returns (101, the first message, parsed) when accepted, else (status, the JSON body).
    """
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(b"Origin", origin.encode())] if origin else []
    extra += headers or []
    stream = await trio.open_tcp_stream(address, port)
    status, body, text = 0, b"", ""
    async with stream:
        await stream.send_all(ws.send(Request(host=host, target=path, extra_headers=extra)))
        with trio.fail_after(15):
            while True:
                data = await stream.receive_some()
                assert data, f"the server hung up on the handshake (status {status})"
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        status = 101
                    elif isinstance(event, RejectConnection):
                        status = event.status_code
                        assert event.has_body, "a refusal must say why"
                    elif isinstance(event, RejectData):
                        body += event.data
                        if event.body_finished:
                            return status, json.loads(body)
                    elif isinstance(event, TextMessage):
                        text += event.data
                        if event.message_finished:
                            await stream.send_all(ws.send(CloseConnection(code=1000)))
                            return 101, json.loads(text)


def refused_for_host(response: httpx.Response) -> None:
    """A 421 with the project's JSON error naming the setting, and no CORS header."""
    assert response.status_code == 421, response.text
    assert "WIRTHFORGE_ALLOWED_HOSTS" in response.json()["error"]
    assert "access-control-allow-origin" not in response.headers


# --- the attacks ---------------------------------------------------------------------------


async def test_a_rebound_name_cannot_open_the_websocket(server: RunningServer) -> None:
    """The page on evil.example:PORT, its name rebound to 127.0.0.1, sends a Host and an
    Origin that match each other: the handshake is refused before the route."""
    host = f"{EVIL}:{server.port}"
    for path in ("/ws", "/ws?resume=1"):
        status, body = await ws_handshake(server.port, host, origin=f"http://{host}", path=path)
        assert status == 421, body
        assert "WIRTHFORGE_ALLOWED_HOSTS" in body["error"]
        assert EVIL in body["error"]
    assert len(server.app.wirthforge.hub) == 0


async def test_a_rebound_name_cannot_read_any_http_route(server: RunningServer) -> None:
    host = f"{EVIL}:{server.port}"
    headers = {"Host": host, "Origin": f"http://{host}"}
    async with server.http() as http:
        for path in ("/status", "/models", "/health", "/", "/static/app.js", "/no-such-page"):
            refused_for_host(await http.get(path, headers=headers))
        assert (await http.get("/status")).status_code == 200  # the same, under its own name


async def test_a_rebound_name_cannot_post_a_prompt(server: RunningServer) -> None:
    host = f"{EVIL}:{server.port}"
    headers = {"Host": host, "Origin": f"http://{host}"}
    async with server.http() as http:
        refused_for_host(await http.post("/prompt", json={"prompt": "hi"}, headers=headers))
        refused_for_host(
            await http.post(
                "/prompt",
                content=b'{"prompt": "hi"}',
                headers={**headers, "Content-Type": "text/plain"},
            )
        )
    assert server.app.wirthforge.engine.decipher.sessions == {}


async def test_a_cross_site_simple_post_starts_nothing(server: RunningServer) -> None:
    """A form or fetch without preflight from another site: text/plain, a foreign Origin,
    the right Host (the page sends to http://127.0.0.1:PORT itself)."""
    body = b'{"prompt": "spend their compute"}'
    async with server.http() as http:
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            cross_site = await http.post(
                "/prompt",
                content=body,
                headers={"Origin": f"http://{EVIL}", "Content-Type": content_type},
            )
            assert cross_site.status_code == 403, cross_site.text
            assert "WIRTHFORGE_ALLOWED_ORIGINS" in cross_site.json()["error"]
        # A foreign Origin is refused even with the JSON type (a preflighted fetch).
        json_cross_site = await http.post(
            "/prompt", json={"prompt": "hi"}, headers={"Origin": f"https://{EVIL}"}
        )
        assert json_cross_site.status_code == 403
        # Without an Origin (curl, a script), the type alone decides.
        for content_type in ("text/plain", "multipart/form-data; boundary=x", None):
            plain = await http.post(
                "/prompt",
                content=body,
                headers={} if content_type is None else {"Content-Type": content_type},
            )
            assert plain.status_code == 415, content_type
            assert "Content-Type: application/json" in plain.json()["error"]
            assert plain.headers["Accept-Post"] == "application/json"
        assert server.app.wirthforge.engine.decipher.sessions == {}
        ok = await http.post(
            "/prompt",
            content=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert ok.status_code == 202
        local_page = await http.post(
            "/prompt", json={"prompt": "hi"}, headers={"Origin": f"http://localhost:{server.port}"}
        )
        assert local_page.status_code == 202
    assert len(server.app.wirthforge.engine.decipher.sessions) == 2


async def test_a_foreign_origin_cannot_cancel_a_generation(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, test_settings(demo_speed=0.05))
    async with running.http() as http:
        posted = await http.post("/prompt", json={"prompt": "a long answer please"})
        assert posted.status_code == 202
        session_id = posted.json()["sessions"][0]["sessionId"]
        refused = await http.delete(f"/prompt/{session_id}", headers={"Origin": f"http://{EVIL}"})
        assert refused.status_code == 403
        assert "WIRTHFORGE_ALLOWED_ORIGINS" in refused.json()["error"]
        session = running.app.wirthforge.engine.decipher.sessions[session_id]
        assert session.status == "streaming"
        cancelled = await http.delete(f"/prompt/{session_id}")  # no Origin: curl, a script
        assert cancelled.status_code == 202
    running.stop.set()


@pytest.mark.parametrize(
    "host", [f"{EVIL}", "evil example", "127.0.0.1:abc", "[::1", "::1", "localhost:99999"]
)
async def test_malformed_or_foreign_hosts_are_refused(server: RunningServer, host: str) -> None:
    async with server.http() as http:
        refused_for_host(await http.get("/status", headers={"Host": host}))


# --- what keeps working ----------------------------------------------------------------------


async def test_loopback_names_with_and_without_the_port(server: RunningServer) -> None:
    port = server.port
    names = ["localhost", "127.0.0.1", "[::1]", "LocalHost"]
    async with server.http() as http:
        for name in names:
            for host in (name, f"{name}:{port}"):
                response = await http.get("/status", headers={"Host": host})
                assert response.status_code == 200, host
                status, first = await ws_handshake(port, host, origin=f"http://{host}")
                assert status == 101, (host, first)
                assert first["type"] == "startup_complete"


async def test_no_cors_headers_unless_origins_are_configured(nursery: trio.Nursery) -> None:
    plain = await start_server(nursery, test_settings())
    configured = await start_server(
        nursery, test_settings(allowed_origins=("https://app.example",))
    )
    preflight = {"Access-Control-Request-Method": "POST"}
    async with plain.http() as http:
        local = {"Origin": f"http://localhost:{plain.port}"}
        response = await http.get("/status", headers=local)
        assert response.status_code == 200
        assert not [h for h in response.headers if h.lower().startswith("access-control")]
        options = await http.options("/prompt", headers={**local, **preflight})
        assert "access-control-allow-origin" not in options.headers
    async with configured.http() as http:
        app_origin = {"Origin": "https://app.example"}
        options = await http.options("/prompt", headers={**app_origin, **preflight})
        assert options.status_code == 204
        assert options.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in options.headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in options.headers["Access-Control-Allow-Headers"]
        posted = await http.post("/prompt", json={"prompt": "hi"}, headers=app_origin)
        assert posted.status_code == 202
        assert posted.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert posted.headers["Vary"] == "Origin"
        other = await http.get("/status", headers={"Origin": "https://other.example"})
        assert "access-control-allow-origin" not in other.headers
        other_preflight = await http.options(
            "/prompt", headers={"Origin": "https://other.example", **preflight}
        )
        assert "access-control-allow-origin" not in other_preflight.headers
    plain.stop.set()
    configured.stop.set()


async def test_configured_hosts_and_their_pages(nursery: trio.Nursery) -> None:
    running = await start_server(
        nursery, test_settings(allowed_hosts=("wirthforge.lan", "studio.lan:9000"))
    )
    port = running.port
    async with running.http() as http:
        for host in (
            "wirthforge.lan",
            f"wirthforge.lan:{port}",
            "WIRTHFORGE.LAN",
            "studio.lan:9000",
        ):
            assert (await http.get("/status", headers={"Host": host})).status_code == 200, host
        for host in (f"studio.lan:{port}", "studio.lan", "other.lan", f"{EVIL}:{port}"):
            refused_for_host(await http.get("/status", headers={"Host": host}))
        # The server's own name is its own origin: the page served under it works.
        own = f"wirthforge.lan:{port}"
        posted = await http.post(
            "/prompt", json={"prompt": "hi"}, headers={"Host": own, "Origin": f"http://{own}"}
        )
        assert posted.status_code == 202
    status, first = await ws_handshake(port, own, origin=f"http://{own}")
    assert status == 101 and first["type"] == "startup_complete"
    # ...but an Origin equal to some other allowed Host is not trusted for being equal.
    status, body = await ws_handshake(port, f"127.0.0.1:{port}", origin=f"http://{EVIL}:{port}")
    assert status == 403 and "WIRTHFORGE_ALLOWED_ORIGINS" in body["error"]
    running.stop.set()


async def test_a_server_bound_to_ipv6_loopback(nursery: trio.Nursery) -> None:
    try:
        running = await start_server(nursery, test_settings(host="::1"))
    except SettingsError:
        pytest.skip("this machine cannot listen on ::1")
    assert running.url.startswith("http://[::1]:")
    async with running.http() as http:
        assert (await http.get("/status")).status_code == 200
        refused_for_host(await http.get("/status", headers={"Host": f"{EVIL}:{running.port}"}))
    host = f"[::1]:{running.port}"
    status, first = await ws_handshake(running.port, host, origin=f"http://{host}", address="::1")
    assert status == 101 and first["type"] == "startup_complete"
    running.stop.set()


async def test_a_non_loopback_bind_with_a_token(nursery: trio.Nursery) -> None:
    """Bound to every address with a token: the machine's address the request arrived on is
    one of its names; a rebound name is still refused, before the token is even looked at."""
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect to")
    running = await start_server(nursery, test_settings(host="0.0.0.0", token=TOKEN))
    port = running.port
    own = f"{address}:{port}"
    async with httpx.AsyncClient(base_url=f"http://{own}", timeout=5) as http:
        assert (await http.get("/status", headers=BEARER)).status_code == 200
        posted = await http.post(
            "/prompt", json={"prompt": "hi"}, headers={**BEARER, "Origin": f"http://{own}"}
        )
        assert posted.status_code == 202
        refused_for_host(await http.get("/status", headers={**BEARER, "Host": f"{EVIL}:{port}"}))
        refused_for_host(await http.get("/status", headers={"Host": f"{EVIL}:{port}"}))
        # Another address of some other machine, literal, is not this server's either.
        refused_for_host(await http.get("/status", headers={**BEARER, "Host": "192.0.2.7"}))
    authorization = [(b"Authorization", f"Bearer {TOKEN}".encode())]
    status, first = await ws_handshake(
        port, own, origin=f"http://{own}", headers=authorization, address=address
    )
    assert status == 101 and first["type"] == "startup_complete"
    status, _ = await ws_handshake(
        port,
        f"{EVIL}:{port}",
        origin=f"http://{EVIL}:{port}",
        headers=authorization,
        address=address,
    )
    assert status == 421
    running.stop.set()


async def test_a_request_without_host_is_not_a_browser_and_is_served(
    server: RunningServer,
) -> None:
    """HTTP/1.0 without Host: no browser sends that, so no rebinding page can."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"GET /health HTTP/1.0\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in answer:
                chunk = await stream.receive_some()
                assert chunk, answer
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200"), answer[:80]


def test_allowed_hosts_from_the_environment_and_bad_entries() -> None:
    settings = Settings.from_env({"WIRTHFORGE_ALLOWED_HOSTS": "box.lan, [fd00::5]:8145 ,"})
    assert settings.allowed_hosts == ("box.lan", "[fd00::5]:8145")
    for bad in ("evil example", "box.lan:http", "[fd00::5", "http://box.lan"):
        with pytest.raises(SettingsError, match="WIRTHFORGE_ALLOWED_HOSTS"):
            Settings.from_env({"WIRTHFORGE_ALLOWED_HOSTS": bad})


def test_serve_names_a_bad_allowed_host() -> None:
    bad = subprocess.run(
        [str(BIN / "wirthforge"), "serve", "--allowed-host", "not a name"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "--allowed-host" in bad.stderr and "Traceback" not in bad.stderr


async def test_serve_takes_allowed_host_flags() -> None:
    port = free_port()
    process = start(
        [
            *(str(BIN / "wirthforge"), "serve", "--port", str(port)),
            *("--allowed-host", "box.lan", "--allowed-host", f"studio.lan:{port}"),
        ],
        WIRTHFORGE_ALLOWED_HOSTS="env.lan",
    )
    try:
        await wait_healthy(port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for host in ("box.lan", f"studio.lan:{port}", "localhost"):
                assert (await http.get("/status", headers={"Host": host})).status_code == 200
            # The flags replace the variable, as --model does.
            refused_for_host(await http.get("/status", headers={"Host": "env.lan"}))
    finally:
        process.terminate()
        process.wait(30)


# --- in Chromium ---------------------------------------------------------------------------


def test_rebinding_and_cross_site_posts_in_chromium(tmp_path: Path) -> None:
    """What a real browser lets a page do. Chromium resolves evil.example to 127.0.0.1 (the
    state after the rebinding): a script running in a document of http://evil.example:PORT
    uses the server under that name. A page on another origin (127.0.0.2) sends the
    cross-site "simple" POST."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium`")
    server = ServerProcess(free_port(), tmp_path / "server.log")
    server.start()
    (tmp_path / "index.html").write_text("<!doctype html><title>another site</title>")
    other_port = free_port("127.0.0.2")
    other_site = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(other_port), "--bind", "127.0.0.2"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rebound = f"http://{EVIL}:{server.port}/"
    read_and_listen = f"""async () => {{
        const read = await fetch('/status').then(r => r.status, e => 'failed');
        const socket = await new Promise(done => {{
            const ws = new WebSocket('ws://{EVIL}:{server.port}/ws');
            ws.onmessage = () => {{ done('message'); ws.close(); }};
            ws.onclose = e => done('closed ' + e.code);
        }});
        return {{read, socket}};
    }}"""
    simple_post = f"""() => fetch('http://127.0.0.1:{server.port}/prompt', {{
        method: 'POST', mode: 'no-cors', body: JSON.stringify({{prompt: 'spend their compute'}})
    }}).then(() => 'sent', e => 'failed')"""
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {EVIL} 127.0.0.1"],
            )
            try:
                page = browser.new_page()
                loaded = page.goto(rebound)
                assert loaded is not None and loaded.status == 421
                # The attacker's script, loaded before the rebinding, runs in this origin.
                assert page.evaluate(read_and_listen) == {"read": 421, "socket": "closed 1006"}

                other = browser.new_page()
                wait_until(lambda: other_site_up(other_port), 10, "the other site's server")
                other.goto(f"http://127.0.0.2:{other_port}/")
                with other.expect_response(lambda r: r.url.endswith("/prompt")) as posted:
                    assert other.evaluate(simple_post) == "sent"
                assert posted.value.status == 403
            finally:
                browser.close()
        models = httpx.get(f"{server.url}/models", timeout=5).json()["models"]
        assert all(m["totalEnergy"] == 0 for m in models), "a generation ran"
    finally:
        other_site.terminate()
        other_site.wait(5)
        server.stop()


def other_site_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.2:{port}/", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
