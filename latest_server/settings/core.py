"""The core settings: the services, the packet format, the write path, history tiers, the
Elasticsearch-compatible API and the websocket. Declared with ``setting()`` (setting_values.py);
composed into ``Settings`` by ``latest_server/settings/__init__.py``."""

from __future__ import annotations

from dataclasses import dataclass

from latest_server import setting_values as parse
from latest_server.setting_values import setting

VERSION_TYPES = ("external", "external_gte")
TIME_UNITS = ("auto", "s", "ms", "us", "ns")
LOG_LEVELS = ("debug", "info", "warning", "error")
BACKENDS = ("redis", "elasticsearch", "redisjson")
ES_VERSION_SCALES = ("epoch", "raw")


@dataclass(frozen=True)
class CoreSettings:
    redis_url: str | None = setting(
        "REDIS_URL",
        None,
        parse.optional_url,
        "Redis URL (redis://, rediss://, unix://), or a Redis Cluster's "
        "(redis+cluster://host:port,host:port, rediss+cluster://). "
        "Unset: start an embedded Valkey server.",
    )
    amqp_url: str | None = setting(
        "AMQP_URL",
        None,
        parse.optional_url,
        "RabbitMQ URL (amqp://). Set: consume packets from it.",
    )
    host: str = setting("LATEST_HOST", "127.0.0.1", parse.text, "HTTP bind address.")
    port: int = setting("LATEST_PORT", 8000, parse.port, "HTTP port.")
    data_dir: str = setting(
        "LATEST_DATA_DIR",
        "./data",
        parse.text,
        "Directory for the embedded Redis and local objects.",
    )
    exchange: str = setting("LATEST_EXCHANGE", "latest", parse.text, "Topic exchange to bind to.")
    queue: str = setting("LATEST_QUEUE", "latest", parse.text, "Durable queue to consume.")
    binding_keys: tuple[str, ...] = setting(
        "LATEST_BINDING_KEYS",
        ("#",),
        parse.names,
        "Routing keys binding the queue (comma-separated).",
    )
    dead_letter_exchange: str = setting(
        "LATEST_DEAD_LETTER_EXCHANGE",
        "latest.dlx",
        parse.text,
        "Exchange receiving rejected packets (header x-latest-error names the reason).",
    )
    dead_letter_queue: str = setting(
        "LATEST_DEAD_LETTER_QUEUE",
        "latest.dlq",
        parse.text,
        "Queue bound to the dead-letter exchange.",
    )
    declare: bool = setting(
        "LATEST_DECLARE", True, parse.boolean, "Declare exchanges, queues and bindings at start."
    )
    prefetch: int = setting(
        "LATEST_PREFETCH", 2000, parse.positive_int, "Unacknowledged messages held by the consumer."
    )
    batch_size: int = setting(
        "LATEST_BATCH_SIZE", 500, parse.positive_int, "Messages written to Redis per round trip."
    )
    batch_linger: float = setting(
        "LATEST_BATCH_LINGER",
        0.005,
        parse.non_negative_float,
        "Seconds a batch smaller than LATEST_BATCH_SIZE waits for more messages.",
    )
    id_field: str = setting(
        "LATEST_ID_FIELD", "id", parse.text, "Dotted path of the variable id in a packet."
    )
    time_fields: tuple[str, ...] = setting(
        "LATEST_TIME_FIELD",
        ("observationDateTime", "timestamp", "ts"),
        parse.names,
        "Dotted path(s) of the packet time, tried in order (comma-separated).",
    )
    time_unit: str = setting(
        "LATEST_TIME_UNIT",
        "auto",
        parse.choice(*TIME_UNITS),
        "Unit of numeric times: auto (by magnitude), s, ms, us or ns.",
    )
    default_tz: str | None = setting(
        "LATEST_DEFAULT_TZ",
        None,
        parse.zone,
        "Zone for ISO times without an offset. Unset: such times are rejected.",
    )
    version_type: str = setting(
        "LATEST_VERSION_TYPE",
        "external",
        parse.choice(*VERSION_TYPES),
        "external: newer time wins; external_gte: newer or equal wins.",
    )
    max_packet_bytes: int = setting(
        "LATEST_MAX_PACKET_BYTES",
        1_048_576,
        parse.positive_int,
        "Largest accepted packet, in bytes.",
    )
    max_body_bytes: int = setting(
        "LATEST_MAX_BODY_BYTES",
        67_108_864,
        parse.positive_int,
        "Largest HTTP request body (POST /ingest, the ES _bulk and document writes, any other), "
        "in bytes; larger: 413.",
    )
    log_level: str = setting("LATEST_LOG_LEVEL", "info", parse.choice(*LOG_LEVELS), "Log level.")
    objects_url: str | None = setting(
        "OBJECTS_URL",
        None,
        parse.optional_url,
        "Where history goes when it leaves Redis: s3://bucket/prefix or file:///path. "
        "Unset: file://<LATEST_DATA_DIR>/objects.",
    )
    s3_timeout: float = setting(
        "LATEST_S3_TIMEOUT",
        10.0,
        parse.positive_float,
        "Seconds an S3 request may wait to connect, or for the next bytes of its reply, "
        "before it is tried again.",
    )
    s3_attempts: int = setting(
        "LATEST_S3_ATTEMPTS",
        5,
        parse.positive_int,
        "Tries of an S3 request (with backoff) before the object store counts as unavailable "
        "(in place of AWS_MAX_ATTEMPTS and AWS_RETRY_MODE, which are not read).",
    )
    offload_check_interval: float = setting(
        "LATEST_OFFLOAD_CHECK_INTERVAL",
        1.0,
        parse.positive_float,
        "Seconds between two Redis memory checks after writes.",
    )
    offload_ratio: float = setting(
        "LATEST_OFFLOAD_RATIO",
        0.7,
        parse.ratio,
        "Start an offload job when used_memory / maxmemory passes this.",
    )
    offload_target_ratio: float = setting(
        "LATEST_OFFLOAD_TARGET_RATIO",
        0.5,
        parse.ratio,
        "An offload job stops once used_memory / maxmemory is below this.",
    )
    offload_max_bytes: int = setting(
        "LATEST_OFFLOAD_MAX_BYTES",
        0,
        parse.non_negative_int,
        "Memory budget used instead of Redis maxmemory when that is 0 (0: none, no offload).",
    )
    offload_lock_ttl: float = setting(
        "LATEST_OFFLOAD_LOCK_TTL",
        30.0,
        parse.positive_float,
        "Seconds an offload/merge lock lives without a heartbeat (a dead job's lock expires).",
    )
    completion_delay: float = setting(
        "LATEST_COMPLETION_DELAY",
        30.0,
        parse.positive_float,
        "Seconds between the completion detector's first polls of an open session's entry count.",
    )
    completion_repeats: int = setting(
        "LATEST_COMPLETION_REPEATS",
        3,
        parse.positive_int,
        "Unchanged polls after which an open session's data is declared complete.",
    )
    completion_webhook: str | None = setting(
        "LATEST_COMPLETION_WEBHOOK",
        None,
        parse.optional_url,
        "URL receiving a JSON POST for each session that completes or ends. Unset: none.",
    )
    events_exchange: str = setting(
        "LATEST_EVENTS_EXCHANGE",
        "latest.events",
        parse.text,
        "Topic exchange for session events (routing key session.<state>) when AMQP_URL is set.",
    )
    es_port: int = setting(
        "LATEST_ES_PORT",
        9200,
        parse.port,
        "Port of the Elasticsearch-compatible API, on LATEST_HOST (0: off).",
    )
    es_prefix: str | None = setting(
        "LATEST_ES_PREFIX",
        None,
        parse.path_prefix,
        "Also serve the Elasticsearch-compatible API under this path of LATEST_PORT, e.g. /es. "
        "Unset: not mounted.",
    )
    es_index: str = setting(
        "LATEST_ES_INDEX",
        "latest",
        parse.text,
        "The Elasticsearch index of latest documents: on the ES-compatible API, the index that "
        "shares ids with /ingest and /latest; with LATEST_BACKEND=elasticsearch, the index used.",
    )
    es_version_scale: str = setting(
        "LATEST_ES_VERSION_SCALE",
        "epoch",
        parse.choice(*ES_VERSION_SCALES),
        "How an Elasticsearch request's version compares with other writes: epoch (read as an "
        "epoch time, unit by magnitude or LATEST_TIME_UNIT, like time fields, and compared in "
        "µs with /ingest and AMQP) or raw (as given: versions that are counters).",
    )
    backend: str = setting(
        "LATEST_BACKEND",
        "redis",
        parse.choice(*BACKENDS),
        "Where latest documents live: redis, elasticsearch (ELASTICSEARCH_URL), or redisjson "
        "(Redis, and also the RedisJSON layout of IUDX readers: LATEST_IUDX_*); history and "
        "the live feed stay in Redis.",
    )
    elasticsearch_url: str | None = setting(
        "ELASTICSEARCH_URL",
        None,
        parse.optional_url,
        "Elasticsearch URL (http:// or https://, credentials in the URL) for LATEST_BACKEND.",
    )

    http_header_timeout: float = setting(
        "LATEST_HTTP_HEADER_TIMEOUT",
        10.0,
        parse.positive_float,
        "Seconds an HTTP request's headers may take from its first byte; later: 408, closed.",
    )
    http_body_timeout: float = setting(
        "LATEST_HTTP_BODY_TIMEOUT",
        30.0,
        parse.positive_float,
        "Seconds an HTTP request body may pause between two reads; longer: 408, nothing written.",
    )

    ws_queue_bytes: int = setting(
        "LATEST_WS_QUEUE_BYTES",
        1_048_576,
        parse.positive_int,
        "Bytes queued for one websocket before its client is read from the stores instead.",
    )
    ws_send_timeout: float = setting(
        "LATEST_WS_SEND_TIMEOUT",
        10.0,
        parse.positive_float,
        "Seconds one websocket write may stall before the socket is closed with 4008.",
    )
    ws_max_subscriptions: int = setting(
        "LATEST_WS_MAX_SUBSCRIPTIONS",
        1000,
        parse.positive_int,
        "Variables one websocket may subscribe to.",
    )
    ws_max_connections: int = setting(
        "LATEST_WS_MAX_CONNECTIONS",
        10_000,
        parse.positive_int,
        "Websockets one process holds; past it an upgrade is answered 503 with Retry-After.",
    )
    ws_max_frame_bytes: int = setting(
        "LATEST_WS_MAX_FRAME_BYTES",
        65_536,
        parse.positive_int,
        "Largest frame a websocket client may send, in bytes.",
    )
    ws_ping_interval: float = setting(
        "LATEST_WS_PING_INTERVAL",
        20.0,
        parse.positive_float,
        "Seconds between websocket pings; a client that does not answer in as long is closed.",
    )
    ws_compression: bool = setting(
        "LATEST_WS_COMPRESSION",
        False,
        parse.boolean,
        "Accept permessage-deflate from websocket clients that offer it: about twice the "
        "server's CPU per entry frame and 44 KiB more per socket, for frames a seventh the size.",
    )
    ws_probe_interval: float = setting(
        "LATEST_WS_PROBE_INTERVAL",
        5.0,
        parse.positive_float,
        "Seconds between checks that live subscribers are not behind the stored history.",
    )
