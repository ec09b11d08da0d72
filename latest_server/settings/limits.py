"""The limits a server on a network needs: how far ahead of the clock a packet may be dated,
request rates per client, concurrent history queries, request bodies and websockets per client.
Declared with ``setting()`` (setting_values.py); composed into ``Settings`` by
``latest_server/settings/__init__.py``."""

from __future__ import annotations

from dataclasses import dataclass

from latest_server import setting_values as parse
from latest_server.setting_values import setting


@dataclass(frozen=True)
class LimitSettings:
    max_future: float = setting(
        "LATEST_MAX_FUTURE",
        86_400.0,
        parse.duration,
        "How far ahead of the server clock a packet time (or an Elasticsearch version on the "
        "epoch scale) may be, as seconds or 300s, 15m, 6h, 1d; later: refused with future_time "
        "(0: no bound).",
    )
    rate_limit: float = setting(
        "LATEST_RATE_LIMIT",
        0.0,
        parse.non_negative_float,
        "HTTP requests per second one client (token, else address) may make on average; past "
        "its burst: 429 with Retry-After (0: no limit).",
    )
    rate_burst: int = setting(
        "LATEST_RATE_BURST",
        100,
        parse.positive_int,
        "Requests one client may make at once above LATEST_RATE_LIMIT (the token bucket's size).",
    )
    rate_clients: int = setting(
        "LATEST_RATE_CLIENTS",
        100_000,
        parse.positive_int,
        "Clients whose request rate is remembered; past it the least recently seen is forgotten.",
    )
    history_concurrency: int = setting(
        "LATEST_HISTORY_CONCURRENCY",
        8,
        parse.positive_int,
        "History queries (GET /history) running at once; more wait in a queue.",
    )
    history_queue: int = setting(
        "LATEST_HISTORY_QUEUE",
        64,
        parse.non_negative_int,
        "History queries waiting for a slot; past it: 503 with Retry-After.",
    )
    history_wait: float = setting(
        "LATEST_HISTORY_WAIT",
        10.0,
        parse.positive_float,
        "Seconds a history query waits for a slot before it is answered 503 with Retry-After.",
    )
    max_mget_ids: int = setting(
        "LATEST_MAX_MGET_IDS",
        10_000,
        parse.positive_int,
        "Ids one multi-get may name (GET /latest?id=…, POST /latest/_mget, the ES _mget); "
        "more: 413.",
    )
    max_mget_bytes: int = setting(
        "LATEST_MAX_MGET_BYTES",
        16_777_216,
        parse.positive_int,
        "Largest multi-get body (POST /latest/_mget, the ES _mget), in bytes; larger: 413.",
    )
    ws_max_connections_per_client: int = setting(
        "LATEST_WS_MAX_CONNECTIONS_PER_CLIENT",
        1_000,
        parse.positive_int,
        "Websockets one client (token, else address) may hold open in one process; past it an "
        "upgrade is answered 503 with Retry-After, as past LATEST_WS_MAX_CONNECTIONS.",
    )
