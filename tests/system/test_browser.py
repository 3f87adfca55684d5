"""The page and wirthforge-client.js in a real Chromium, against a real server process.

Chromium comes from Debian's packages (``.ci/run`` installs it), driven by Playwright's Python
package. The server runs as users run it, ``wirthforge serve``, in a subprocess, so that it
can be stopped, frozen (SIGSTOP) and restarted under the page.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from websockets.sync.client import connect as ws_connect

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, ServerProcess
from tests.support.commands import ROOT
from tests.support.network import free_port
from tests.support.waits import wait_until
from wirthforge_trio import __version__

SCREENSHOTS = ROOT / "build" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install -y chromium`, "
            "as .ci/run does) or point WIRTHFORGE_CHROMIUM at a Chromium binary"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(free_port(), tmp_path_factory.mktemp("server") / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server for one test, which the test may stop, freeze and restart."""
    server = ServerProcess(free_port(), tmp_path / "server.log")
    server.start()
    yield server
    server.stop()


class PageUnderTest:
    """A page of the lifeline, with every request it makes and every script error recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[str] = []
        self.sockets: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def state(self) -> str:
        return str(self.page.locator("#state").get_attribute("data-state"))

    def wait_state(self, state: str, seconds: float = 10) -> None:
        self.page.wait_for_function(
            f"document.getElementById('state').dataset.state === {json.dumps(state)}",
            timeout=seconds * 1000,
        )

    def frames(self) -> int:
        return int(self.page.evaluate("window.wirthforge.stats.frames"))

    def send_prompt(self, text: str, models: list[str]) -> list[str]:
        """Type the prompt, pick the models, press Send; the new run's session ids."""
        page = self.page
        page.fill("#prompt", text)
        for box in page.locator("#model-picker input").all():
            value = box.get_attribute("value")
            box.set_checked(value in models)
        before = page.locator(".run").count()
        page.click("#send")
        page.wait_for_function(f"document.querySelectorAll('.run').length > {before}")
        ids = (
            page.locator(".run")
            .first.locator(".session")
            .evaluate_all("els => els.map(e => e.dataset.session)")
        )
        return [str(i) for i in ids]

    def wait_complete(self, session_ids: list[str], seconds: float = 30) -> None:
        selector = " && ".join(
            f"document.querySelector('.session[data-session=\"{s}\"]')?.dataset.complete === 'true'"
            for s in session_ids
        )
        self.page.wait_for_function(selector, timeout=seconds * 1000)

    def text(self, session_id: str) -> str:
        return str(self.page.locator(f'.session[data-session="{session_id}"] .text').text_content())


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[str], PageUnderTest]]:
    contexts = []

    def open_(url: str) -> PageUnderTest:
        context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        contexts.append(context)
        page = PageUnderTest(context.new_page())
        page.page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()


def server_text(server: ServerProcess, session_id: str) -> str:
    """The session's whole text as the server has it: replayed to a fresh resuming client
    that says it holds none of it (after learning the server's instance id)."""
    url = f"ws://127.0.0.1:{server.port}/ws?resume=1"

    def snapshot(ws: Any) -> dict[str, Any]:
        while True:
            message = json.loads(ws.recv(timeout=5))
            if message["type"] == "state_snapshot":
                return message  # type: ignore[no-any-return]

    with ws_connect(url, open_timeout=5) as ws:
        ws.send(json.dumps({"type": "resume", "payload": {}}))
        instance = snapshot(ws)["payload"]["serverInstance"]
    tokens: list[str] = []
    with ws_connect(url, open_timeout=5) as ws:
        resume = {"serverInstance": instance, "sessions": [{"sessionId": session_id, "tokens": 0}]}
        ws.send(json.dumps({"type": "resume", "payload": resume}))
        assert snapshot(ws)["payload"]["resumed"] is True
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=5))
            if message["type"] != "token_stream" or message["payload"]["sessionId"] != session_id:
                continue
            tokens.extend(message["payload"]["tokens"])
            if message["payload"]["isComplete"]:
                return "".join(tokens)
    raise AssertionError(f"session {session_id} did not complete in the server's replay")


