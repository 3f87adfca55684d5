"""The wire contract: encoding, both schemas, the checked-in schema files, client decoding."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.paths import PUBLISHED_SCHEMA, ROOT
from wirthforge_trio.contract import codec, schema
from wirthforge_trio.contract.events import (
    CHANNELS,
    EXTENSION_EVENTS,
    FRAME_RATE,
    STANDARD_EVENTS,
    ChannelsPayload,
    EnergyDistribution,
    EnergyField,
    EnergyFieldPayload,
    EnergyUpdate,
    EnergyUpdatePayload,
    ErrorEvent,
    ErrorPayload,
    Event,
    FieldPoint,
    Heartbeat,
    HeartbeatPayload,
    HeartbeatResponse,
    HeartbeatResponsePayload,
    InterferenceEvent,
    InterferencePayload,
    ModelStatus,
    ModelStatusPayload,
    Ping,
    Pong,
    ResonanceEvent,
    ResonancePayload,
    RewardEvent,
    RewardPayload,
    StartupComplete,
    StartupCompletePayload,
    StateSnapshot,
    Subscribe,
    Subscriptions,
    SubscriptionsPayload,
    TokenStream,
    TokenStreamPayload,
    Unsubscribe,
)

FRAMED_TYPES = {"energy_update", "energy_field", "interference_event", "resonance_event"}
CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
TS = 1_726_000_000_123


# -- validators -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> jsonschema.Draft7Validator:
    generated = schema.server_schema()
    jsonschema.Draft7Validator.check_schema(generated)
    return jsonschema.Draft7Validator(generated)


@pytest.fixture(scope="module")
def published_schema() -> dict[str, Any]:
    if not PUBLISHED_SCHEMA.exists():
        pytest.skip(f"published contract not found at {PUBLISHED_SCHEMA}")
    loaded: dict[str, Any] = json.loads(PUBLISHED_SCHEMA.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def published(published_schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    jsonschema.Draft7Validator.check_schema(published_schema)
    return jsonschema.Draft7Validator(published_schema)


def errors_of(validator: jsonschema.Draft7Validator, message: Any) -> list[str]:
    return [e.message for e in validator.iter_errors(message)]


# -- the nine standard events, each with optional fields present and absent ----------------

# (id, event, the exact wire dict it must encode to)
CASES: list[tuple[str, Event, dict[str, Any]]] = [
    (
        "startup_complete-full",
        StartupComplete(
            timestamp=TS,
            payload=StartupCompletePayload(
                model="qwen3-0_6b",
                tier="Mid-Tier",
                version="0.1.0",
                capabilities=("visualization", "council"),
            ),
        ),
        {
            "type": "startup_complete",
            "channel": "system",
            "timestamp": TS,
            "payload": {
                "model": "qwen3-0_6b",
                "tier": "Mid-Tier",
                "version": "0.1.0",
                "frameRate": 60,
                "capabilities": ["visualization", "council"],
            },
        },
    ),
    (
        "startup_complete-minimal",
        StartupComplete(
            timestamp=TS,
            payload=StartupCompletePayload(model="demo", tier="Low-Tier", version="1.20.3"),
        ),
        {
            "type": "startup_complete",
            "channel": "system",
            "timestamp": TS,
            "payload": {
                "model": "demo",
                "tier": "Low-Tier",
                "version": "1.20.3",
                "frameRate": 60,
                "capabilities": [],
            },
        },
    ),
    (
        "energy_update-full",
        EnergyUpdate(
            timestamp=TS,
            frame_number=4321,
            payload=EnergyUpdatePayload(
                total_energy=12.3,
                delta_energy=0.2,
                tokens_generated=2,
                processing_time=0.8125,
                model_id="demo",
                energy_distribution=EnergyDistribution(
                    generation=0.12, attention=0.05, reasoning=0.03
                ),
            ),
        ),
        {
            "type": "energy_update",
            "channel": "energy",
            "timestamp": TS,
            "frameNumber": 4321,
            "payload": {
                "totalEnergy": 12.3,
                "deltaEnergy": 0.2,
                "tokensGenerated": 2,
                "processingTime": 0.8125,
                "modelId": "demo",
                "energyDistribution": {"generation": 0.12, "attention": 0.05, "reasoning": 0.03},
            },
        },
    ),
    (
        "energy_update-partial-distribution",
        EnergyUpdate(
            timestamp=TS,
            frame_number=0,
            payload=EnergyUpdatePayload(
                total_energy=0.0,
                delta_energy=0.0,
                tokens_generated=0,
                processing_time=16.67,
                model_id="demo",
                energy_distribution=EnergyDistribution(attention=0.5),
            ),
        ),
        {
            "type": "energy_update",
            "channel": "energy",
            "timestamp": TS,
            "frameNumber": 0,
            "payload": {
                "totalEnergy": 0.0,
                "deltaEnergy": 0.0,
                "tokensGenerated": 0,
                "processingTime": 16.67,
                "modelId": "demo",
                "energyDistribution": {"attention": 0.5},
            },
        },
    ),
    (
        "energy_update-minimal",
        EnergyUpdate(
            timestamp=TS,
            frame_number=7,
            payload=EnergyUpdatePayload(
                total_energy=3.4,
                delta_energy=-0.1,
                tokens_generated=0,
                processing_time=0.0,
                model_id="qwen3-0_6b",
            ),
        ),
        {
            "type": "energy_update",
            "channel": "energy",
            "timestamp": TS,
            "frameNumber": 7,
            "payload": {
                "totalEnergy": 3.4,
                "deltaEnergy": -0.1,
                "tokensGenerated": 0,
                "processingTime": 0.0,
                "modelId": "qwen3-0_6b",
            },
        },
    ),
    (
        "energy_field",
        EnergyField(
            timestamp=TS,
            frame_number=99,
            payload=EnergyFieldPayload(
                field_type="lightning",
                intensity=0.7321,
                coordinates=(
                    FieldPoint(x=0.0, y=0.61, energy=0.61),
                    FieldPoint(x=0.5, y=0.7, energy=0.7),
                    FieldPoint(x=1.0, y=0.7321, energy=0.7321),
                ),
                model_id="demo",
            ),
        ),
        {
            "type": "energy_field",
            "channel": "energy",
            "timestamp": TS,
            "frameNumber": 99,
            "payload": {
                "fieldType": "lightning",
                "intensity": 0.7321,
                "coordinates": [
                    {"x": 0.0, "y": 0.61, "energy": 0.61},
                    {"x": 0.5, "y": 0.7, "energy": 0.7},
                    {"x": 1.0, "y": 0.7321, "energy": 0.7321},
                ],
                "modelId": "demo",
            },
        },
    ),
    (
        "energy_field-empty-coordinates",
        EnergyField(
            timestamp=TS,
            frame_number=1,
            payload=EnergyFieldPayload(
                field_type="stream", intensity=0.0, coordinates=(), model_id="demo"
            ),
        ),
        {
            "type": "energy_field",
            "channel": "energy",
            "timestamp": TS,
            "frameNumber": 1,
            "payload": {
                "fieldType": "stream",
                "intensity": 0.0,
                "coordinates": [],
                "modelId": "demo",
            },
        },
    ),
    (
        "token_stream-full",
        TokenStream(
            timestamp=TS,
            payload=TokenStreamPayload(
                tokens=("Light", " is", " energy", "."),
                is_complete=False,
                session_id="s-0123456789abcdef",
                model_id="demo",
                energy_cost=0.4,
            ),
        ),
        {
            "type": "token_stream",
            "channel": "experience",
            "timestamp": TS,
            "payload": {
                "tokens": ["Light", " is", " energy", "."],
                "isComplete": False,
                "sessionId": "s-0123456789abcdef",
                "modelId": "demo",
                "energyCost": 0.4,
            },
        },
    ),
    (
        "token_stream-minimal",
        TokenStream(
            timestamp=TS,
            payload=TokenStreamPayload(
                tokens=(), is_complete=True, session_id="s-1", model_id="demo"
            ),
        ),
        {
            "type": "token_stream",
            "channel": "experience",
            "timestamp": TS,
            "payload": {
                "tokens": [],
                "isComplete": True,
                "sessionId": "s-1",
                "modelId": "demo",
            },
        },
    ),
    (
        "interference_event",
        InterferenceEvent(
            timestamp=TS,
            frame_number=600,
            payload=InterferencePayload(
                pattern_type="constructive",
                models=("demo", "qwen3-0_6b"),
                intensity=0.82,
                coherence_score=0.91,
            ),
        ),
        {
            "type": "interference_event",
            "channel": "council",
            "timestamp": TS,
            "frameNumber": 600,
            "payload": {
                "patternType": "constructive",
                "models": ["demo", "qwen3-0_6b"],
                "intensity": 0.82,
                "coherenceScore": 0.91,
            },
        },
    ),
    (
        "resonance_event-full",
        ResonanceEvent(
            timestamp=TS,
            frame_number=601,
            payload=ResonancePayload(
                resonance_type="harmonic",
                frequency=4.5,
                amplitude=0.66,
                participants=("demo", "llama_3", "qwen3-0_6b"),
                phase=90.0,
            ),
        ),
        {
            "type": "resonance_event",
            "channel": "council",
            "timestamp": TS,
            "frameNumber": 601,
            "payload": {
                "resonanceType": "harmonic",
                "frequency": 4.5,
                "amplitude": 0.66,
                "participants": ["demo", "llama_3", "qwen3-0_6b"],
                "phase": 90.0,
            },
        },
    ),
    (
        "resonance_event-minimal",
        ResonanceEvent(
            timestamp=TS,
            frame_number=602,
            payload=ResonancePayload(
                resonance_type="overtone",
                frequency=0.0,
                amplitude=1.0,
                participants=("a", "b"),
            ),
        ),
        {
            "type": "resonance_event",
            "channel": "council",
            "timestamp": TS,
            "frameNumber": 602,
            "payload": {
                "resonanceType": "overtone",
                "frequency": 0.0,
                "amplitude": 1.0,
                "participants": ["a", "b"],
            },
        },
    ),
    (
        "reward_event-full",
        RewardEvent(
            timestamp=TS,
            payload=RewardPayload(
                reward_type="level_up",
                title="Steady Current",
                points=250,
                description="Kept a model flowing for a whole minute.",
                level=3,
                energy_bonus=5.0,
            ),
        ),
        {
            "type": "reward_event",
            "channel": "reward",
            "timestamp": TS,
            "payload": {
                "rewardType": "level_up",
                "title": "Steady Current",
                "points": 250,
                "description": "Kept a model flowing for a whole minute.",
                "level": 3,
                "energyBonus": 5.0,
            },
        },
    ),
    (
        "reward_event-minimal",
        RewardEvent(
            timestamp=TS,
            payload=RewardPayload(reward_type="feedback", title="Nice", points=0),
        ),
        {
            "type": "reward_event",
            "channel": "reward",
            "timestamp": TS,
            "payload": {"rewardType": "feedback", "title": "Nice", "points": 0},
        },
    ),
    (
        "heartbeat-full",
        Heartbeat(
            timestamp=TS,
            payload=HeartbeatPayload(
                sequence=41, server_time=TS, frame_rate=59.94, connection_id="c-7f3a"
            ),
        ),
        {
            "type": "heartbeat",
            "channel": "system",
            "timestamp": TS,
            "payload": {
                "sequence": 41,
                "serverTime": TS,
                "frameRate": 59.94,
                "connectionId": "c-7f3a",
            },
        },
    ),
    (
        "heartbeat-minimal",
        Heartbeat(timestamp=TS, payload=HeartbeatPayload(sequence=0, server_time=TS)),
        {
            "type": "heartbeat",
            "channel": "system",
            "timestamp": TS,
            "payload": {"sequence": 0, "serverTime": TS},
        },
    ),
    (
        "error_event-full",
        ErrorEvent(
            timestamp=TS,
            payload=ErrorPayload(
                severity="error",
                code="MODEL_ERROR",
                message="model demo stopped: connection reset",
                component="model",
                details={"sessionId": "s-1", "modelId": "demo", "retry_after": None},
                recoverable=True,
            ),
        ),
        {
            "type": "error_event",
            "channel": "system",
            "timestamp": TS,
            "payload": {
                "severity": "error",
                "code": "MODEL_ERROR",
                "message": "model demo stopped: connection reset",
                "component": "model",
                "details": {"sessionId": "s-1", "modelId": "demo", "retry_after": None},
                "recoverable": True,
            },
        },
    ),
    (
        "error_event-minimal",
        ErrorEvent(
            timestamp=TS,
            payload=ErrorPayload(severity="info", code="E1", message="", component="orchestrator"),
        ),
        {
            "type": "error_event",
            "channel": "system",
            "timestamp": TS,
            "payload": {
                "severity": "info",
                "code": "E1",
                "message": "",
                "component": "orchestrator",
            },
        },
    ),
]
CASE_IDS = [c[0] for c in CASES]


def test_cases_cover_all_nine_standard_events() -> None:
    assert len(STANDARD_EVENTS) == 9
    assert {type(event) for _, event, _ in CASES} == set(STANDARD_EVENTS)


@pytest.mark.parametrize(("name", "event", "wire"), CASES, ids=CASE_IDS)
def test_encodes_to_the_exact_wire_shape(name: str, event: Event, wire: dict[str, Any]) -> None:
    text = codec.encode(event)
    assert isinstance(text, str)
    assert json.loads(text) == wire
    assert codec.to_wire(event) == wire


@pytest.mark.parametrize(("name", "event", "wire"), CASES, ids=CASE_IDS)
def test_envelope_keys(name: str, event: Event, wire: dict[str, Any]) -> None:
    message = json.loads(codec.encode(event))
    expected = ["type", "channel", "timestamp", "payload"]
    if event.TYPE in FRAMED_TYPES:
        expected.insert(3, "frameNumber")
    assert sorted(message) == sorted(expected)
    assert message["type"] == event.TYPE
    assert message["channel"] == event.CHANNEL
    assert message["channel"] in CHANNELS
    assert isinstance(message["timestamp"], int)


def _keys(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, key) of nested objects, skipping error details (free-form content)."""
    out: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            out.append((path, key))
            if key != "details":
                out.extend(_keys(inner, f"{path}.{key}"))
    elif isinstance(value, list):
        for item in value:
            out.extend(_keys(item, path))
    return out


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_has_null(v) for k, v in value.items() if k != "details")
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    return False


