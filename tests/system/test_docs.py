"""The documentation agrees with the code, so that neither can drift from the other.

- Every JSON example in docs/protocol.md is a message the schemas and the codec accept, and
  every event type and client message has one.
- docs/asyncapi.yaml parses, is AsyncAPI 3.0.0, resolves every $ref into schemas/, and
  names every event type of the contract (and nothing else) as a message.
- Every diagram's SVG was rendered from the current Mermaid source (a hash, not a file
  time), and the client state machine diagram has exactly the client's transitions.
- The error-code and close-code tables list every code the server can send.
- docs/operations.md lists every WIRTHFORGE_* variable with its default, every command and
  flag, every logger and every field that /health, /models and /status answer on a running
  server. No document names a WIRTHFORGE_* variable that is neither a setting nor one of the
  test suite's own switches (TEST_ONLY_VARIABLES).
- docs/binary-frames.md shows what benchmarks/binary_frame_size.py measures.
- The version is in one place and the CHANGELOG and AsyncAPI agree with it; the README
  keeps its two commands and links every document; every relative link resolves.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import jsonschema
import pytest
import yaml

import wirthforge_trio
from tests.support.checks import check_message
from tests.support.commands import ROOT
from tests.support.server import RunningServer
from wirthforge_trio import cli, client, config
from wirthforge_trio.broker.node import ERROR_CODES as BROKER_ERROR_CODES
from wirthforge_trio.contract import close_codes
from wirthforge_trio.contract.codec import decode_client_message, decode_event
from wirthforge_trio.contract.events import (
    ALL_EVENTS,
    CLIENT_MESSAGES,
    CLIENT_MESSAGES_BY_TYPE,
    EVENTS_BY_TYPE,
)
from wirthforge_trio.web import WRONG_WORKER_MESSAGE

DOCS = ROOT / "docs"
PACKAGE = ROOT / "wirthforge_trio"
PROTOCOL = DOCS / "protocol.md"
OPERATIONS = DOCS / "operations.md"
BINARY = DOCS / "binary-frames.md"
ASYNCAPI = DOCS / "asyncapi.yaml"
SCHEMAS = ROOT / "schemas"

TEST_ONLY_VARIABLES = frozenset({"WIRTHFORGE_SOAK"})
"""Switches of the test suite, not settings of the server: reliability.md names them when it
says how to run the tests (``WIRTHFORGE_SOAK=1`` runs the long variants)."""

CLOSE_CODE_MODULES = (close_codes,)
"""Where the ``CLOSE_*`` constants are defined, once for the server and the client."""


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _load_script(path: Path) -> ModuleType:
    """A script that is not in a package (diagrams/, benchmarks/), imported by its path."""
    name = f"_docs_{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@cache
def render_script() -> ModuleType:
    return _load_script(ROOT / "diagrams" / "render.py")


@cache
def frame_size_script() -> ModuleType:
    return _load_script(ROOT / "benchmarks" / "binary_frame_size.py")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of its level."""
    level = heading.split(" ", 1)[0]
    lines = text.splitlines()
    start = lines.index(heading)
    out = []
    for line in lines[start + 1 :]:
        marks = line.split(" ", 1)[0]
        if set(marks) == {"#"} and len(marks) <= len(level):
            break
        out.append(line)
    return "\n".join(out)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (header and rule rows included)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.strip().startswith("|")
    ]


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


# --- examples in protocol.md ----------------------------------------------------------------


