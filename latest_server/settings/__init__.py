"""Settings: read once from the environment, overridden by CLI flags, then passed down frozen.

Service endpoints are URLs (``REDIS_URL``, ``AMQP_URL``); everything else is ``LATEST_*``. This is
the only package that reads ``os.environ``. A bad value raises ``ConfigError`` naming the variable.

Each group of settings is a frozen dataclass of ``setting()`` declarations in its own module
(``core.py``, …); ``Settings`` inherits them all. Dataclass fields follow the reversed order of
the bases, so the core group, listed last, comes first in ``--help`` and in the README's table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latest_server.errors import ConfigError
from latest_server.settings.access import AccessSettings
from latest_server.settings.core import (
    BACKENDS,
    ES_VERSION_SCALES,
    LOG_LEVELS,
    TIME_UNITS,
    VERSION_TYPES,
    CoreSettings,
)
from latest_server.settings.durability import DurabilitySettings
from latest_server.settings.iudx import IudxSettings
from latest_server.settings.limits import LimitSettings
from latest_server.settings.query import QuerySettings
from latest_server.settings.scale import QUEUE_TYPES, ScaleSettings
from latest_server.settings.search import SearchSettings

__all__ = [
    "BACKENDS",
    "ES_VERSION_SCALES",
    "LOG_LEVELS",
    "QUEUE_TYPES",
    "TIME_UNITS",
    "VERSION_TYPES",
    "Settings",
    "describe",
    "parse_value",
]


@dataclass(frozen=True)
class Settings(
    SearchSettings,
    QuerySettings,
    DurabilitySettings,
    ScaleSettings,
    AccessSettings,
    LimitSettings,
    IudxSettings,
    CoreSettings,
):
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        if environ is None:
            import os

            environ = os.environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            env = spec.metadata["env"]
            if env in environ:
                values[spec.name] = parse_value(spec.name, environ[env])
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        """Apply CLI flags: ``None`` means "not given"; strings are parsed like the environment."""
        values: dict[str, Any] = {}
        for name, value in overrides.items():
            if value is None:
                continue
            values[name] = parse_value(name, value) if isinstance(value, str) else value
        return dataclasses.replace(self, **values)


def parse_value(name: str, raw: str) -> Any:
    spec = SETTINGS_BY_NAME.get(name)
    if spec is None:
        raise ConfigError(f"Unknown setting {name!r}")
    try:
        return spec.metadata["parse"](raw)
    except ValueError as exc:
        raise ConfigError(f"Invalid value {raw!r} for {spec.metadata['env']}: {exc}") from None


SETTINGS_BY_NAME = {spec.name: spec for spec in dataclasses.fields(Settings)}


def describe() -> list[tuple[str, str, str, str]]:
    """(setting name, environment variable, default, help) for every setting; used by --help."""
    rows = []
    for spec in dataclasses.fields(Settings):
        default = spec.default
        if isinstance(default, tuple):
            default = ",".join(default)
        elif default is None:
            default = ""
        elif isinstance(default, bool):
            default = "true" if default else "false"
        rows.append((spec.name, spec.metadata["env"], str(default), spec.metadata["help"]))
    return rows