@pytest.mark.parametrize(("name", "event", "wire"), CASES, ids=CASE_IDS)
def test_field_names_are_camel_case_and_nulls_are_omitted(
    name: str, event: Event, wire: dict[str, Any]
) -> None:
    message = json.loads(codec.encode(event))
    bad = [f"{path}.{key}" for path, key in _keys(message) if not CAMEL.match(key)]
    assert bad == []
    assert not _has_null(message)


@pytest.mark.parametrize(("name", "event", "wire"), CASES, ids=CASE_IDS)
def test_validates_against_project_schema(
    name: str, event: Event, wire: dict[str, Any], project: jsonschema.Draft7Validator
) -> None:
    assert errors_of(project, json.loads(codec.encode(event))) == []


@pytest.mark.parametrize(("name", "event", "wire"), CASES, ids=CASE_IDS)
def test_validates_against_published_schema(
    name: str, event: Event, wire: dict[str, Any], published: jsonschema.Draft7Validator
) -> None:
    assert errors_of(published, json.loads(codec.encode(event))) == []


def test_omitted_optionals_are_really_absent() -> None:
    minimal = {name: json.loads(codec.encode(event)) for name, event, _ in CASES}
    assert "energyDistribution" not in minimal["energy_update-minimal"]["payload"]
    assert "energyCost" not in minimal["token_stream-minimal"]["payload"]
    assert "phase" not in minimal["resonance_event-minimal"]["payload"]
    reward = minimal["reward_event-minimal"]["payload"]
    assert not {"description", "level", "energyBonus"} & set(reward)
    heartbeat = minimal["heartbeat-minimal"]["payload"]
    assert not {"frameRate", "connectionId"} & set(heartbeat)
    error = minimal["error_event-minimal"]["payload"]
    assert not {"details", "recoverable"} & set(error)
    distribution = minimal["energy_update-partial-distribution"]["payload"]
    assert distribution["energyDistribution"] == {"attention": 0.5}