def json_examples(text: str) -> list[str]:
    return re.findall(r"^```json\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


@cache
def _file_validator(name: str, definition: str) -> jsonschema.Draft7Validator:
    schema = json.loads(_read(SCHEMAS / name))
    return jsonschema.Draft7Validator({**schema, "$ref": f"#/definitions/{definition}"})


def _definition_of(cls: type) -> str:
    return cls.__name__[0].lower() + cls.__name__[1:]


def test_every_json_example_in_the_protocol_is_a_valid_message() -> None:
    examples = json_examples(_read(PROTOCOL))
    assert len(examples) >= 20, "protocol.md lost its examples"
    for text in examples:
        message = json.loads(text)
        kind = message.get("type")
        if kind in EVENTS_BY_TYPE:
            cls: type = EVENTS_BY_TYPE[kind]
            schema_file = "server-events.schema.json"
            check_message(text)  # the generated schema, and the published one if present
            decode_event(text)
        else:
            assert kind in CLIENT_MESSAGES_BY_TYPE, f"example of an unknown type: {text[:120]}"
            cls = CLIENT_MESSAGES_BY_TYPE[kind]
            schema_file = "client-messages.schema.json"
            decode_client_message(text)  # what the server itself would accept
        validator = _file_validator(schema_file, _definition_of(cls))
        errors = [e.message for e in validator.iter_errors(message)]
        assert not errors, f"example fails {schema_file}: {errors}: {text[:200]}"


def test_every_event_and_client_message_has_an_example() -> None:
    shown = {json.loads(text)["type"] for text in json_examples(_read(PROTOCOL))}
    missing = (set(EVENTS_BY_TYPE) | set(CLIENT_MESSAGES_BY_TYPE)) - shown
    assert not missing, f"protocol.md has no example of: {sorted(missing)}"


def test_a_broken_example_would_be_caught() -> None:
    """The checks above fail on a wrong field, so they are not vacuous."""
    bad = '{"type": "heartbeat", "channel": "system", "timestamp": 1, "payload": {"seq": 0}}'
    validator = _file_validator("server-events.schema.json", "heartbeat")
    assert list(validator.iter_errors(json.loads(bad)))
    with pytest.raises(AssertionError):
        check_message(bad)


# --- AsyncAPI -------------------------------------------------------------------------------


@cache
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(_read(ASYNCAPI))
    return document


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                assert isinstance(value, str)
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _pointer(document: Any, fragment: str) -> Any:
    node = document
    for part in fragment.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"no {part!r} on the way to {fragment}"
        node = node[part]
    return node


def resolve(ref: str) -> Any:
    """What a $ref of docs/asyncapi.yaml points at (in the file or in a schema file)."""
    location, _, fragment = ref.partition("#")
    if not location:
        node = _pointer(asyncapi(), fragment)
        if isinstance(node, dict) and set(node) == {"$ref"}:  # a reference to a reference
            return resolve(node["$ref"])
        return node
    target = (ASYNCAPI.parent / location).resolve()
    assert target.is_file(), f"$ref {ref!r}: no file {target}"
    return _pointer(json.loads(_read(target)), fragment)


def test_asyncapi_is_3_0_0_with_the_package_version() -> None:
    document = asyncapi()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["version"] == wirthforge_trio.__version__
    assert {"info", "servers", "channels", "operations", "components"} <= set(document)


def test_every_asyncapi_ref_resolves() -> None:
    refs = list(_refs(asyncapi()))
    external = [r for r in refs if not r.startswith("#")]
    assert len(external) == len(ALL_EVENTS) + len(CLIENT_MESSAGES)
    for ref in refs:
        assert resolve(ref) is not None, ref


def test_asyncapi_names_every_event_type_of_the_contract() -> None:
    messages = asyncapi()["components"]["messages"]
    names = {message["name"] for message in messages.values()}
    contract = {cls.TYPE for cls in ALL_EVENTS} | {cls.TYPE for cls in CLIENT_MESSAGES}
    assert names == contract, f"missing {contract - names}, unknown {names - contract}"
    for key, message in messages.items():
        target = resolve(message["payload"]["$ref"])
        assert target["properties"]["type"]["const"] == message["name"], key
        channel_messages = asyncapi()["channels"]["stream"]["messages"]
        assert channel_messages[key] == {"$ref": f"#/components/messages/{key}"}


def test_asyncapi_operations_send_events_and_receive_client_messages() -> None:
    sent, received = set(), set()
    for operation in asyncapi()["operations"].values():
        names = {resolve(m["$ref"])["name"] for m in operation["messages"]}
        (sent if operation["action"] == "send" else received).update(names)
        for reply in operation.get("reply", {}).get("messages", []):
            sent.add(resolve(reply["$ref"])["name"])
    assert sent == {cls.TYPE for cls in ALL_EVENTS}
    assert received == {cls.TYPE for cls in CLIENT_MESSAGES}


# --- diagrams -------------------------------------------------------------------------------


def test_every_diagram_svg_was_rendered_from_its_current_source() -> None:
    render = render_script()
    sources = render.sources()
    assert {p.name for p in sources} >= {"lifecycle.mmd", "connection-fsm.mmd"}
    problems = render.stale()
    assert not problems, (
        f"diagrams out of date: {'; '.join(problems)}. Re-render with: {render.RENDER_COMMAND} "
        "(setup in diagrams/README.md)"
    )
    for source in sources:
        ET.fromstring(_read(source.with_suffix(".svg")))  # still well-formed after the stamp


def test_the_stamp_check_notices_an_edit(tmp_path: Path) -> None:
    render = render_script()
    source = tmp_path / "d.mmd"
    source.write_text("sequenceDiagram\n  A->>B: hi\n", encoding="utf-8")
    svg = '<svg xmlns="http://www.w3.org/2000/svg" style="a: b"><g/></svg>'
    stamped = render.stamp(render.stamp(svg, "0" * 64), render.source_digest(source))
    assert stamped.count("source-sha256") == 1
    assert render.embedded_digest(stamped) == render.source_digest(source)
    source.with_suffix(".svg").write_text(stamped, encoding="utf-8")
    assert render.stale(tmp_path) == []
    source.write_text("sequenceDiagram\n  A->>B: bye\n", encoding="utf-8")
    assert render.stale(tmp_path) == ["d.svg was rendered from another version of d.mmd"]
    assert render.source_digest(source) == render.source_digest(
        _crlf_copy(source, tmp_path / "e.mmd")
    )


def _crlf_copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes().replace(b"\n", b"\r\n"))
    return target


