"""Every HTTP error is JSON of one shape, ``{"error": ...}``, also outside the API routes
(issue 23, C4): a real server, a real HTTP client."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.support.server import RunningServer

JSON_HEADERS = {"Content-Type": "application/json"}


def json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
    assert set(body) <= {"error", "field"}
    assert "<" not in body["error"], "no HTML in the message"
    return body


async def test_an_unknown_path_is_a_json_404(server: RunningServer) -> None:
    async with server.http() as http:
        body = json_error(await http.get("/nope"), 404)
    assert "/nope" in body["error"] and "/prompt" in body["error"]


async def test_a_wrong_method_is_a_json_405_that_keeps_allow(server: RunningServer) -> None:
    async with server.http() as http:
        response = await http.get("/prompt")
        body = json_error(response, 405)
    assert "GET" in body["error"] and "POST" in body["error"]
    assert "POST" in response.headers["allow"]


async def test_a_plain_get_of_the_websocket_is_a_json_400(server: RunningServer) -> None:
    async with server.http() as http:
        body = json_error(await http.get("/ws"), 400)
    assert "WebSocket" in body["error"] and "ws://" in body["error"]


async def test_api_errors_keep_their_own_messages(server: RunningServer) -> None:
    async with server.http() as http:
        body = json_error(
            await http.post("/prompt", content=b"not json", headers=JSON_HEADERS), 400
        )
    assert "JSON" in body["error"]


async def test_a_sessions_status_is_there_to_ask_for(server: RunningServer) -> None:
    """GET /prompt/{id}: how a session ended, which the last token_stream does not say."""
    async with server.http() as http:
        json_error(await http.get("/prompt/s-nope"), 404)
        started = await http.post("/prompt", json={"prompt": "hi"})
        (session,) = started.json()["sessions"]
        assert (await http.delete(f"/prompt/{session['sessionId']}")).status_code == 202
        for _ in range(200):  # up to 10 s
            body = (await http.get(f"/prompt/{session['sessionId']}")).json()
            if body["status"] != "streaming":
                break
            await trio.sleep(0.05)
    assert body["status"] == "cancelled"
    assert body["sessionId"] == session["sessionId"] and body["modelId"] == session["modelId"]
