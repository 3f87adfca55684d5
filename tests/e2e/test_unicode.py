"""Tokens with any Unicode never break the JSON or the stream.

A runtime's JSON can carry text that is not valid Unicode: escapes of lone surrogates, and
surrogate pairs split across two chunks (each half alone is a lone surrogate); its bytes can
be malformed UTF-8. An embedding program's source can yield surrogates directly. Before the
fix, one lone surrogate made ``orjson`` refuse the frame's token_stream and the exception
ended the engine's frame loop: no more frames for anyone. Now a split pair is joined, a lone
surrogate becomes U+FFFD (as a decoder does with a malformed byte), and everything else
arrives exactly as the runtime sent it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

import orjson
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fake_runtimes import FakeOllama, FakeOpenAI, Request, Script, _Conn
from tests.support.logs import errors_logged
from tests.support.server import CheckedClient, RunningServer, start_server, test_settings
from wirthforge_trio.contract.codec import encode, valid_text
from wirthforge_trio.contract.events import TokenStream, TokenStreamPayload
from wirthforge_trio.server import serve
from wirthforge_trio.sources.base import Token
from wirthforge_trio.sources.http_runtime import SurrogateMender
from wirthforge_trio.transport.mailbox import Mailbox
from wirthforge_trio.web import create_app

NASTY = [
    "Hello",
    " wörld",
    " 日本語",
    " 🔥",
    " 👩🏽\u200d🚀",  # a ZWJ sequence with a skin tone
    " e\u0301",  # a combining accent
    " \u200b\u2060",  # zero-width space, word joiner
    " \u2028\u2029",  # JavaScript's line terminators inside a JSON string
    " \x00\x01\x1f\x7f",  # control characters, NUL first
    " \ufeff",  # a byte order mark mid-text
    " \ufffe\uffff\U0010ffff",  # noncharacters, the last code point
    " مرحبا \u202e",  # right to left, and an override
    ' "quoted" \\ back\\slash </script>',
    " \U0001d54f\U0001f3f3\ufe0f\u200d\U0001f308",  # astral letters, a flag sequence
]
SURROGATES = [
    " lone-high:",
    "\ud800",
    " lone-low:",
    "\udc00",
    " split:",
    "\ud83d",  # one character's surrogate pair, split across two chunks
    "\ude00",
    " end:",
    "\udbff",  # a high surrogate with nothing after it: the stream ends
]
SURROGATES_SENT = " lone-high:\ufffd lone-low:\ufffd split:😀 end:\ufffd"
"""What clients must receive for SURROGATES."""


def expected_text() -> str:
    return "".join(NASTY) + SURROGATES_SENT


@contextmanager
def no_errors_logged() -> Iterator[None]:
    with errors_logged() as found:
        yield
    assert found == [], f"the server logged errors: {found}"


async def read_session(client: CheckedClient, seconds: float = 20) -> tuple[str, str]:
    """(sessionId, text) of the next session to complete; the raw frames are JSON-checked."""
    tokens: list[str] = []
    with trio.fail_after(seconds):
        while True:
            message = await client.receive_type("token_stream", seconds)
            tokens.extend(message["payload"]["tokens"])
            if message["payload"]["isComplete"]:
                return message["payload"]["sessionId"], "".join(tokens)


async def stream_goes_on(server: RunningServer, client: CheckedClient) -> None:
    """Frames keep coming at ~60 Hz, the server answers, a new prompt streams."""
    first = await client.receive_type("energy_update")
    start = trio.current_time()
    while trio.current_time() - start < 1.0:
        await client.receive()
    rate = (client.last_frame - first["frameNumber"]) / (trio.current_time() - start)
    assert rate >= 55, f"{rate:.1f} frames/s after the tokens"
    async with server.http() as http:
        assert (await http.get("/health")).status_code == 200


async def replay(server: RunningServer, session_id: str) -> str:
    """The session's text as a resuming client that holds none of it gets it back."""
    async with server.connect_url(server.ws_url + "?resume=1") as client:
        await client.receive_type("startup_complete")
        await client.send({"type": "resume", "payload": {}})
        instance = (await client.receive_type("state_snapshot"))["payload"]["serverInstance"]
    async with server.connect_url(server.ws_url + "?resume=1") as client:
        await client.receive_type("startup_complete")
        resume = {"serverInstance": instance, "sessions": [{"sessionId": session_id, "tokens": 0}]}
        await client.send({"type": "resume", "payload": resume})
        await client.receive_type("state_snapshot")
        message = await client.receive_type("token_stream")
        assert message["payload"]["sessionId"] == session_id and message["payload"]["isComplete"]
        return "".join(message["payload"]["tokens"])