@pytest.mark.parametrize(
    "capabilities",
    [(), ("council",), ("council", "turbo", "visualization", "plugins")],
)
def test_startup_complete_always_carries_capabilities_and_frame_rate_60(
    capabilities: tuple[Any, ...],
) -> None:
    event = StartupComplete(
        timestamp=TS,
        payload=StartupCompletePayload(
            model="demo", tier="High-Tier", version="0.1.0", capabilities=capabilities
        ),
    )
    payload = json.loads(codec.encode(event))["payload"]
    assert payload["capabilities"] == list(capabilities)
    assert payload["frameRate"] == 60 == FRAME_RATE
    default = StartupCompletePayload(model="demo", tier="High-Tier", version="0.1.0")
    default_wire = codec.to_wire(StartupComplete(timestamp=TS, payload=default))
    assert default_wire["payload"]["capabilities"] == []
    assert default_wire["payload"]["frameRate"] == 60


def test_startup_complete_never_sends_null_capabilities() -> None:
    # Browsers read `capabilities` unconditionally: a None that slips in must be refused
    # (at construction or encoding), never sent as null, which neither schema accepts.
    try:
        event = StartupComplete(
            timestamp=TS,
            payload=StartupCompletePayload(
                model="demo",
                tier="Low-Tier",
                version="0.1.0",
                capabilities=None,  # type: ignore[arg-type]
            ),
        )
        text = codec.encode(event)
    except (TypeError, ValueError):
        return
    capabilities = json.loads(text)["payload"].get("capabilities")
    assert isinstance(capabilities, list), f"capabilities sent as {capabilities!r}"


