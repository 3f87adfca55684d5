"""Error messages read well: what happened and what to do are separate sentences (issue 23)."""

from __future__ import annotations

import re

import trio

from tests.support.engine import ScriptedSource, engine
from tests.support.waits import eventually
from wirthforge_trio.contract.events import ErrorEvent
from wirthforge_trio.engine.decipher import model_error
from wirthforge_trio.sources.base import MODEL_UNAVAILABLE, SourceError, with_hint

RUN_TOGETHER = re.compile(r"[a-z)] [a-z]+ the runtime")


def test_with_hint_makes_two_sentences() -> None:
    assert with_hint("the session was ended", "check the runtime") == (
        "the session was ended. Check the runtime."
    )
    assert with_hint("it failed.", "try again!") == "it failed. Try again!"
    assert with_hint("it failed", "") == "it failed"
    assert with_hint("", "check it") == "check it"
    assert with_hint("no model", "`ollama pull x` first") == "no model. `ollama pull x` first."


def test_source_error_and_model_error_keep_the_sentences_apart() -> None:
    failure = SourceError(
        MODEL_UNAVAILABLE,
        "cannot connect to Ollama at http://127.0.0.1:9 (ConnectError: refused)",
        "start Ollama with `ollama serve`",
    )
    assert str(failure) == (
        "cannot connect to Ollama at http://127.0.0.1:9 (ConnectError: refused). "
        "Start Ollama with `ollama serve`."
    )
    event = model_error(failure, "llama")
    assert event.payload.message == (
        "model llama: cannot connect to Ollama at http://127.0.0.1:9 (ConnectError: refused). "
        "Start Ollama with `ollama serve`."
    )


async def test_a_timeout_error_reads_as_two_sentences() -> None:
    """The message the issue quotes: "...the session was ended check the runtime..."."""
    stalling = ScriptedSource("slow", stall_after=2)
    eng, rec = engine(stalling, stall_timeout=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        (session,) = eng.submit("p")
        await eventually(lambda: session.completion_sent, 3)
        eng.stop()
    (error,) = [e for e in rec.of(ErrorEvent) if e.payload.code == "MODEL_TIMEOUT"]
    message = error.payload.message
    assert "the session was ended. Check the runtime" in message, message
    assert not RUN_TOGETHER.search(message), message
    assert message.endswith(".")