# -- through real runtime protocols -----------------------------------------------------------


@pytest.mark.parametrize("runtime", [FakeOllama, FakeOpenAI])
async def test_any_unicode_from_a_runtime_arrives_intact(
    nursery: trio.Nursery, runtime: type[FakeOllama] | type[FakeOpenAI]
) -> None:
    # The fakes escape every non-ASCII character (json.dumps), as many runtimes do, so the
    # surrogates reach the source as JSON escapes, each chunk on its own.
    fake = runtime({"uni": Script([*NASTY, *SURROGATES], delays=[0.01] * 40)})
    await nursery.start(fake.serve)
    url = {"ollama_url": fake.base_url} if runtime is FakeOllama else {"openai_url": fake.base_url}
    kind = "ollama" if runtime is FakeOllama else "openai"
    with no_errors_logged():
        server = await start_server(nursery, test_settings(models=(f"{kind}:uni",), **url))
        async with server.connect() as client, server.http() as http:
            await client.receive_type("startup_complete")
            response = await http.post("/prompt", json={"prompt": "unicode", "models": ["uni"]})
            assert response.status_code == 202, response.text
            session_id, text = await read_session(client)
            assert text == expected_text()
            await stream_goes_on(server, client)
        assert await replay(server, session_id) == expected_text()
        server.stop.set()


class RawBytesOllama(FakeOllama):
    """Ollama whose stream carries raw bytes: a character split across two HTTP chunks, and
    bytes that are not UTF-8 at all."""

    CHUNKS: Sequence[bytes] = (
        b'{"response": "caf\xc3',
        b'\xa9 na\xc3\xafve \xff\xfe bad \xed\xa0\x80 cesu", "done": false}\n',
        b'{"response": " \xf0\x9f',
        b'\x94\xa5", "done": false}\n{"response": "", "done": true}\n',
    )
    TEXT = "café naïve \ufffd\ufffd bad \ufffd\ufffd\ufffd cesu 🔥"
    """Python's UTF-8 decoder with errors="replace" (which httpx uses): one U+FFFD per bad byte."""

    async def route(self, request: Request, conn: _Conn) -> None:
        if request.method == "POST" and request.path == "/api/generate":
            await conn.start_chunked("application/x-ndjson")
            for chunk in self.CHUNKS:
                await conn.send_chunk(chunk)
                await trio.sleep(0.02)
            await conn.end_chunked()
            return
        await super().route(request, conn)


async def test_malformed_utf8_from_a_runtime_is_replaced_not_fatal(nursery: trio.Nursery) -> None:
    fake = RawBytesOllama({"raw": Script([])})
    await nursery.start(fake.serve)
    with no_errors_logged():
        server = await start_server(
            nursery, test_settings(models=("ollama:raw",), ollama_url=fake.base_url)
        )
        async with server.connect() as client, server.http() as http:
            await client.receive_type("startup_complete")
            response = await http.post("/prompt", json={"prompt": "bytes", "models": ["raw"]})
            assert response.status_code == 202, response.text
            _, text = await read_session(client)
            assert text == RawBytesOllama.TEXT
            await stream_goes_on(server, client)
        server.stop.set()


# -- through an embedding program's own source ---------------------------------------------------