def test_project_schema_rejects_null_capabilities(project: jsonschema.Draft7Validator) -> None:
    message = codec.to_wire(CASES[1][1])
    assert project.is_valid(message)
    message["payload"]["capabilities"] = None
    assert not project.is_valid(message)


# -- extension events --------------------------------------------------------------------

EXTENSIONS: list[Event] = [
    Pong(timestamp=TS, payload={"id": 7, "sentAt": 1234.5}),
    Pong(timestamp=TS, payload={}),
    Subscriptions(timestamp=TS, payload=SubscriptionsPayload(channels=("energy", "system"))),
    ModelStatus(
        timestamp=TS,
        payload=ModelStatusPayload(
            model_id="qwen3-0_6b", name="qwen3:0.6b", source="ollama", status="ready"
        ),
    ),
    ModelStatus(
        timestamp=TS,
        payload=ModelStatusPayload(
            model_id="demo", name="demo", source="demo", status="unavailable", message="down"
        ),
    ),
]


def test_extensions_are_pong_subscriptions_model_status_and_snapshot() -> None:
    assert set(EXTENSION_EVENTS) == {Pong, Subscriptions, ModelStatus, StateSnapshot}
    assert ModelStatus.TOPIC == "models"
    assert all(not cls.STANDARD for cls in EXTENSION_EVENTS)
    assert all(cls.STANDARD for cls in STANDARD_EVENTS)


@pytest.mark.parametrize("event", EXTENSIONS, ids=lambda e: e.TYPE)
def test_extension_events_validate_against_project_schema(
    event: Event, project: jsonschema.Draft7Validator
) -> None:
    message = json.loads(codec.encode(event))
    assert sorted(message) == ["channel", "payload", "timestamp", "type"]
    assert message["channel"] == "system"
    assert errors_of(project, message) == []


@pytest.mark.parametrize("event", EXTENSIONS, ids=lambda e: e.TYPE)
def test_extension_events_are_not_in_the_published_contract(
    event: Event, published: jsonschema.Draft7Validator
) -> None:
    assert not published.is_valid(json.loads(codec.encode(event)))


def test_pong_echoes_its_payload_verbatim() -> None:
    payload = {"id": 7, "nested": {"a": [1, 2, None]}, "snake_case": True}
    message = json.loads(codec.encode(Pong(timestamp=TS, payload=payload)))
    assert message["type"] == "pong"
    assert message["payload"] == payload


def test_project_schema_rejects_messages_no_event_matches(
    project: jsonschema.Draft7Validator,
) -> None:
    good = json.loads(codec.encode(CASES[-1][1]))
    assert project.is_valid(good)
    assert not project.is_valid({**good, "type": "state_snapshot"})
    assert not project.is_valid({**good, "channel": "energy"})
    assert not project.is_valid({**good, "extra": 1})
    assert not project.is_valid({**good, "payload": {**good["payload"], "code": "lower"}})


