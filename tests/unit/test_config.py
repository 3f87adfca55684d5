"""Settings: defaults, WIRTHFORGE_* variables, overrides, checks, and the hardware tier."""

from __future__ import annotations

import pytest

from wirthforge_trio.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENVIRONMENT_VARIABLES,
    Settings,
    SettingsError,
    detect_tier,
)

GIB = 2**30


def test_defaults() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1" == DEFAULT_HOST
    assert settings.port == 8145 == DEFAULT_PORT
    assert settings.models == ("demo",)
    assert settings.tier is None
    assert settings.allowed_origins == ()
    assert 0 < settings.heartbeat_interval < settings.heartbeat_timeout
    assert settings.heartbeat_interval == pytest.approx(1.0)


def test_from_env_with_nothing_set_is_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"WIRTHFORGE_PORT": "", "WIRTHFORGE_MODELS": "  "}) == Settings()


def test_from_env_reads_the_variables() -> None:
    settings = Settings.from_env(
        {
            "WIRTHFORGE_PORT": "9001",
            "WIRTHFORGE_MODELS": "demo",
            "WIRTHFORGE_HEARTBEAT_TIMEOUT": "2.5",
            "WIRTHFORGE_ALLOWED_ORIGINS": "https://app.example, http://localhost:5173 ,",
            "WIRTHFORGE_TIER": "High-Tier",
            "WIRTHFORGE_HOST": "0.0.0.0",
            "UNRELATED": "ignored",
        }
    )
    assert settings.port == 9001
    assert settings.models == ("demo",)
    assert settings.heartbeat_timeout == pytest.approx(2.5)
    assert settings.allowed_origins == ("https://app.example", "http://localhost:5173")
    assert settings.tier == "High-Tier"
    assert settings.host == "0.0.0.0"


def test_models_is_a_comma_separated_list() -> None:
    settings = Settings.from_env({"WIRTHFORGE_MODELS": " demo , demo "})
    assert settings.models == ("demo", "demo")


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENVIRONMENT_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WIRTHFORGE_PORT", "8200")
    assert Settings.from_env().port == 8200


def test_every_setting_has_a_variable() -> None:
    assert "WIRTHFORGE_PORT" in ENVIRONMENT_VARIABLES
    assert "WIRTHFORGE_MODELS" in ENVIRONMENT_VARIABLES
    assert "WIRTHFORGE_HEARTBEAT_TIMEOUT" in ENVIRONMENT_VARIABLES
    assert "WIRTHFORGE_ALLOWED_ORIGINS" in ENVIRONMENT_VARIABLES


def test_explicit_overrides_win_over_the_environment() -> None:
    env = {"WIRTHFORGE_PORT": "9001", "WIRTHFORGE_HEARTBEAT_TIMEOUT": "3"}
    settings = Settings.from_env(env, port=9100, heartbeat_timeout=None)
    assert settings.port == 9100
    assert settings.heartbeat_timeout == pytest.approx(3.0)  # None means "not given"
    settings = Settings.from_env(env, allowed_origins=("https://x.example",))
    assert settings.allowed_origins == ("https://x.example",)
    assert settings.port == 9001


