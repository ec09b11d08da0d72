"""Observability: where the metrics of several processes meet, the log format and the access
log. Declared with ``setting()`` (setting_values.py); composed into ``Settings`` by
``latest_server/settings/__init__.py``."""

from __future__ import annotations

from dataclasses import dataclass

from latest_server import setting_values as parse
from latest_server.setting_values import setting

LOG_FORMATS = ("text", "json")


def _optional_path(value: str) -> str | None:
    return value or None


@dataclass(frozen=True)
class ObservabilitySettings:
    metrics_dir: str | None = setting(
        "LATEST_METRICS_DIR",
        None,
        _optional_path,
        "Directory where every process started with it writes its metrics, so that /metrics "
        "shows their sum (exported as PROMETHEUS_MULTIPROC_DIR; empty it before the processes "
        "start). Unset: each process shows its own.",
    )
    log_format: str = setting(
        "LATEST_LOG_FORMAT",
        "text",
        parse.choice(*LOG_FORMATS),
        "Log lines as text, or json (one object per line, access log fields included).",
    )
    access_log: bool = setting(
        "LATEST_ACCESS_LOG",
        True,
        parse.boolean,
        "One log line (logger latest_server.access) per HTTP request and websocket connection.",
    )