# -- the checked-in schema files ---------------------------------------------------------


def test_checked_in_schemas_are_up_to_date() -> None:
    directory = ROOT / "schemas"
    generated = schema.generated_files()
    assert set(generated) == {schema.SERVER_SCHEMA_FILE, schema.CLIENT_SCHEMA_FILE}
    stale = [
        name
        for name, text in generated.items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != text
    ]
    assert not stale, (
        f"schemas/ is stale ({', '.join(stale)} differ from the contract classes): "
        "run `wirthforge schema` to regenerate them and commit the result"
    )
    on_disk = {p.name for p in directory.glob("*.schema.json")}
    assert on_disk == set(generated), (
        f"unexpected schema files in schemas/: {sorted(on_disk - set(generated))}; "
        "run `wirthforge schema`"
    )


def test_generated_schemas_are_valid_draft7_and_name_every_event() -> None:
    server = schema.server_schema()
    client = schema.client_schema()
    jsonschema.Draft7Validator.check_schema(server)
    jsonschema.Draft7Validator.check_schema(client)
    assert server["$schema"] == client["$schema"] == "http://json-schema.org/draft-07/schema#"
    types = {
        d["properties"]["type"]["const"]
        for d in server["definitions"].values()
        if "properties" in d
    }
    assert types == {cls.TYPE for cls in STANDARD_EVENTS + EXTENSION_EVENTS}
    assert json.loads(schema.render(server)) == server
    assert schema.render(server).endswith("\n")


