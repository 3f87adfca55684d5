"""Privacy: through a full council run, with every logger of the process at DEBUG, no prompt
and no token text reaches a log record, and the energy events carry no text at all.

Every record is formatted fully: its message with the arguments applied, the raw ``args``,
any ``extra`` fields, the exception and stack text. The prompt itself (and its escaped
forms) and every run of three consecutive tokens are searched for in all of it. Every word of
six letters or more of the streamed answers is searched for in the server's own records whole
and in what other libraries' records interpolate (args, extras, exception text: a library's
own wording, such as httpcore's "exception=GeneratorExit()", is not the user's), leaving out
the words the logs already used before the prompt was sent ("connection", "Running", ...).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from tests.support.fake_runtimes import FakeOllama, Script
from tests.support.server import CheckedClient, RunningServer, serving, test_settings
from wirthforge_trio.sources.demo import DemoSource

PROMPT = 'privacy-canary-7c21: my PIN is 4921, read "Élodie\'s diary" aloud'
FRAME_EVENTS = ("energy_update", "energy_field", "interference_event", "resonance_event")
ENUMS = {
    "energy",
    "council",
    *FRAME_EVENTS,
    "lightning",
    "stream",
    "interference",
    "resonance",
    "constructive",
    "destructive",
    "neutral",
    "harmonic",
    "fundamental",
    "overtone",
}
_STANDARD_RECORD_KEYS = set(vars(logging.LogRecord("n", 0, "p", 0, "m", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class Capture(logging.Handler):
    """Every record, formatted in full, with the time it was made."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.dynamic: list[str] = []
        """Per record, the text that did not come from a library's own wording: the whole
        line for the server's loggers; args, extras and exception text for the others."""
        self.errors: list[str] = []
        self.mark = 0

    def emit(self, record: logging.LogRecord) -> None:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_KEYS}
        line = f"{self.format(record)} args={record.args!r} extra={extra!r}"
        self.lines.append(line)
        if record.name.startswith("wirthforge_trio"):
            # The message without its template's own wording ("... busy machine"): what was
            # put into it. (Token text written into a template itself would still show in
            # the three-token windows checked against whole lines.)
            message = record.getMessage()
            if isinstance(record.msg, str) and record.args:
                for literal in re.split(r"%[-#0 +]*\d*(?:\.\d+)?[a-z%]", record.msg):
                    if literal.strip():
                        message = message.replace(literal, " ", 1)
            self.dynamic.append(f"{message} {extra!r} {record.exc_text or ''}")
        else:
            self.dynamic.append(f"{record.args!r} {extra!r} {record.exc_text or ''}")
        if record.levelno >= logging.ERROR:
            self.errors.append(line)

    def since_mark(self) -> str:
        return "\n".join(self.lines[self.mark :])

    def before_mark(self) -> str:
        return "\n".join(self.lines[: self.mark])

    def dynamic_since_mark(self) -> str:
        return "\n".join(self.dynamic[self.mark :])