def test_the_protocol_embeds_both_diagrams() -> None:
    text = _read(PROTOCOL)
    for name in ("lifecycle", "connection-fsm"):
        assert re.search(rf"!\[[^\]]+\]\(\.\./diagrams/{name}\.svg\)", text), name


def test_the_state_machine_diagram_has_exactly_the_clients_transitions() -> None:
    text = _read(ROOT / "diagrams" / "connection-fsm.mmd")
    drawn = {
        (client.ConnectionState[a.upper()], client.ConnectionState[b.upper()])
        for a, b in re.findall(r"^\s*(\w+) --> (\w+)", text, flags=re.MULTILINE)
    }
    legal = {(old, new) for old, targets in client.TRANSITIONS.items() for new in targets}
    assert drawn == legal, f"missing {legal - drawn}, not in the client {drawn - legal}"


# --- error and close codes ------------------------------------------------------------------


def error_codes_in_code() -> dict[str, tuple[str, str]]:
    """code -> (component, severity) for every error_event code the package can send."""
    codes: dict[str, tuple[str, str]] = {}
    base = ast.parse(_read(PACKAGE / "sources" / "base.py"))
    for node in ast.walk(base):  # the SourceError codes, as constants
        if isinstance(node, ast.AnnAssign | ast.Assign):
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                if re.fullmatch(r"MODEL_[A-Z_]+", value.value):
                    codes[value.value] = ("model", "error")
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(_read(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            if name == "SourceError":
                codes[first.value] = ("model", "error")
            elif name == "ClientMessageError":
                codes[first.value] = ("websocket", "warning")
            elif name == "error_event":
                severity = "warning"  # error_event's default
                for keyword in node.keywords:
                    if keyword.arg == "severity" and isinstance(keyword.value, ast.Constant):
                        severity = keyword.value.value
                codes[first.value] = ("websocket", severity)
    codes.update(BROKER_ERROR_CODES)  # named constants, sent through one helper
    return codes


def test_the_code_scan_finds_the_codes_it_should() -> None:
    codes = error_codes_in_code()
    assert codes["INVALID_JSON"] == ("websocket", "warning")
    assert codes["HEARTBEAT_TIMEOUT"] == ("websocket", "error")
    assert codes["MODEL_ERROR"] == ("model", "error")
    assert codes["MODEL_STREAM_DROPPED"] == ("model", "error")
    assert codes["RATE_LIMITED"] == ("websocket", "warning")  # protocol/connection.py
    assert codes["SLOW_CONSUMER"] == ("websocket", "error")  # transport/connection.py


def test_the_error_table_lists_every_code_the_server_sends() -> None:
    table = section(_read(PROTOCOL), "## Error codes")
    documented = {
        row[0].strip("`"): (row[1], row[2])
        for row in table_rows(table)
        if re.fullmatch(r"`[A-Z0-9_]+`", row[0])
    }
    codes = error_codes_in_code()
    assert set(documented) == set(codes), (
        f"undocumented: {sorted(set(codes) - set(documented))}; "
        f"not sent by the code: {sorted(set(documented) - set(codes))}"
    )
    for code, (component, severity) in codes.items():
        assert documented[code] == (component, severity), code


def close_codes_in_code() -> set[int]:
    """Every ``CLOSE_*: Final`` code of :data:`CLOSE_CODE_MODULES` that the package uses."""
    package = "\n".join(_read(p) for p in PACKAGE.rglob("*.py"))
    used = set()
    for module in CLOSE_CODE_MODULES:
        assert module.__file__ is not None
        source = _read(Path(module.__file__))
        for name in re.findall(r"^(CLOSE_[A-Z_]+): Final", source, flags=re.MULTILINE):
            if len(re.findall(rf"\b{name}\b", package)) > 1:  # defined and used somewhere
                used.add(getattr(module, name))
    return used


def test_the_close_code_table_lists_every_code_the_server_sends() -> None:
    used = close_codes_in_code()
    assert {1001, 1008, 1009, 4408, 4413} <= used, "the scan no longer finds the close codes"
    table = section(_read(PROTOCOL), "## Close codes")
    documented = {int(row[0]) for row in table_rows(table) if row[0].isdigit()}
    assert used <= documented, f"close codes not documented: {sorted(used - documented)}"


# --- operations.md --------------------------------------------------------------------------


def _default_cell(value: Any) -> str:
    if value is None or value == ():
        return "(...)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def test_every_variable_is_in_the_configuration_table_with_its_default() -> None:
    table = section(_read(OPERATIONS), "## Configuration")
    rows = {
        row[0].strip("`"): row for row in table_rows(table) if row[0].startswith("`WIRTHFORGE_")
    }
    assert set(rows) == set(config.ENVIRONMENT_VARIABLES), (
        f"undocumented: {sorted(set(config.ENVIRONMENT_VARIABLES) - set(rows))}; "
        f"not in config.py: {sorted(set(rows) - set(config.ENVIRONMENT_VARIABLES))}"
    )
    for field in attrs.fields(config.Settings):
        cell = rows[f"WIRTHFORGE_{field.name.upper()}"][2]
        expected = _default_cell(field.default)
        if expected == "(...)":
            assert cell.startswith("(") and cell.endswith(")"), (field.name, cell)
        else:
            assert cell == expected, (field.name, cell, expected)


def test_no_document_names_a_variable_that_does_not_exist() -> None:
    assert not TEST_ONLY_VARIABLES & set(config.ENVIRONMENT_VARIABLES)
    others = [p for p in (ROOT / "tests").rglob("*.py") if p.resolve() != Path(__file__).resolve()]
    for variable in TEST_ONLY_VARIABLES:  # still a switch that some test reads
        assert any(variable in _read(p) for p in others), f"no test reads {variable} any more"
    known = set(config.ENVIRONMENT_VARIABLES) | TEST_ONLY_VARIABLES
    for path in [*DOCS.glob("*.md"), ASYNCAPI, ROOT / "README.md"]:
        named = set(re.findall(r"WIRTHFORGE_[A-Z_]+[A-Z]", _read(path)))
        assert named <= known, f"{path.name} names unknown variables: {sorted(named - known)}"


def test_defaults_quoted_in_the_protocol_match_the_settings() -> None:
    defaults = {f"WIRTHFORGE_{f.name.upper()}": f.default for f in attrs.fields(config.Settings)}
    quoted = re.findall(
        r"`(WIRTHFORGE_[A-Z_]+)`(?:\s+seconds)?\s+\((\d+(?:\.\d+)?)( KiB| MiB| s)?[ )]",
        _read(PROTOCOL),
    )
    assert len(quoted) >= 8, "the pattern no longer finds the quoted defaults"
    scale = {" KiB": 1024, " MiB": 1024 * 1024}
    for variable, number, unit in quoted:
        value = float(number) * scale.get(unit, 1)
        assert math.isclose(value, defaults[variable]), (variable, number, unit)


def test_every_flag_of_every_command_is_documented() -> None:
    text = _read(OPERATIONS)
    parser = cli._parser()
    subparsers = next(a for a in parser._actions if a.choices and a.dest == "command")
    documented = set(re.findall(r"^### `wirthforge (\w+)`$", text, flags=re.MULTILINE))
    assert {"serve", "watch", "schema"} <= documented
    assert set(subparsers.choices) == documented, (
        f"undocumented commands: {sorted(set(subparsers.choices) - documented)}; "
        f"documented but gone: {sorted(documented - set(subparsers.choices))}"
    )
    for name, sub in subparsers.choices.items():
        part = section(text, f"### `wirthforge {name}`")
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                assert f"`{option}" in part, f"wirthforge {name} {option} is not documented"
    assert "`wirthforge --version`" in text


def test_every_logger_is_documented() -> None:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        names |= set(re.findall(r'getLogger\("([^"]+)"\)', _read(path)))
    assert "wirthforge_trio.engine" in names
    table = section(_read(OPERATIONS), "## Logging")
    for name in names:
        assert f"`{name}`" in table, f"logger {name} is not in operations.md"


def test_the_wrong_worker_message_is_the_one_documented() -> None:
    assert WRONG_WORKER_MESSAGE.split(":")[0] in _read(OPERATIONS)


def flatten(value: Any, prefix: str = "", leaves: frozenset[str] = frozenset()) -> set[str]:
    """Every field path of a JSON answer: ``clients[].heartbeatRoundTrip.medianMs``."""
    if isinstance(value, dict) and prefix not in leaves:
        paths = set()
        for key, item in value.items():
            paths |= flatten(item, f"{prefix}.{key}" if prefix else key, leaves)
        return paths
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return flatten(value[0], f"{prefix}[]", leaves)
    return {prefix}


async def test_every_field_of_health_models_and_status_is_documented(
    server: RunningServer,
) -> None:
    text = _read(OPERATIONS)
    async with server.connect() as ws, server.http() as http:
        await ws.receive_type("startup_complete")  # sent after the connection joined
        answers = {
            "health": (await http.get("/health")).json(),
            "models": (await http.get("/models")).json(),
            "status": (await http.get("/status")).json(),
        }
    assert answers["status"]["clients"] and answers["status"]["models"]
    for endpoint, answer in answers.items():
        part = section(text, f"### `GET /{endpoint}`")
        leaves = frozenset({"models"}) if endpoint == "health" else frozenset()
        for path in flatten(answer, leaves=leaves):
            assert f"`{path}`" in part, f"GET /{endpoint}: field {path} is not documented"


async def test_every_http_route_is_in_the_protocol(server: RunningServer) -> None:
    text = re.sub(r"\{[^}]+\}", "{}", _read(PROTOCOL))
    for rule in server.app.url_map.iter_rules():
        if getattr(rule, "websocket", False):
            continue
        path = re.sub(r"<[^>]+>", "{}", rule.rule)
        for method in sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"}):
            assert f"`{method} {path}`" in text, f"{method} {rule.rule} is not in protocol.md"


# --- binary-frames.md -----------------------------------------------------------------------


def _measured_block() -> str:
    text = _read(BINARY)
    match = re.search(
        r"<!-- binary-frame-size:begin -->\n(.*?)<!-- binary-frame-size:end -->", text, re.DOTALL
    )
    assert match, "binary-frames.md lost its measured block"
    return match.group(1)


def _number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


def test_the_binary_frame_figures_are_what_the_script_measures() -> None:
    documented = table_rows(_measured_block())
    measured = table_rows(frame_size_script().render_tables())
    assert len(documented) == len(measured) >= 15
    for doc_row, new_row in zip(documented, measured, strict=True):
        if "deflate" in doc_row[0]:  # zlib builds may differ by a few bytes
            assert doc_row[0] == new_row[0]
            assert math.isclose(_number(doc_row[1]), _number(new_row[1]), rel_tol=0.05)
        else:
            assert doc_row == new_row
    assert "Stream of" in _measured_block()


def test_the_binary_layout_loses_only_float32_rounding() -> None:
    script = frame_size_script()
    events = [e for frame in script.sample_frames().values() for e in frame]
    events += [e for frame in script.sample_stream() for e in frame]
    for event in events:
        data = script.pack(event)
        back = script.unpack(data)
        assert _close(attrs.asdict(back), attrs.asdict(event)), event
    text = _read(BINARY)
    for layout in (script.UPDATE_HEAD, script.FIELD_HEAD):
        assert f"`{layout.format}`, {layout.size} bytes" in text
    assert f"{script.BATCH_HEAD.size}-byte header" in text


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
    return bool(a == b)


# --- version, changelog, README, links ------------------------------------------------------


def test_the_version_lives_in_one_place() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", wirthforge_trio.__version__)
    pyproject = tomllib.loads(_read(ROOT / "pyproject.toml"))
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    attr = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "wirthforge_trio.version.__version__"
    assert f"version {wirthforge_trio.__version__} of the server" in _read(PROTOCOL)


def test_the_changelog_has_unreleased_then_the_current_version() -> None:
    headings = re.findall(r"^## \[([^\]]+)\](.*)$", _read(ROOT / "CHANGELOG.md"), re.MULTILINE)
    assert headings[0][0] == "Unreleased"
    version, rest = headings[1]
    assert version == wirthforge_trio.__version__
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", rest)


def test_the_readme_keeps_its_commands_and_links_every_document() -> None:
    readme = _read(ROOT / "README.md")
    run = ".venv/bin/pip install -q -e . && .venv/bin/wirthforge serve"
    test = "python3 -m venv .venv && .venv/bin/pip install -q nox && .venv/bin/nox"
    assert f"python3 -m venv .venv && {run}" in readme
    assert test in readme and test in _read(ROOT / ".ci" / "run")
    targets = set(re.findall(r"\]\(([^)#]+)", readme))
    wanted = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    wanted |= {"docs/asyncapi.yaml", "CHANGELOG.md", "schemas/", "diagrams/"}
    assert wanted <= targets, f"the README does not link {sorted(wanted - targets)}"
    assert len(readme.splitlines()) <= 80, "the README should stay short"


def _slug(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", _without_code_blocks(_read(path)), re.MULTILINE)
    return {_slug(h) for h in headings}


def test_every_relative_link_and_anchor_resolves() -> None:
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "diagrams" / "README.md"]
    pages += sorted(DOCS.glob("*.md"))
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", _without_code_blocks(_read(page))):
            if re.match(r"[a-z]+:", target):
                continue
            location, _, anchor = target.partition("#")
            path = (page.parent / location).resolve() if location else page
            assert path.exists(), f"{page.name}: broken link {target}"
            if anchor:
                assert anchor in _anchors(path), f"{page.name}: no anchor #{anchor} in {path.name}"
            checked += 1
    assert checked >= 40


def test_every_test_file_a_document_names_exists() -> None:
    """Documents, code comments and the nox sessions name test files by path; a file moved to
    another group folder (tests/unit/, tests/e2e/, tests/system/) must be followed there."""
    pages = [ROOT / "README.md", ROOT / "noxfile.py", ROOT / "pyproject.toml", ASYNCAPI]
    pages += sorted(DOCS.rglob("*.md")) + sorted((ROOT / "diagrams").glob("*.*"))
    pages += sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    named = {
        (page, path)
        for page in pages
        if page.suffix in {".md", ".py", ".toml", ".yaml", ".mmd"}
        for path in re.findall(r"(?<![\w/])tests/[\w/]+\.py", _read(page))
    }
    assert len(named) >= 30, "the pattern no longer finds the test files the documents name"
    missing = sorted(
        f"{page.relative_to(ROOT)}: {path}" for page, path in named if not (ROOT / path).exists()
    )
    assert not missing, f"these name test files that do not exist: {missing}"