def test_write_produces_the_generated_files(tmp_path: Path) -> None:
    written = schema.write(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(schema.generated_files())
    for path in written:
        assert path.read_text(encoding="utf-8") == schema.generated_files()[path.name]


# -- the project schema accepts what the published one accepts -----------------------------

MODEL_IDS = ["demo", "qwen3-0_6b", "llama_3", "M", "a-b_c-9"]
CAPABILITIES = ["council", "turbo", "visualization", "plugins"]
TEXTS = ["", " ", "Hello", " world", "\n", "naïve", "漢字", "🙂", '"quoted"', "\\"]


def _unit(r: random.Random) -> float | int:
    return r.choice([0, 1, 0.0, 1.0, 0.5, r.random()])


def _non_negative(r: random.Random) -> float | int:
    return r.choice([0, 0.0, 0.1, r.uniform(0, 1e6), r.randint(0, 10_000)])


def _maybe(r: random.Random, payload: dict[str, Any], key: str, value: Any) -> None:
    if r.random() < 0.5:
        payload[key] = value


def _payload(kind: str, r: random.Random) -> dict[str, Any]:
    p: dict[str, Any]
    if kind == "startup_complete":
        p = {
            "model": r.choice(MODEL_IDS),
            "tier": r.choice(["Low-Tier", "Mid-Tier", "High-Tier"]),
            "version": f"{r.randint(0, 20)}.{r.randint(0, 99)}.{r.randint(0, 999)}",
            "frameRate": r.choice([60, 60.0]),
        }
        _maybe(r, p, "capabilities", r.sample(CAPABILITIES, r.randint(0, 4)))
    elif kind == "energy_update":
        p = {
            "totalEnergy": _non_negative(r),
            "deltaEnergy": r.choice([0, -0.1, 0.3, r.uniform(-100, 100)]),
            "tokensGenerated": r.randint(0, 400),
            "processingTime": r.choice([0, 16.67, 8, r.uniform(0, 16.67)]),
            "modelId": r.choice(MODEL_IDS),
        }
        keys = r.sample(["generation", "attention", "reasoning"], r.randint(0, 3))
        _maybe(r, p, "energyDistribution", {k: _non_negative(r) for k in keys})
    elif kind == "energy_field":
        p = {
            "fieldType": r.choice(["lightning", "stream", "interference", "resonance"]),
            "intensity": _unit(r),
            "coordinates": [
                {"x": r.uniform(-50, 50), "y": r.uniform(-50, 50), "energy": _non_negative(r)}
                for _ in range(r.randint(0, 8))
            ],
            "modelId": r.choice(MODEL_IDS),
        }
    elif kind == "token_stream":
        p = {
            "tokens": [r.choice(TEXTS) for _ in range(r.randint(0, 6))],
            "isComplete": r.choice([True, False]),
            "sessionId": r.choice(["s-1", "", "session with spaces", "s-" + "f" * 32]),
            "modelId": r.choice(MODEL_IDS),
        }
        _maybe(r, p, "energyCost", _non_negative(r))
    elif kind == "interference_event":
        p = {
            "patternType": r.choice(["constructive", "destructive", "neutral"]),
            "models": r.sample(MODEL_IDS, r.randint(2, 5)),
            "intensity": _unit(r),
            "coherenceScore": _unit(r),
        }
    elif kind == "resonance_event":
        p = {
            "resonanceType": r.choice(["harmonic", "fundamental", "overtone"]),
            "frequency": _non_negative(r),
            "amplitude": _unit(r),
            "participants": [r.choice(MODEL_IDS) for _ in range(r.randint(2, 4))],
        }
        _maybe(r, p, "phase", r.choice([0, 360, 180.5, r.uniform(0, 360)]))
    elif kind == "reward_event":
        p = {
            "rewardType": r.choice(["achievement", "milestone", "feedback", "level_up"]),
            "title": r.choice(["", "T", "x" * 100, "Ä" * 100, "First Flow"]),
            "points": r.choice([0, 1, r.randint(0, 10**9)]),
        }
        _maybe(r, p, "description", r.choice(["", "d" * 500, "Kept the flow."]))
        _maybe(r, p, "level", r.choice([1, 2, 3, 4, 5]))
        _maybe(r, p, "energyBonus", _non_negative(r))
    elif kind == "heartbeat":
        p = {"sequence": r.choice([0, 1, r.randint(0, 2**40)]), "serverTime": TS + r.randint(0, 9)}
        _maybe(r, p, "frameRate", r.choice([60, 59.94, 0, 120.0, -1.5]))
        _maybe(r, p, "connectionId", r.choice(["c-1", "", "5f0e-aa"]))
    elif kind == "error_event":
        p = {
            "severity": r.choice(["info", "warning", "error", "critical"]),
            "code": r.choice(["E", "MODEL_ERROR", "INVALID_FIELD", "404", "A_1_B"]),
            "message": r.choice(["", "boom", "m" * 1000, "ünïcode"]),
            "component": r.choice(["orchestrator", "decipher", "websocket", "model", "ui"]),
        }
        _maybe(r, p, "details", r.choice([{}, {"a": 1}, {"nested": {"x": [None, True]}}]))
        _maybe(r, p, "recoverable", r.choice([True, False]))
    else:  # pragma: no cover - the list below names every kind
        raise AssertionError(kind)
    return p


STANDARD_TYPES = {cls.TYPE: cls for cls in STANDARD_EVENTS}


def _message(kind: str, r: random.Random) -> dict[str, Any]:
    m: dict[str, Any] = {
        "type": kind,
        "channel": STANDARD_TYPES[kind].CHANNEL,
        "timestamp": r.choice([0, TS, 2**53]),
    }
    if kind in FRAMED_TYPES:
        m["frameNumber"] = r.choice([0, 1, r.randint(0, 10**7)])
    m["payload"] = _payload(kind, r)
    return m


def _invalid_variants(kind: str, m: dict[str, Any], required: list[str]) -> list[dict[str, Any]]:
    """Messages the published schema must reject: one thing wrong each."""
    out = [
        {**m, "extra": 1},
        {**m, "timestamp": -1},
        {**m, "timestamp": 1.5},
        {**m, "channel": "bogus"},
        {**m, "payload": {**m["payload"], "unexpectedField": 1}},
        {k: v for k, v in m.items() if k != "payload"},
        {**m, "payload": []},
    ]
    for key in required:
        out.append({**m, "payload": {k: v for k, v in m["payload"].items() if k != key}})
    if kind in FRAMED_TYPES:
        out.append({k: v for k, v in m.items() if k != "frameNumber"})
        out.append({**m, "frameNumber": -1})
    else:
        out.append({**m, "frameNumber": 1})
    bad_values: dict[str, list[tuple[str, Any]]] = {
        "startup_complete": [
            ("frameRate", 30),
            ("version", "1.0"),
            ("tier", "Ultra-Tier"),
            ("model", "qwen3:0.6b"),
            ("capabilities", ["warp"]),
        ],
        "energy_update": [
            ("processingTime", 16.68),
            ("processingTime", -0.01),
            ("tokensGenerated", 1.5),
            ("totalEnergy", -0.1),
            ("energyDistribution", {"generation": -1}),
        ],
        "energy_field": [
            ("intensity", 1.0001),
            ("intensity", -0.1),
            ("fieldType", "wave"),
            ("coordinates", [{"x": 0, "y": 0}]),
            ("coordinates", [{"x": 0, "y": 0, "energy": -1}]),
        ],
        "token_stream": [
            ("tokens", [1]),
            ("isComplete", "yes"),
            ("energyCost", -1),
            ("modelId", "has space"),
        ],
        "interference_event": [
            ("models", ["demo"]),
            ("coherenceScore", 1.5),
            ("patternType", "chaotic"),
        ],
        "resonance_event": [
            ("phase", 360.5),
            ("amplitude", 2),
            ("participants", ["a"]),
            ("frequency", -1),
        ],
        "reward_event": [
            ("title", "x" * 101),
            ("description", "d" * 501),
            ("level", 0),
            ("level", 6),
            ("points", -1),
            ("level", 2.5),
        ],
        "heartbeat": [("sequence", -1), ("serverTime", 1.5), ("connectionId", 5)],
        "error_event": [
            ("code", "model_error"),
            ("message", "m" * 1001),
            ("severity", "fatal"),
            ("component", "gpu"),
            ("recoverable", "yes"),
        ],
    }
    for key, value in bad_values[kind]:
        out.append({**m, "payload": {**m["payload"], key: value}})
    return out


def _only(full: dict[str, Any], section: str, kind: str) -> jsonschema.Draft7Validator:
    """The same schema document restricted to the one branch for ``kind``.

    Every variant keeps its ``type``, so all other branches of ``oneOf`` reject it anyway;
    checking the one branch gives the same verdict as the whole schema, about ten times faster.
    """
    name = next(n for n, d in full[section].items() if _type_const(d) == kind)
    return jsonschema.Draft7Validator({**full, "oneOf": [{"$ref": f"#/{section}/{name}"}]})


def _type_const(definition: dict[str, Any]) -> Any:
    return definition.get("properties", {}).get("type", {}).get("const")


@pytest.mark.parametrize("kind", sorted(STANDARD_TYPES))
def test_project_schema_agrees_with_published_schema(
    kind: str,
    project: jsonschema.Draft7Validator,
    published: jsonschema.Draft7Validator,
    published_schema: dict[str, Any],
) -> None:
    r = random.Random(f"wf-003-{kind}")
    definition = next(d for d in published_schema["schemas"].values() if _type_const(d) == kind)
    required = definition["properties"]["payload"]["required"]
    published_one = _only(published_schema, "schemas", kind)
    project_one = _only(schema.server_schema(), "definitions", kind)
    valid_seen = invalid_seen = 0
    for i in range(40):
        message = _message(kind, r)
        assert errors_of(published, message) == [], message  # the generator is sound
        assert errors_of(project, message) == [], message
        valid_seen += 1
        if i % 8:
            continue
        for variant in _invalid_variants(kind, message, required):
            assert not published_one.is_valid(variant), variant
            assert not project_one.is_valid(variant), variant
            invalid_seen += 1
    assert valid_seen == 40
    assert invalid_seen > 5 * 10
    # the single-branch validators agree with the full ones on a valid message
    assert published_one.is_valid(message) and project_one.is_valid(message)


@pytest.mark.parametrize("seed", range(5))
def test_randomly_built_events_encode_to_valid_messages(
    seed: int, project: jsonschema.Draft7Validator, published: jsonschema.Draft7Validator
) -> None:
    """Events built from the classes (not raw dicts) round-trip through both schemas."""
    r = random.Random(seed)
    for kind, cls in STANDARD_TYPES.items():
        wire = _message(kind, r)
        event = codec.converter.structure(
            {k: v for k, v in wire.items() if k in ("timestamp", "frameNumber", "payload")},
            cls,
        )
        message = json.loads(codec.encode(event))
        assert errors_of(published, message) == [], message
        assert errors_of(project, message) == [], message
        assert message["payload"].keys() <= wire["payload"].keys() | {"capabilities"}


# -- decoding client messages ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"type": "heartbeat_response",'
            ' "payload": {"sequence": 3, "clientTime": 1726000000999}}',
            HeartbeatResponse(
                payload=HeartbeatResponsePayload(sequence=3, client_time=1_726_000_000_999)
            ),
        ),
        ('{"type": "heartbeat_response"}', HeartbeatResponse()),
        (
            '{"type": "heartbeat_response", "timestamp": 5, "payload": {}}',
            HeartbeatResponse(payload=HeartbeatResponsePayload()),
        ),
        (
            '{"type": "subscribe", "payload": {"channels": ["energy", "council"]}}',
            Subscribe(payload=ChannelsPayload(channels=("energy", "council"))),
        ),
        (
            '{"type": "unsubscribe", "payload": {"channels": ["reward"]}}',
            Unsubscribe(payload=ChannelsPayload(channels=("reward",))),
        ),
        ('{"type": "ping"}', Ping(payload={})),
        ('{"type": "ping", "payload": {"id": 9, "t": [1.5]}}', Ping(payload={"id": 9, "t": [1.5]})),
    ],
)
def test_decodes_valid_client_messages(text: str, expected: Any) -> None:
    assert codec.decode_client_message(text) == expected
    assert codec.decode_client_message(text.encode()) == expected


