from __future__ import annotations

import subprocess
import sys

import pytest

from latest_server.errors import ConfigError
from latest_server.settings import Settings, describe


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.id_field == "id"
    assert settings.time_fields == ("observationDateTime", "timestamp", "ts")
    assert settings.version_type == "external"


def test_environment_is_read() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://example:6379/1",
            "LATEST_PORT": "9001",
            "LATEST_BINDING_KEYS": "a.#, b.*",
            "LATEST_VERSION_TYPE": "external_gte",
            "LATEST_TIME_FIELD": "meta.time",
            "LATEST_DECLARE": "false",
        }
    )
    assert settings.redis_url == "redis://example:6379/1"
    assert settings.port == 9001
    assert settings.binding_keys == ("a.#", "b.*")
    assert settings.version_type == "external_gte"
    assert settings.time_fields == ("meta.time",)
    assert settings.declare is False


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("LATEST_PORT", "eighty"),
        ("LATEST_PORT", "70000"),
        ("LATEST_PREFETCH", "0"),
        ("LATEST_VERSION_TYPE", "internal"),
        ("LATEST_TIME_UNIT", "minutes"),
        ("LATEST_DEFAULT_TZ", "Mars/Olympus"),
        ("LATEST_DECLARE", "perhaps"),
        ("LATEST_BINDING_KEYS", " , "),
    ],
)
def test_invalid_value_names_the_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=env):
        Settings.from_env({env: value})


def test_flags_override_environment() -> None:
    settings = Settings.from_env({"LATEST_PORT": "9001"}).with_overrides(port="9002", host=None)
    assert settings.port == 9002
    assert settings.host == "127.0.0.1"


def test_help_lists_every_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "latest_server", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for _name, env, _default, _text in describe():
        assert env in result.stdout


def test_bad_flag_fails_at_start_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "latest_server", "serve", "--port", "nope"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "LATEST_PORT" in result.stderr