@pytest.mark.parametrize(
    ("env", "mentions"),
    [
        ({"WIRTHFORGE_PORT": "eighty"}, "WIRTHFORGE_PORT"),
        ({"WIRTHFORGE_PORT": "8145.5"}, "WIRTHFORGE_PORT"),
        ({"WIRTHFORGE_HEARTBEAT_TIMEOUT": "soon"}, "WIRTHFORGE_HEARTBEAT_TIMEOUT"),
        ({"WIRTHFORGE_MODELS": "gpt-9"}, "WIRTHFORGE_MODELS"),
        ({"WIRTHFORGE_MODELS": "demo,gpt-9"}, "gpt-9"),
        ({"WIRTHFORGE_MODELS": ","}, "WIRTHFORGE_MODELS"),
        ({"WIRTHFORGE_TIER": "Ultra-Tier"}, "Low-Tier"),
        ({"WIRTHFORGE_HEARTBEAT_INTERVAL": "10"}, "heartbeat"),
        (
            {"WIRTHFORGE_HEARTBEAT_INTERVAL": "5", "WIRTHFORGE_HEARTBEAT_TIMEOUT": "2"},
            "timeout",
        ),
        ({"WIRTHFORGE_PORT": "70000"}, "70000"),
        ({"WIRTHFORGE_PORT": "-1"}, "port"),
        ({"WIRTHFORGE_TOKEN": "too-short"}, "WIRTHFORGE_TOKEN"),
        ({"WIRTHFORGE_TOKEN": "has spaces in it, no good"}, "WIRTHFORGE_TOKEN"),
        ({"WIRTHFORGE_MAX_MESSAGE_RATE": "0"}, "WIRTHFORGE_MAX_MESSAGE_RATE"),
        ({"WIRTHFORGE_MAX_MESSAGE_RATE": "lots"}, "WIRTHFORGE_MAX_MESSAGE_RATE"),
        ({"WIRTHFORGE_RATE_LIMIT_CLOSE_AFTER": "-1"}, "WIRTHFORGE_RATE_LIMIT_CLOSE_AFTER"),
        ({"WIRTHFORGE_MAX_MESSAGE_BURST": "0"}, "WIRTHFORGE_MAX_MESSAGE_BURST"),
        ({"WIRTHFORGE_MAX_CONNECTIONS": "0"}, "WIRTHFORGE_MAX_CONNECTIONS"),
        (
            {"WIRTHFORGE_MAX_CONNECTIONS_PER_ADDRESS": "0"},
            "WIRTHFORGE_MAX_CONNECTIONS_PER_ADDRESS",
        ),
        ({"WIRTHFORGE_MAX_PROMPT_BYTES": "0"}, "WIRTHFORGE_MAX_PROMPT_BYTES"),
        ({"WIRTHFORGE_MAX_SESSIONS": "none"}, "WIRTHFORGE_MAX_SESSIONS"),
        ({"WIRTHFORGE_MAX_SESSIONS": "0"}, "WIRTHFORGE_MAX_SESSIONS"),
    ],
)
def test_bad_values_raise_a_settings_error_that_says_what_to_fix(
    env: dict[str, str], mentions: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert mentions in str(info.value)
    assert isinstance(info.value, ValueError)


def test_security_defaults() -> None:
    settings = Settings()
    assert settings.token is None
    assert settings.max_message_rate == pytest.approx(100.0)
    assert settings.max_message_burst == 200
    assert settings.rate_limit_close_after == pytest.approx(5.0)
    assert settings.max_connections == 1024
    assert settings.max_connections_per_address == 32
    assert settings.max_prompt_bytes == 32 * 1024
    assert settings.max_sessions == 8
    for variable in (
        "WIRTHFORGE_TOKEN",
        "WIRTHFORGE_MAX_MESSAGE_RATE",
        "WIRTHFORGE_MAX_MESSAGE_BURST",
        "WIRTHFORGE_RATE_LIMIT_CLOSE_AFTER",
        "WIRTHFORGE_MAX_CONNECTIONS",
        "WIRTHFORGE_MAX_CONNECTIONS_PER_ADDRESS",
        "WIRTHFORGE_MAX_PROMPT_BYTES",
        "WIRTHFORGE_MAX_SESSIONS",
    ):
        assert variable in ENVIRONMENT_VARIABLES


def test_security_settings_from_the_environment() -> None:
    token = "Zq3-x_Y9.a~b0123456789"
    settings = Settings.from_env(
        {
            "WIRTHFORGE_TOKEN": f"  {token} ",
            "WIRTHFORGE_MAX_MESSAGE_RATE": "20.5",
            "WIRTHFORGE_MAX_MESSAGE_BURST": "40",
            "WIRTHFORGE_RATE_LIMIT_CLOSE_AFTER": "2",
            "WIRTHFORGE_MAX_CONNECTIONS": "10",
            "WIRTHFORGE_MAX_CONNECTIONS_PER_ADDRESS": "3",
            "WIRTHFORGE_MAX_PROMPT_BYTES": "1000",
            "WIRTHFORGE_MAX_SESSIONS": "2",
        }
    )
    assert settings.token == token
    assert settings.max_message_rate == pytest.approx(20.5)
    assert settings.max_message_burst == 40
    assert settings.rate_limit_close_after == pytest.approx(2.0)
    assert (settings.max_connections, settings.max_connections_per_address) == (10, 3)
    assert (settings.max_prompt_bytes, settings.max_sessions) == (1000, 2)
    # The token is a secret: not in the settings' repr, nor in the message refusing it.
    assert token not in repr(settings)
    with pytest.raises(SettingsError) as info:
        Settings(token="short secret")
    assert "short secret" not in str(info.value)


def test_non_integer_port_message_says_an_integer_is_expected() -> None:
    with pytest.raises(SettingsError, match="integer"):
        Settings.from_env({"WIRTHFORGE_PORT": "eighty"})


def test_unknown_model_message_names_the_model_and_the_choices() -> None:
    with pytest.raises(SettingsError) as info:
        Settings(models=("llama",))
    message = str(info.value)
    assert "llama" in message
    assert "demo" in message


def test_tier_message_lists_the_tiers() -> None:
    with pytest.raises(SettingsError) as info:
        Settings(tier="Ultra-Tier")  # type: ignore[arg-type]
    for tier in ("Low-Tier", "Mid-Tier", "High-Tier"):
        assert tier in str(info.value)


@pytest.mark.parametrize(("interval", "timeout"), [(10.0, 10.0), (11.0, 10.0), (0.0, 10.0)])
def test_heartbeat_interval_must_be_shorter_than_the_timeout(
    interval: float, timeout: float
) -> None:
    with pytest.raises(SettingsError, match="heartbeat"):
        Settings(heartbeat_interval=interval, heartbeat_timeout=timeout)
    assert Settings(heartbeat_interval=0.5, heartbeat_timeout=timeout).heartbeat_interval == 0.5


@pytest.mark.parametrize("tier", ["Low-Tier", "Mid-Tier", "High-Tier"])
def test_every_tier_is_accepted(tier: str) -> None:
    assert Settings.from_env({"WIRTHFORGE_TIER": tier}).tier == tier


@pytest.mark.parametrize(
    ("cores", "memory", "tier"),
    [
        (2, 24 * GIB, "Low-Tier"),
        (6, 16 * GIB, "Mid-Tier"),
        (16, 64 * GIB, "High-Tier"),
        (16, 4 * GIB, "Low-Tier"),
        (4, 8 * GIB, "Mid-Tier"),
        (8, 32 * GIB, "High-Tier"),
        (8, 31 * GIB, "Mid-Tier"),
        (3, 64 * GIB, "Low-Tier"),
    ],
)
def test_detect_tier(cores: int, memory: int, tier: str) -> None:
    assert detect_tier(cores, memory) == tier


def test_detect_tier_without_arguments_inspects_this_machine() -> None:
    assert detect_tier() in ("Low-Tier", "Mid-Tier", "High-Tier")


def test_a_bad_variable_that_an_override_replaces_is_not_read() -> None:
    env = {"WIRTHFORGE_PORT": "eighty", "WIRTHFORGE_MODELS": "nonsense"}
    with pytest.raises(SettingsError):
        Settings.from_env(env)
    settings = Settings.from_env(env, port=9001, models=("demo",))
    assert (settings.port, settings.models) == (9001, ("demo",))
