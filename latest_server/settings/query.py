"""Settings of aggregation queries: the process pool that runs the parts of large ones, and the
cache of results."""

from __future__ import annotations

from dataclasses import dataclass

from latest_server import setting_values as parse
from latest_server.setting_values import setting


def workers(value: str) -> int | None:
    return parse.non_negative_int(value) if value else None


@dataclass(frozen=True)
class QuerySettings:
    query_workers: int | None = setting(
        "LATEST_QUERY_WORKERS",
        None,
        workers,
        "Worker processes that run the row-group parts of large aggregation queries (started on "
        "first use); 0: every part in the server's threads. Unset: min(4, CPUs).",
    )
    query_parallel_rows: int = setting(
        "LATEST_QUERY_PARALLEL_ROWS",
        200_000,
        parse.positive_int,
        "An aggregation reading at least this many object rows runs its parts in the worker "
        "processes; smaller ones in threads (a process costs a copy of each partial).",
    )
    query_cache_bytes: int = setting(
        "LATEST_QUERY_CACHE_BYTES",
        64 * 1024 * 1024,
        parse.non_negative_int,
        "Bytes of aggregation results kept for repeated identical queries (LRU); 0: no cache.",
    )
    query_cache_ttl: float = setting(
        "LATEST_QUERY_CACHE_TTL",
        60.0,
        parse.non_negative_float,
        "Seconds a cached aggregation result is served at most. A new entry of a variable "
        "changes the cache key at once; 0: no cache.",
    )
    query_remote: bool = setting(
        "LATEST_QUERY_REMOTE",
        False,
        parse.boolean,
        "Send the object parts of large aggregations (see LATEST_QUERY_PARALLEL_ROWS) over "
        "AMQP_URL to `latest-server query-worker` processes; a part not answered in time runs "
        "here.",
    )
    query_queue: str = setting(
        "LATEST_QUERY_QUEUE",
        "latest.query",
        parse.text,
        "The durable queue of aggregation parts that query workers consume.",
    )
    query_remote_timeout: float = setting(
        "LATEST_QUERY_REMOTE_TIMEOUT",
        5.0,
        parse.positive_float,
        "Seconds a remote aggregation part is waited for before it runs in the server instead.",
    )