_NUMBERS = st.one_of(
    st.integers(min_value=-3, max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 7.0, -1.0]),
    st.none(),
    st.text(max_size=3),
)
_HEARTBEAT_LIKE = st.one_of(
    # the plain shape, with every kind of number
    st.builds(
        lambda kind, sequence: {"type": kind, "payload": {"sequence": sequence}},
        st.sampled_from(["heartbeat_response", "heartbeat_response", "ping"]),
        _NUMBERS,
    ),
    # and shapes near it
    st.fixed_dictionaries(
        {"type": st.sampled_from(["heartbeat_response", "ping", "heartbeat"])},
        optional={
            "payload": st.one_of(
                st.dictionaries(
                    st.sampled_from(["sequence", "clientTime", "x"]), _NUMBERS, max_size=3
                ),
                _NUMBERS,
            ),
            "timestamp": _NUMBERS,
            "extra": _NUMBERS,
        },
    ),
)


@settings(max_examples=400)
@given(_HEARTBEAT_LIKE)
def test_the_plain_heartbeat_answer_decodes_as_the_schema_and_cattrs_decode_it(
    obj: dict[str, Any],
) -> None:
    """The shortcut for ``{"type": "heartbeat_response", "payload": {"sequence": n}}`` gives
    what the full check gives, and takes nothing the full check would refuse."""
    text = json.dumps(obj)
    try:
        full: Any = codec._checked(orjson.loads(text), text)  # the parser decode uses
    except codec.ClientMessageError as exc:
        full = (exc.code, exc.message)
    try:
        got: Any = codec.decode_client_message(text)
    except codec.ClientMessageError as exc:
        got = (exc.code, exc.message)
    assert got == full
    assert type(got) is type(full)