@contextmanager
def everything_at_debug() -> Iterator[Capture]:
    """Capture the root logger and every logger that does not propagate, all at DEBUG."""
    capture = Capture()
    manager = logging.root.manager
    loggers = [logging.root] + [
        logger for logger in manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    levels = {logger: logger.level for logger in loggers}
    attached = [logger for logger in loggers if logger is logging.root or not logger.propagate]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    for logger in attached:
        logger.addHandler(capture)
    try:
        yield capture
    finally:
        for logger in attached:
            logger.removeHandler(capture)
        for logger, level in levels.items():
            logger.setLevel(level)


def prompt_forms(prompt: str) -> set[str]:
    """The prompt as it could appear in a log: raw, JSON-escaped, repr'd, and its marker."""
    return {
        prompt,
        json.dumps(prompt)[1:-1],
        json.dumps(prompt, ensure_ascii=False)[1:-1],
        repr(prompt)[1:-1],
        "privacy-canary-7c21",
        "Élodie",
    }


def assert_no_text_in_logs(capture: Capture, answers: dict[str, list[str]]) -> None:
    after = capture.since_mark()
    for form in prompt_forms(PROMPT):
        assert form not in after and form not in capture.before_mark(), f"prompt in logs: {form}"
    vocabulary = set(re.findall(r"\w{6,}", capture.before_mark()))
    for tokens in answers.values():
        for i in range(len(tokens) - 2):
            window = "".join(tokens[i : i + 3])
            if len(window.strip()) >= 6:
                assert window not in after, f"token text in the logs: {window!r}"
        words = set(re.findall(r"\w{6,}", "".join(tokens))) - vocabulary
        dynamic = capture.dynamic_since_mark()
        leaked = sorted(w for w in words if re.search(rf"\b{re.escape(w)}\b", dynamic))
        assert leaked == [], f"streamed words in the logs: {leaked}"


def string_leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from string_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from string_leaves(item)


async def run_council(
    server: RunningServer, client: CheckedClient, models: list[str]
) -> tuple[dict[str, list[str]], list[dict[str, Any]], list[dict[str, Any]]]:
    """POST the prompt to ``models``; read until every session completes: the tokens per
    model, the frame events, and the error events."""
    async with server.http() as http:
        response = await http.post("/prompt", json={"prompt": PROMPT, "models": models})
    assert response.status_code == 202, response.text
    sessions = {s["sessionId"]: s["modelId"] for s in response.json()["sessions"]}
    tokens: dict[str, list[str]] = {model: [] for model in sessions.values()}
    frames: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    done: set[str] = set()
    with trio.fail_after(60):
        while done != set(sessions):
            message = await client.receive()
            if message["type"] in FRAME_EVENTS:
                frames.append(message)
            elif message["type"] == "error_event":
                errors.append(message)
            elif message["type"] == "token_stream":
                payload = message["payload"]
                tokens[sessions[payload["sessionId"]]].extend(payload["tokens"])
                if payload["isComplete"]:
                    done.add(payload["sessionId"])
    return tokens, frames, errors


def assert_frames_carry_no_text(frames: list[dict[str, Any]], model_ids: set[str]) -> None:
    kinds = {f["type"] for f in frames}
    assert {"energy_update", "energy_field"} <= kinds, kinds
    for frame in frames:
        texts = set(string_leaves(frame)) - ENUMS - model_ids
        assert texts == set(), f"{frame['type']} carries text: {texts}"


async def test_a_council_run_logs_no_prompt_or_token_text() -> None:
    settings = test_settings(log_level="DEBUG", models=("demo", "demo:b"), demo_speed=3.0)
    with everything_at_debug() as capture:
        async with serving(settings) as server:  # left once the server stopped: its records too
            async with server.connect() as client:
                await client.receive_type("startup_complete")
                await client.receive_type("heartbeat")
                capture.mark = len(capture.lines)
                tokens, frames, errors = await run_council(server, client, ["demo", "demo:b"])
    assert tokens == {
        "demo": DemoSource(seed=0, name="demo").tokens_for(PROMPT),
        "demo-b": DemoSource(seed=0, name="demo:b").tokens_for(PROMPT),
    }
    assert errors == [] and capture.errors == []
    after = capture.since_mark()
    assert "sent frame" in after and "built in" in after, "DEBUG records were captured"
    assert "prompt accepted" in after, "the server's INFO records were captured"
    print(f"{len(capture.lines)} records captured, {len(frames)} frame events checked")
    assert_no_text_in_logs(capture, tokens)
    assert_frames_carry_no_text(frames, {"demo", "demo-b", "council"})


async def test_a_failing_runtime_in_the_council_logs_no_prompt(nursery: trio.Nursery) -> None:
    """A runtime that echoes the prompt in its error (as some do): neither the logs nor the
    error_event may repeat it."""
    script = Script(
        [" the", " runtime", " answered", " something", " private", " before", " failing"],
        delays=[0.02] * 7,
        error_after=5,
    )
    ollama = FakeOllama({"echo": script})
    await nursery.start(ollama.serve)
    settings = test_settings(
        log_level="DEBUG",
        models=("demo", "ollama:echo"),
        ollama_url=ollama.base_url,
        demo_speed=3.0,
    )
    with everything_at_debug() as capture:
        async with serving(settings) as server:  # left once the server stopped: its records too
            async with server.connect() as client:
                await client.receive_type("startup_complete")
                await client.receive_type("heartbeat")
                capture.mark = len(capture.lines)
                tokens, frames, errors = await run_council(server, client, ["demo", "echo"])
    generate = [r for r in ollama.requests if r.path == "/api/generate"]
    assert generate and generate[-1].body["prompt"] == PROMPT, "the runtime got the prompt"
    assert "".join(tokens["echo"]) == "".join(script.tokens[:5]), "kept what arrived"
    (error,) = errors
    assert error["payload"]["code"] == "MODEL_HTTP_ERROR"
    for form in prompt_forms(PROMPT):
        assert form not in json.dumps(error, ensure_ascii=False), "prompt in the error_event"
    assert "[prompt]" in error["payload"]["message"], "the echo was redacted, not dropped"
    assert_no_text_in_logs(capture, tokens)
    assert_frames_carry_no_text(frames, {"demo", "echo", "council"})