class RawSource:
    """A custom source that yields whatever strings it is given, surrogates included."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = tokens

    @property
    def name(self) -> str:
        return "raw"

    @property
    def kind(self) -> str:
        return "custom"

    async def generate(self, prompt: str) -> AsyncIterator[Token]:
        for text in self.tokens:
            await trio.sleep(0.01)
            yield Token(text=text, at=trio.current_time())

    async def check(self) -> None:
        pass

    async def preload(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def start_with_sources(nursery: trio.Nursery, sources: Sequence[Any]) -> RunningServer:
    server_settings = test_settings()
    app = create_app(server_settings, extra_sources=sources)
    stop = trio.Event()
    started = await nursery.start(
        lambda task_status: serve(
            server_settings, app=app, shutdown_trigger=stop.wait, task_status=task_status
        )
    )
    return RunningServer(url=started.url, app=app, settings=server_settings, stop=stop)


async def test_surrogates_from_a_custom_source_keep_the_stream_alive(
    nursery: trio.Nursery,
) -> None:
    """No mender in front of this source: the codec itself must cope (it used to raise, and
    the exception ended the frame loop)."""
    tokens = ["a", "\ud800", "b", "\udc00\ud83d", "\ude00", "\ud83d\ude00", "\udfff", "z"]
    sent = "a\ufffdb\ufffd\ufffd\ufffd😀\ufffdz"  # each token is made valid on its own
    with no_errors_logged():
        server = await start_with_sources(nursery, [RawSource(tokens)])
        async with server.connect() as client, server.http() as http:
            await client.receive_type("startup_complete")
            response = await http.post("/prompt", json={"prompt": "x", "models": ["raw"]})
            assert response.status_code == 202, response.text
            session_id, text = await read_session(client)
            assert text == sent
            await stream_goes_on(server, client)
        assert await replay(server, session_id) == sent
        server.stop.set()


# -- properties of the pieces --------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=30)
"""Any code points, lone surrogates included."""
valid_unicode = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(any_text, min_size=1, max_size=6))
def test_any_token_text_encodes_to_strict_json(texts: list[str]) -> None:
    event = TokenStream(
        timestamp=1,
        payload=TokenStreamPayload(
            tokens=tuple(texts), is_complete=False, session_id="s-1", model_id="m"
        ),
    )
    wire = encode(event)
    wire.encode("utf-8")  # a WebSocket text frame must be valid UTF-8
    decoded = orjson.loads(wire)  # orjson refuses lone surrogate escapes: strict
    assert decoded["payload"]["tokens"] == [valid_text(t) for t in texts]
    for text, sent in zip(texts, decoded["payload"]["tokens"], strict=True):
        if valid_text(text) == text:
            assert sent == text, "valid text is sent exactly"


@settings(max_examples=200, deadline=None)
@given(st.lists(any_text, min_size=1, max_size=8))
def test_merged_batches_of_a_slow_client_stay_valid(texts: list[str]) -> None:
    """A client that falls behind gets its waiting batches merged and re-encoded."""
    mailbox = Mailbox()
    for i, text in enumerate(texts):
        event = TokenStream(
            timestamp=i,
            payload=TokenStreamPayload(
                tokens=(text,), is_complete=i == len(texts) - 1, session_id="s-1", model_id="m"
            ),
        )
        mailbox.put_tokens(event, encode(event))
    wire = mailbox.take_lossless()
    assert wire is not None and mailbox.take_lossless() is None
    assert orjson.loads(wire)["payload"]["tokens"] == [valid_text(t) for t in texts]


@st.composite
def split_utf16(draw: st.DrawFn) -> tuple[str, list[str]]:
    """Valid text, and the pieces a runtime that splits UTF-16 code units anywhere sends."""
    text = draw(valid_unicode)
    units = text.encode("utf-16-le")
    cuts = sorted(draw(st.sets(st.integers(0, len(units) // 2), max_size=6)))
    bounds = [0, *(2 * c for c in cuts), len(units)]
    pieces = [units[a:b].decode("utf-16-le", "surrogatepass") for a, b in pairwise(bounds)]
    return text, pieces


@settings(max_examples=300, deadline=None)
@given(split_utf16())
def test_the_mender_joins_pairs_split_anywhere(case: tuple[str, list[str]]) -> None:
    text, pieces = case
    mender = SurrogateMender()
    out = "".join(mender.feed(p) for p in pieces) + mender.flush()
    assert out == text


@settings(max_examples=300, deadline=None)
@given(st.lists(any_text, max_size=8))
def test_the_mender_always_gives_valid_unicode(pieces: list[str]) -> None:
    mender = SurrogateMender()
    outs = [mender.feed(p) for p in pieces] + [mender.flush()]
    joined = "".join(outs)
    joined.encode("utf-8")  # never raises
    assert joined == valid_text("".join(pieces)), "as if the runtime had sent it in one piece"