def hosts_of(urls: list[str]) -> set[str]:
    return {urlsplit(u).netloc for u in urls if not u.startswith("data:")}


# --- the page ------------------------------------------------------------------------------


def test_page_connects_and_shows_the_handshake(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(shared_server.url)
    page.wait_state("connected")
    p = page.page
    assert p.locator("#state").text_content() == "Connected"
    assert p.locator("#version").text_content() == __version__
    assert p.locator("#tier").text_content() in ("Low-Tier", "Mid-Tier", "High-Tier")
    assert "demo" in str(p.locator("#handshake-models").text_content())
    p.wait_for_function("document.getElementById('rtt').textContent.endsWith(' ms')")
    rtt = float(str(p.locator("#rtt").text_content()).removesuffix(" ms"))
    assert rtt >= 0
    # The model picker lists the server's models, the default one checked.
    boxes = p.locator("#model-picker input")
    assert boxes.evaluate_all("els => els.map(e => [e.value, e.checked])") == [
        ["demo", True],
        ["demo-sage", False],
    ]
    assert page.errors == []


def test_frames_counted_in_the_page_reach_55_per_second(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(shared_server.url)
    page.wait_state("connected")
    wait_until(lambda: page.frames() > 0, 10, "the page to count its first frame")
    start, t0 = page.frames(), time.monotonic()
    time.sleep(3.0)  # the window the rate is measured over
    rate = (page.frames() - start) / (time.monotonic() - t0)
    assert rate >= 55, f"the page counted {rate:.1f} frames/s"
    shown = int(str(page.page.locator("#fps").text_content()))
    assert shown >= 50, f"the page shows {shown} frames/s"


def test_a_typed_prompt_streams_its_full_text_and_nothing_goes_elsewhere(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(shared_server.url)
    page.wait_state("connected")
    prompt = "Explain how a lighthouse lens works"
    (session,) = page.send_prompt(prompt, ["demo"])
    page.wait_complete([session])
    text = page.text(session)
    assert len(text) > 40
    assert text == server_text(shared_server, session)
    assert page.page.locator(f'.session[data-session="{session}"] .status').text_content() == (
        "complete"
    )
    # Every request, the WebSocket included, went to this server only.
    assert hosts_of(page.requests) == {f"127.0.0.1:{shared_server.port}"}
    assert hosts_of(page.sockets) == {f"127.0.0.1:{shared_server.port}"}
    assert page.errors == []


def test_the_prompt_never_travels_over_the_websocket(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(shared_server.url)
    sent: list[str] = []
    received = []
    page.page.on(
        "websocket",
        lambda ws: (
            ws.on("framesent", lambda payload: sent.append(str(payload))),
            ws.on("framereceived", lambda payload: received.append(payload)),
        ),
    )
    page.page.reload()
    page.wait_state("connected")
    prompt = "A secret question about tides"
    (session,) = page.send_prompt(prompt, ["demo"])
    page.wait_complete([session])
    assert all(prompt not in s and "tides" not in s for s in sent)
    kinds = {json.loads(s)["type"] for s in sent}
    assert kinds <= {"resume", "heartbeat_response", "ping", "subscribe", "unsubscribe"}
    assert {"resume", "heartbeat_response", "ping"} <= kinds
    assert any("tides" not in str(r) and "token_stream" in str(r) for r in received)


def test_council_run_side_by_side_with_a_screenshot(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(shared_server.url)
    page.wait_state("connected")
    sessions = page.send_prompt("Compare sunlight and lamplight", ["demo", "demo-sage"])
    assert len(sessions) == 2
    p = page.page
    run = p.locator(".run").first
    assert str(run.locator("h3").text_content()).startswith("Council")
    assert run.locator(".session h4").evaluate_all(
        "els => els.map(e => e.firstChild.textContent.trim())"
    ) == ["demo", "demo-sage"]
    # In the middle of the run: the council row and the interference line appear.
    p.wait_for_selector('#meters li[data-model="council"]', timeout=10_000)
    p.wait_for_function("!document.getElementById('council-line').hidden", timeout=15_000)
    p.wait_for_function(
        "[...document.querySelectorAll('.run:first-child .session .text')]"
        ".every(e => e.textContent.length > 120)",
        timeout=20_000,
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "council-run.png"
    p.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.wait_complete(sessions)
    for session in sessions:
        assert page.text(session) == server_text(shared_server, session)
    assert page.errors == []


def test_the_idle_page_says_what_to_do_and_what_the_demo_model_is(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    """A new user's first look (issue 23, C6): a hint to send a prompt, a note that the demo
    models stream canned text unrelated to the prompt, and a run headed by its model."""
    page = open_page(shared_server.url)
    page.wait_state("connected")
    p = page.page
    hint = p.locator("#runs-empty")
    assert hint.is_visible()
    assert "type a prompt above and press Send" in str(hint.text_content())
    note = p.locator("#demo-note")
    p.wait_for_function("!document.getElementById('demo-note').hidden")
    text = " ".join(str(note.text_content()).split())
    assert "demo models (demo, demo-sage)" in text, text
    assert "canned sentences unrelated to the prompt" in text, text
    (session,) = page.send_prompt("What is a lighthouse?", ["demo"])
    assert p.locator(".run h3").first.text_content() == "Model: demo"
    assert not hint.is_visible()
    page.wait_complete([session])
    assert page.errors == []


def test_a_session_cancelled_elsewhere_shows_cancelled(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    """The last token_stream of a cancelled session says only isComplete: the page must
    not call it complete (issue 23, B7)."""
    page = open_page(shared_server.url)
    page.wait_state("connected")
    with httpx.Client(base_url=shared_server.url, timeout=5) as http:
        answer = http.post("/prompt", json={"prompt": "a long tale", "models": ["demo"]})
        assert answer.status_code == 202, answer.text
        (session,) = [s["sessionId"] for s in answer.json()["sessions"]]
        cancel = http.delete(f"/prompt/{session}")
        assert cancel.status_code == 202, cancel.text
        assert http.get(f"/prompt/{session}").json()["status"] in ("streaming", "cancelled")
    column = f'.session[data-session="{session}"]'
    page.page.wait_for_function(
        f"document.querySelector('{column}')?.dataset.status === 'cancelled'", timeout=10_000
    )
    assert page.page.locator(f"{column} .status").text_content() == "cancelled"
    assert page.errors == []


def test_a_failed_session_shows_failed(
    tmp_path: Path, open_page: Callable[[str], PageUnderTest]
) -> None:
    """A demo model far slower than the first-token timeout: the session fails, and the
    page says so beside the error (issue 23, B7)."""
    server = ServerProcess(
        free_port(),
        tmp_path / "server.log",
        {"WIRTHFORGE_DEMO_SPEED": "0.01", "WIRTHFORGE_FIRST_TOKEN_TIMEOUT": "0.5"},
    )
    server.start()
    try:
        page = open_page(server.url)
        page.wait_state("connected")
        (session,) = page.send_prompt("anything", ["demo"])
        column = f'.session[data-session="{session}"]'
        page.page.wait_for_function(
            f"document.querySelector('{column}')?.dataset.status === 'failed'", timeout=10_000
        )
        page.wait_complete([session])
        assert page.page.locator(f"{column} .status").text_content() == "failed"
        assert "MODEL_TIMEOUT" in str(page.page.locator("#errors").text_content())
    finally:
        server.stop()


def test_keyboard_only_use_and_labels(shared_server: ServerProcess, browser: Browser) -> None:
    context = browser.new_context(reduced_motion="reduce", bypass_csp=True)
    try:
        p = context.new_page()
        p.goto(shared_server.url)
        p.wait_for_function("document.getElementById('state').dataset.state === 'connected'")
        # Every control has an accessible name.
        unnamed = p.evaluate(
            """() => [...document.querySelectorAll('input, textarea, button, canvas, meter')]
                .filter(el => !(el.labels?.length || el.getAttribute('aria-label')
                                || el.textContent.trim()))
                .map(el => el.outerHTML)"""
        )
        assert unnamed == []
        # Tab to the prompt box, type, send with Ctrl+Enter: no mouse.
        for _ in range(10):
            p.keyboard.press("Tab")
            if p.evaluate("document.activeElement.id") == "prompt":
                break
        assert p.evaluate("document.activeElement.id") == "prompt"
        p.keyboard.type("Why is the sky blue")
        p.keyboard.press("Control+Enter")
        p.wait_for_selector(".run .session", timeout=5000)
        # With reduced motion the page still counts frames and draws (less often).
        p.wait_for_function("window.wirthforge.stats.frames > 30")
        assert p.evaluate("matchMedia('(prefers-reduced-motion: reduce)').matches") is True
    finally:
        context.close()


def test_cancel_button_ends_the_run(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(shared_server.url)
    page.wait_state("connected")
    (session,) = page.send_prompt("Tell a long story about rivers", ["demo"])
    p = page.page
    p.wait_for_function("!document.getElementById('cancel').disabled")
    p.click("#cancel")
    page.wait_complete([session], seconds=10)
    assert p.locator("#cancel").is_disabled()
    assert page.text(session) == server_text(shared_server, session)


# --- reconnects ----------------------------------------------------------------------------


def test_server_restart_shows_reconnecting_then_the_complete_text(
    own_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(own_server.url)
    page.wait_state("connected")
    (session,) = page.send_prompt("What does a prism do", ["demo"])
    page.wait_complete([session])
    before = page.text(session)
    own_server.stop()
    # The page says so (checked in one step: the next attempt may follow at once).
    page.page.wait_for_function(
        "(el => el.dataset.state === 'reconnecting' && el.textContent === 'Reconnecting')"
        "(document.getElementById('state'))"
    )
    own_server.start()
    page.wait_state("connected", seconds=40)
    assert page.text(session) == before
    assert page.page.locator(f'.session[data-session="{session}"] .status').text_content() == (
        "complete"
    )
    # The page keeps working on the new server.
    (second,) = page.send_prompt("And a rainbow", ["demo"])
    page.wait_complete([second])
    assert page.text(second) == server_text(own_server, second)


def test_a_frozen_server_mid_stream_then_resume_gives_the_complete_text(
    own_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(own_server.url)
    page.wait_state("connected")
    sessions = page.send_prompt("Describe the northern lights in detail", ["demo", "demo-sage"])
    page.page.wait_for_function(
        f"document.querySelector('.session[data-session=\"{sessions[0]}\"] .text')"
        ".textContent.length > 20"
    )
    own_server.freeze()  # silent, not closed: only the watchdog can tell
    try:
        page.wait_state("reconnecting", seconds=10)
    finally:
        own_server.thaw()
    page.wait_state("connected", seconds=40)
    page.wait_complete(sessions, seconds=60)
    for session in sessions:
        assert page.text(session) == server_text(own_server, session)
    assert page.page.evaluate("window.wirthforge.client.lostSessions") == []


def test_a_hidden_tab_gets_no_false_timeout_and_checks_when_shown(
    own_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(own_server.url)
    page.wait_state("connected")
    p = page.page
    set_hidden = """hidden => {
        Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});
        Object.defineProperty(document, 'visibilityState',
            {value: hidden ? 'hidden' : 'visible', configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }"""
    p.evaluate(set_hidden, True)
    own_server.freeze()
    time.sleep(3.0)  # beyond the 2 s watchdog
    assert page.state() == "connected", "the watchdog fired while the tab was hidden"
    own_server.thaw()
    before = page.frames()
    wait_until(lambda: page.frames() > before, 10, "frames to reach the hidden page again")
    p.evaluate(set_hidden, False)
    assert page.state() == "connected"
    # Shown and silent for longer than the watchdog: a reconnect at once, then connected.
    p.evaluate(set_hidden, True)
    own_server.freeze()
    time.sleep(2.5)  # the scenario: silent for longer than the 2 s watchdog, while hidden
    assert page.state() == "connected"
    p.evaluate(set_hidden, False)
    try:
        page.wait_state("reconnecting", seconds=2)
    finally:
        own_server.thaw()
    page.wait_state("connected", seconds=30)


# --- origins -------------------------------------------------------------------------------


def test_a_page_from_a_foreign_origin_cannot_open_the_socket(
    shared_server: ServerProcess, browser: Browser, tmp_path: Path
) -> None:
    """Cross-site WebSocket hijacking: a page on 127.0.0.2 (another origin) tries /ws."""
    target = f"ws://127.0.0.1:{shared_server.port}/ws"
    (tmp_path / "index.html").write_text(
        "<!doctype html><script>"
        "window.result = new Promise(done => {"
        f"  const ws = new WebSocket({json.dumps(target)});"
        "  ws.onopen = () => done('open');"
        "  ws.onmessage = e => done('message');"
        "  ws.onclose = e => done('closed ' + e.code);"
        "});"
        "</script>"
    )
    port = free_port("127.0.0.2")
    foreign = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.2"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.2:{port}/", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(serving, 10, "the foreign page's server")
        before = httpx.get(f"{shared_server.url}/status").json()["connections"]
        context = browser.new_context()
        try:
            p = context.new_page()
            p.goto(f"http://127.0.0.2:{port}/")
            assert p.evaluate("window.result") == "closed 1006"
        finally:
            context.close()
        assert httpx.get(f"{shared_server.url}/status").json()["connections"] == before
        # The same page on an allowed origin opens it: the refusal is the origin's doing.
        context = browser.new_context()
        try:
            p = context.new_page()
            p.goto(shared_server.url)
            result = p.evaluate(
                f"""() => new Promise(done => {{
                    const ws = new WebSocket({json.dumps(target)});
                    ws.onmessage = () => {{ done('message'); ws.close(); }};
                    ws.onclose = e => done('closed ' + e.code);
                }})"""
            )
            assert result == "message"
        finally:
            context.close()
    finally:
        foreign.terminate()
        foreign.wait(5)


def test_the_page_forbids_other_hosts_by_policy(shared_server: ServerProcess) -> None:
    response = httpx.get(shared_server.url + "/")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    script = httpx.get(shared_server.url + "/static/wirthforge-client.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    # No file of the page names another host.
    static = ROOT / "wirthforge_trio" / "static"
    for path in static.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path.name


# --- the client module on its own ----------------------------------------------------------

FAKE_SOCKET = """
class FakeSocket {
  static instances = [];
  constructor(url) { this.url = url; this.readyState = 0; this.sent = [];
    FakeSocket.instances.push(this); setTimeout(() => { this.readyState = 1; this.onopen?.(); }); }
  send(text) { this.sent.push(JSON.parse(text)); }
  close(code) { this.readyState = 3; }
  serverSends(message) { this.onmessage?.({ data: JSON.stringify(message) }); }
  serverCloses(code, reason = "") { this.readyState = 3; this.onclose?.({ code, reason }); }
}
"""


def run_module_script(page: Page, body: str) -> Any:
    """Run ``body`` (an async function body) with the client module imported as ``m``."""
    return page.evaluate(
        f"""async () => {{
            const m = await import('/static/wirthforge-client.js');
            {FAKE_SOCKET}
            const sleep = ms => new Promise(r => setTimeout(r, ms));
            {body}
        }}"""
    )


def test_client_module_backoff_and_no_reconnect_after_1000(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(shared_server.url)
    result = run_module_script(
        page.page,
        """
        const b = new m.Backoff({ initialMs: 1000, maxMs: 30000, random: () => 1 });
        const ceilings = [0, 1, 2, 5, 10].map(n => b.ceiling(n));
        const states = [];
        const c = new m.WirthforgeClient({ url: 'ws://x.invalid/ws', WebSocketImpl: FakeSocket,
            pingIntervalMs: 0, backoff: new m.Backoff({ initialMs: 10 }) });
        c.on('state', ({ state }) => states.push(state));
        c.start();
        await sleep(20);
        const first = FakeSocket.instances[0];
        first.serverCloses(1011, 'oops');          // abnormal: reconnect
        await sleep(60);
        const second = FakeSocket.instances[1];
        await sleep(10);
        second.serverCloses(1000, 'bye');          // normal: stay closed
        await sleep(60);
        c.close();
        return { ceilings, states, sockets: FakeSocket.instances.length,
                 firstUrl: first.url, firstSent: first.sent };
        """,
    )
    assert result["ceilings"] == [1000, 2000, 4000, 30000, 30000]
    assert result["states"] == [
        "connecting",
        "connected",
        "reconnecting",
        "connecting",
        "connected",
        "closed",
    ]
    assert result["sockets"] == 2
    assert result["firstUrl"] == "ws://x.invalid/ws?resume=1"
    assert result["firstSent"][0] == {"type": "resume", "payload": {"sessions": []}}


def test_client_module_answers_heartbeats_and_resumes_exactly(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(shared_server.url)
    result = run_module_script(
        page.page,
        """
        const texts = [];
        const c = new m.WirthforgeClient({ url: 'ws://x.invalid/ws', WebSocketImpl: FakeSocket,
            pingIntervalMs: 0, backoff: new m.Backoff({ initialMs: 5 }) });
        c.on('token_stream', e => texts.push(e.payload.tokens.join('')));
        c.start();
        await sleep(20);
        const a = FakeSocket.instances[0];
        const ts = (tokens, done, t = 1) => ({ type: 'token_stream', channel: 'experience',
            timestamp: t,
            payload: { tokens, isComplete: done, sessionId: 's1', modelId: 'demo' } });
        a.serverSends({ type: 'heartbeat', channel: 'system', timestamp: 1,
            payload: { sequence: 7, serverTime: 1, frameRate: 60, connectionId: 'c' } });
        a.serverSends({ type: 'state_snapshot', channel: 'system', timestamp: 1, payload: {
            serverInstance: 'i1', resumed: true, frameNumber: 5, models: [], sessions: [],
            rewards: [], channels: [], retentionSessions: 1, retentionSeconds: 1 } });
        a.serverSends(ts(['A', 'B'], false));
        a.serverSends({ type: 'energy_update', channel: 'energy', timestamp: 1, frameNumber: 42,
            payload: {} });
        a.serverCloses(1006);
        await sleep(40);
        const b = FakeSocket.instances[1];
        const resume = b.sent[0];
        // The server had published 5 tokens; its replay ends at the 5th. This one starts
        // one token early (at 'B', held already), which the client must trim.
        b.serverSends({ type: 'state_snapshot', channel: 'system', timestamp: 9, payload: {
            serverInstance: 'i1', resumed: true, frameNumber: 50, models: [], rewards: [],
            channels: [], retentionSessions: 1, retentionSeconds: 1, sessions: [
            { sessionId: 's1', modelId: 'demo', status: 'streaming', tokens: 5, resumable: true }
        ] } });
        b.serverSends(ts(['B', 'C', 'D', 'E'], false, 9));   // replay: 'B' is held already
        b.serverSends(ts(['F'], true, 10));                   // live
        b.serverSends(ts(['G'], false, 11));                  // after completion: dropped
        await sleep(5);
        c.close();
        return { heartbeatAnswer: a.sent[1], resume, texts,
                 text: c.sessions.get('s1').text, complete: c.sessions.get('s1').complete };
        """,
    )
    assert result["heartbeatAnswer"] == {"type": "heartbeat_response", "payload": {"sequence": 7}}
    assert result["resume"] == {
        "type": "resume",
        "payload": {
            "sessions": [{"sessionId": "s1", "tokens": 2}],
            "serverInstance": "i1",
            "lastFrame": 42,
        },
    }
    assert result["texts"] == ["AB", "CDE", "F"]
    assert result["text"] == "ABCDEF"
    assert result["complete"] is True


def test_client_module_drops_the_replay_of_an_event_it_had_after_its_last_frame(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    page = open_page(shared_server.url)
    result = run_module_script(
        page.page,
        """
        const rewards = [];
        const c = new m.WirthforgeClient({ url: 'ws://x.invalid/ws', WebSocketImpl: FakeSocket,
            pingIntervalMs: 0, backoff: new m.Backoff({ initialMs: 5 }) });
        c.on('reward_event', e => rewards.push(e.payload.title));
        c.start();
        await sleep(20);
        const snap = (resumed) => ({ type: 'state_snapshot', channel: 'system', timestamp: 1,
            payload: { serverInstance: 'i1', resumed, frameNumber: 5, models: [], sessions: [],
            rewards: [], channels: [], retentionSessions: 1, retentionSeconds: 1 } });
        const reward = (title) => ({ type: 'reward_event', channel: 'reward', timestamp: 3,
            payload: { rewardType: 'achievement', title, points: 10 } });
        const frame = (n) => ({ type: 'energy_update', channel: 'energy', timestamp: 1,
            frameNumber: n, payload: {} });
        const a = FakeSocket.instances[0];
        a.serverSends(snap(false));
        a.serverSends(frame(42));
        a.serverSends(reward('First Light'));   // the connection breaks before frame 43
        a.serverCloses(1006);
        await sleep(40);
        const b = FakeSocket.instances[1];
        b.serverSends(snap(true));
        b.serverSends(reward('First Light'));   // replayed: had it
        b.serverSends(reward('Level 2'));       // replayed: missed it
        b.serverSends(frame(50));
        b.serverSends(reward('First Light'));   // live: delivered
        await sleep(5);
        c.close();
        return { rewards, dropped: c.replaysDropped, lastFrame: b.sent[0].payload.lastFrame };
        """,
    )
    assert result["lastFrame"] == 42
    assert result["rewards"] == ["First Light", "Level 2", "First Light"]
    assert result["dropped"] == 1


def test_the_js_client_is_served_where_the_docs_say(shared_server: ServerProcess) -> None:
    served = httpx.get(shared_server.url + "/static/wirthforge-client.js").text
    assert served == (ROOT / "wirthforge_trio" / "static" / "wirthforge-client.js").read_text()


def test_client_module_subscriptions_and_dispatch_by_channel(
    shared_server: ServerProcess, open_page: Callable[[str], PageUnderTest]
) -> None:
    """Against the real server: leaving the energy channel stops frames, joining it again
    brings them back, and events arrive by type and by channel."""
    page = open_page(shared_server.url)
    result = run_module_script(
        page.page,
        """
        const counts = { frames: 0, energyChannel: 0, subscriptions: [] };
        const c = new m.WirthforgeClient({ pingIntervalMs: 0 });
        c.on('energy_update', () => counts.frames++);
        c.on('channel:energy', () => counts.energyChannel++);
        c.on('subscriptions', e => counts.subscriptions.push(e.payload.channels));
        const connected = new Promise(r => c.on('state', ({ state }) => {
            if (state === 'connected') r(); }));
        c.start();
        await connected;
        await sleep(1000);
        const before = counts.frames;
        c.unsubscribe({ channels: ['energy'] });
        await sleep(300);                       // what was already on its way
        const left = counts.frames;
        await sleep(1000);
        const whileAway = counts.frames - left;
        c.subscribe({ channels: ['energy'] });
        await sleep(1000);
        const after = counts.frames - left - whileAway;
        c.close();
        return { before, whileAway, after, energyChannel: counts.energyChannel,
                 frames: counts.frames, subscriptions: counts.subscriptions,
                 state: c.state };
        """,
    )
    assert result["before"] >= 40
    assert result["whileAway"] == 0
    assert result["after"] >= 40
    # Every energy_update was also dispatched on its channel (energy_field ones too).
    assert result["energyChannel"] >= result["frames"]
    assert ["council", "experience", "reward", "system"] in [
        sorted(c) for c in result["subscriptions"]
    ]
    assert result["state"] == "closed"
