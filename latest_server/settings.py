"""Settings: read once from the environment, overridden by CLI flags, then passed down frozen.

Service endpoints are URLs (``REDIS_URL``, ``AMQP_URL``); everything else is ``LATEST_*``. This is
the only module that reads ``os.environ``. A bad value raises ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from latest_server.errors import ConfigError

VERSION_TYPES = ("external", "external_gte")
TIME_UNITS = ("auto", "s", "ms", "us", "ns")
LOG_LEVELS = ("debug", "info", "warning", "error")
BACKENDS = ("redis", "elasticsearch")
ES_VERSION_SCALES = ("epoch", "raw")


def _str(value: str) -> str:
    return value


def _optional_url(value: str) -> str | None:
    return value or None


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be between 0 and 65535")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def _ratio(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError("must be a number in (0, 1]")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or a positive integer")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError("must be 0 or a positive number")
    return number


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _names(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names:
        raise ValueError("must name at least one value (comma-separated)")
    return names


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _zone(value: str) -> str | None:
    if not value:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("must be an IANA time zone such as UTC or Europe/Paris") from exc
    return value


def _path_prefix(value: str) -> str | None:
    if not value:
        return None
    if not value.startswith("/") or value == "/" or value.endswith("/"):
        raise ValueError("must be a path such as /es (a leading /, no trailing /)")
    return value


def _setting(env: str, default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = _setting(
        "REDIS_URL",
        None,
        _optional_url,
        "Redis URL (redis://, rediss://, unix://). Unset: start an embedded Valkey server.",
    )
    amqp_url: str | None = _setting(
        "AMQP_URL", None, _optional_url, "RabbitMQ URL (amqp://). Set: consume packets from it."
    )
    host: str = _setting("LATEST_HOST", "127.0.0.1", _str, "HTTP bind address.")
    port: int = _setting("LATEST_PORT", 8000, _port, "HTTP port.")
    data_dir: str = _setting(
        "LATEST_DATA_DIR", "./data", _str, "Directory for the embedded Redis and local objects."
    )
    exchange: str = _setting("LATEST_EXCHANGE", "latest", _str, "Topic exchange to bind to.")
    queue: str = _setting("LATEST_QUEUE", "latest", _str, "Durable queue to consume.")
    binding_keys: tuple[str, ...] = _setting(
        "LATEST_BINDING_KEYS", ("#",), _names, "Routing keys binding the queue (comma-separated)."
    )
    dead_letter_exchange: str = _setting(
        "LATEST_DEAD_LETTER_EXCHANGE",
        "latest.dlx",
        _str,
        "Exchange receiving rejected packets (header x-latest-error names the reason).",
    )
    dead_letter_queue: str = _setting(
        "LATEST_DEAD_LETTER_QUEUE", "latest.dlq", _str, "Queue bound to the dead-letter exchange."
    )
    declare: bool = _setting(
        "LATEST_DECLARE", True, _bool, "Declare exchanges, queues and bindings at start."
    )
    prefetch: int = _setting(
        "LATEST_PREFETCH", 2000, _positive_int, "Unacknowledged messages held by the consumer."
    )
    batch_size: int = _setting(
        "LATEST_BATCH_SIZE", 500, _positive_int, "Messages written to Redis per round trip."
    )
    batch_linger: float = _setting(
        "LATEST_BATCH_LINGER",
        0.005,
        _non_negative_float,
        "Seconds a batch smaller than LATEST_BATCH_SIZE waits for more messages.",
    )
    id_field: str = _setting(
        "LATEST_ID_FIELD", "id", _str, "Dotted path of the variable id in a packet."
    )
    time_fields: tuple[str, ...] = _setting(
        "LATEST_TIME_FIELD",
        ("observationDateTime", "timestamp", "ts"),
        _names,
        "Dotted path(s) of the packet time, tried in order (comma-separated).",
    )
    time_unit: str = _setting(
        "LATEST_TIME_UNIT",
        "auto",
        _choice(*TIME_UNITS),
        "Unit of numeric times: auto (by magnitude), s, ms, us or ns.",
    )
    default_tz: str | None = _setting(
        "LATEST_DEFAULT_TZ",
        None,
        _zone,
        "Zone for ISO times without an offset. Unset: such times are rejected.",
    )
    version_type: str = _setting(
        "LATEST_VERSION_TYPE",
        "external",
        _choice(*VERSION_TYPES),
        "external: newer time wins; external_gte: newer or equal wins.",
    )
    max_packet_bytes: int = _setting(
        "LATEST_MAX_PACKET_BYTES", 1_048_576, _positive_int, "Largest accepted packet, in bytes."
    )
    max_body_bytes: int = _setting(
        "LATEST_MAX_BODY_BYTES", 67_108_864, _positive_int, "Largest HTTP ingest body, in bytes."
    )
    log_level: str = _setting("LATEST_LOG_LEVEL", "info", _choice(*LOG_LEVELS), "Log level.")
    objects_url: str | None = _setting(
        "OBJECTS_URL",
        None,
        _optional_url,
        "Where history goes when it leaves Redis: s3://bucket/prefix or file:///path. "
        "Unset: file://<LATEST_DATA_DIR>/objects.",
    )
    s3_timeout: float = _setting(
        "LATEST_S3_TIMEOUT",
        10.0,
        _positive_float,
        "Seconds an S3 request may wait to connect, or for the next bytes of its reply, "
        "before it is tried again.",
    )
    s3_attempts: int = _setting(
        "LATEST_S3_ATTEMPTS",
        5,
        _positive_int,
        "Tries of an S3 request (with backoff) before the object store counts as unavailable "
        "(in place of AWS_MAX_ATTEMPTS and AWS_RETRY_MODE, which are not read).",
    )
    offload_check_interval: float = _setting(
        "LATEST_OFFLOAD_CHECK_INTERVAL",
        1.0,
        _positive_float,
        "Seconds between two Redis memory checks after writes.",
    )
    offload_ratio: float = _setting(
        "LATEST_OFFLOAD_RATIO",
        0.7,
        _ratio,
        "Start an offload job when used_memory / maxmemory passes this.",
    )
    offload_target_ratio: float = _setting(
        "LATEST_OFFLOAD_TARGET_RATIO",
        0.5,
        _ratio,
        "An offload job stops once used_memory / maxmemory is below this.",
    )
    offload_max_bytes: int = _setting(
        "LATEST_OFFLOAD_MAX_BYTES",
        0,
        _non_negative_int,
        "Memory budget used instead of Redis maxmemory when that is 0 (0: none, no offload).",
    )
    offload_lock_ttl: float = _setting(
        "LATEST_OFFLOAD_LOCK_TTL",
        30.0,
        _positive_float,
        "Seconds an offload/merge lock lives without a heartbeat (a dead job's lock expires).",
    )
    completion_delay: float = _setting(
        "LATEST_COMPLETION_DELAY",
        30.0,
        _positive_float,
        "Seconds between the completion detector's first polls of an open session's entry count.",
    )
    completion_repeats: int = _setting(
        "LATEST_COMPLETION_REPEATS",
        3,
        _positive_int,
        "Unchanged polls after which an open session's data is declared complete.",
    )
    completion_webhook: str | None = _setting(
        "LATEST_COMPLETION_WEBHOOK",
        None,
        _optional_url,
        "URL receiving a JSON POST for each session that completes or ends. Unset: none.",
    )
    events_exchange: str = _setting(
        "LATEST_EVENTS_EXCHANGE",
        "latest.events",
        _str,
        "Topic exchange for session events (routing key session.<state>) when AMQP_URL is set.",
    )
    es_port: int = _setting(
        "LATEST_ES_PORT",
        9200,
        _port,
        "Port of the Elasticsearch-compatible API, on LATEST_HOST (0: off).",
    )
    es_prefix: str | None = _setting(
        "LATEST_ES_PREFIX",
        None,
        _path_prefix,
        "Also serve the Elasticsearch-compatible API under this path of LATEST_PORT, e.g. /es. "
        "Unset: not mounted.",
    )
    es_index: str = _setting(
        "LATEST_ES_INDEX",
        "latest",
        _str,
        "The Elasticsearch index of latest documents: on the ES-compatible API, the index that "
        "shares ids with /ingest and /latest; with LATEST_BACKEND=elasticsearch, the index used.",
    )
    es_version_scale: str = _setting(
        "LATEST_ES_VERSION_SCALE",
        "epoch",
        _choice(*ES_VERSION_SCALES),
        "How an Elasticsearch request's version compares with other writes: epoch (read as an "
        "epoch time, unit by magnitude or LATEST_TIME_UNIT, like time fields, and compared in "
        "µs with /ingest and AMQP) or raw (as given: versions that are counters).",
    )
    backend: str = _setting(
        "LATEST_BACKEND",
        "redis",
        _choice(*BACKENDS),
        "Where latest documents live: redis, or elasticsearch (ELASTICSEARCH_URL); history and "
        "the live feed stay in Redis.",
    )
    elasticsearch_url: str | None = _setting(
        "ELASTICSEARCH_URL",
        None,
        _optional_url,
        "Elasticsearch URL (http:// or https://, credentials in the URL) for LATEST_BACKEND.",
    )

    http_header_timeout: float = _setting(
        "LATEST_HTTP_HEADER_TIMEOUT",
        10.0,
        _positive_float,
        "Seconds an HTTP request's headers may take from its first byte; later: 408, closed.",
    )
    http_body_timeout: float = _setting(
        "LATEST_HTTP_BODY_TIMEOUT",
        30.0,
        _positive_float,
        "Seconds an HTTP request body may pause between two reads; longer: 408, nothing written.",
    )

    ws_queue_bytes: int = _setting(
        "LATEST_WS_QUEUE_BYTES",
        1_048_576,
        _positive_int,
        "Bytes queued for one websocket before its client is read from the stores instead.",
    )
    ws_send_timeout: float = _setting(
        "LATEST_WS_SEND_TIMEOUT",
        10.0,
        _positive_float,
        "Seconds one websocket write may stall before the socket is closed with 4008.",
    )
    ws_max_subscriptions: int = _setting(
        "LATEST_WS_MAX_SUBSCRIPTIONS",
        1000,
        _positive_int,
        "Variables one websocket may subscribe to.",
    )
    ws_max_connections: int = _setting(
        "LATEST_WS_MAX_CONNECTIONS",
        10_000,
        _positive_int,
        "Websockets one process holds; past it an upgrade is answered 503 with Retry-After.",
    )
    ws_max_frame_bytes: int = _setting(
        "LATEST_WS_MAX_FRAME_BYTES",
        65_536,
        _positive_int,
        "Largest frame a websocket client may send, in bytes.",
    )
    ws_ping_interval: float = _setting(
        "LATEST_WS_PING_INTERVAL",
        20.0,
        _positive_float,
        "Seconds between websocket pings; a client that does not answer in as long is closed.",
    )
    ws_compression: bool = _setting(
        "LATEST_WS_COMPRESSION",
        False,
        _bool,
        "Accept permessage-deflate from websocket clients that offer it: about twice the "
        "server's CPU per entry frame and 44 KiB more per socket, for frames a seventh the size.",
    )
    ws_probe_interval: float = _setting(
        "LATEST_WS_PROBE_INTERVAL",
        5.0,
        _positive_float,
        "Seconds between checks that live subscribers are not behind the stored history.",
    )

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