@pytest.mark.parametrize(
    ("text", "code", "names"),
    [
        ("{not json", "INVALID_JSON", "JSON"),
        ("", "INVALID_JSON", "JSON"),
        ("[1, 2]", "INVALID_MESSAGE", "object"),
        ('"heartbeat_response"', "INVALID_MESSAGE", "object"),
        ("null", "INVALID_MESSAGE", "object"),
        ('{"payload": {}}', "INVALID_MESSAGE", "type"),
        ('{"type": 5}', "INVALID_MESSAGE", "type"),
        ('{"type": "state_snapshot"}', "UNKNOWN_MESSAGE_TYPE", "state_snapshot"),
        ('{"type": "heartbeat_response", "sequence": 1}', "INVALID_FIELD", "sequence"),
        ('{"type": "ping", "id": 1}', "INVALID_FIELD", "id"),
        (
            '{"type": "heartbeat_response", "payload": {"sequence": "one"}}',
            "INVALID_FIELD",
            "sequence",
        ),
        (
            '{"type": "heartbeat_response", "payload": {"sequence": -1}}',
            "INVALID_FIELD",
            "sequence",
        ),
        (
            '{"type": "heartbeat_response", "payload": {"sequence": 1.5}}',
            "INVALID_FIELD",
            "sequence",
        ),
        (
            '{"type": "heartbeat_response", "payload": {"sequence": true}}',
            "INVALID_FIELD",
            "sequence",
        ),
        (
            '{"type": "heartbeat_response", "payload": {"clientTime": -5}}',
            "INVALID_FIELD",
            "clientTime",
        ),
        (
            '{"type": "heartbeat_response", "payload": {"seq": 1}}',
            "INVALID_FIELD",
            "seq",
        ),
        ('{"type": "heartbeat_response", "timestamp": -5}', "INVALID_FIELD", "timestamp"),
        ('{"type": "subscribe", "payload": {"models": ["no spaces"]}}', "INVALID_FIELD", "models"),
        ('{"type": "subscribe", "payload": {"channels": "energy"}}', "INVALID_FIELD", "channels"),
        ('{"type": "subscribe", "payload": {"channels": [1]}}', "INVALID_FIELD", "channels"),
        ('{"type": "unsubscribe", "payload": {"channels": "energy"}}', "INVALID_FIELD", "channels"),
        (
            '{"type": "resume", "payload": {"sessions": [{"tokens": 3}]}}',
            "INVALID_FIELD",
            "sessionId",
        ),
        ('{"type": "resume", "payload": {"lastFrame": -1}}', "INVALID_FIELD", "lastFrame"),
        ('{"type": "subscribe"}', "INVALID_FIELD", "payload"),
        (
            '{"type": "subscribe", "payload": {"channels": ["energy"], "all": true}}',
            "INVALID_FIELD",
            "all",
        ),
        ('{"type": "ping", "payload": [1]}', "INVALID_FIELD", "payload"),
        ('{"type": "ping", "payload": null}', "INVALID_FIELD", "payload"),
    ],
)
def test_rejects_bad_client_messages(text: str, code: str, names: str) -> None:
    with pytest.raises(codec.ClientMessageError) as info:
        codec.decode_client_message(text)
    error = info.value
    assert error.code == code
    assert names in error.message
    assert str(error) == error.message
    assert re.fullmatch(r"[A-Z0-9_]+", error.code)


def test_unknown_type_is_named_and_truncated() -> None:
    kind = "x" * 500
    with pytest.raises(codec.ClientMessageError) as info:
        codec.decode_client_message(json.dumps({"type": kind}))
    assert info.value.code == "UNKNOWN_MESSAGE_TYPE"
    assert len(info.value.details["type"]) <= 64
    # it tells the client what it may send instead
    for accepted in ("heartbeat_response", "ping", "subscribe", "unsubscribe"):
        assert accepted in info.value.message


def test_extra_top_level_fields_are_listed_in_details() -> None:
    with pytest.raises(codec.ClientMessageError) as info:
        codec.decode_client_message('{"type": "ping", "b": 1, "a": 2}')
    assert info.value.code == "INVALID_FIELD"
    assert info.value.details["fields"] == ["a", "b"]
    assert "payload" in info.value.message


@pytest.mark.parametrize("as_bytes", [False, True], ids=["text", "bytes"])
def test_the_depth_limit_counts_nesting_not_brackets_in_strings(as_bytes: bool) -> None:
    """The depth check is skipped for a message with few brackets; one with many, all in
    strings, is walked and accepted; one nested one level past the limit is refused."""
    shallow = json.dumps({"type": "ping", "payload": {"s": "{[" * 100}})
    message = codec.decode_client_message(shallow.encode() if as_bytes else shallow)
    assert message.payload == {"s": "{[" * 100}
    limit = codec.MAX_CLIENT_DEPTH
    for depth, refused in ((limit - 2, False), (limit - 1, True)):  # two levels on top
        text = '{"type": "ping", "payload": {"deep": ' + "[" * depth + "]" * depth + "}}"
        if refused:
            with pytest.raises(codec.ClientMessageError, match="deeper than"):
                codec.decode_client_message(text.encode() if as_bytes else text)
        else:
            codec.decode_client_message(text.encode() if as_bytes else text)
