"""Every Prometheus metric of the server, defined once, with the helpers the hot paths call.

Names are ``latest_*`` with their unit; labels take few values (an edge, a reason code, a
route's path template, a token's name). The hot paths resolve a label set's child once and
keep it (``_children``), so a packet or a request costs an increment, not a label lookup.

**Several processes.** prometheus_client keeps each metric in the memory of its process unless
``PROMETHEUS_MULTIPROC_DIR`` names a directory when it is imported: then every process writes
its values to files there, and ``exposition()`` sums them (``MultiProcessCollector``). The CLI
exports ``LATEST_METRICS_DIR`` into ``PROMETHEUS_MULTIPROC_DIR`` before it imports this module
(cli.py), so ``serve`` and ``consume`` processes started with the same directory, and every
process they start, are one set of metrics. The directory is emptied by whoever starts the
processes, before they start (prometheus_client's rule); a process that ends removes its live
gauges (``process_exit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from latest_server.errors import LatestError

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
EDGES = ("http", "amqp", "es", "other")  # where packets come from
QUEUE_DEPTH_INTERVAL = 5.0  # seconds between two reads of the AMQP queue's depth

# --- ingest ----------------------------------------------------------------------------------

PACKETS = Counter(
    "latest_packets",
    "Packets written, by edge and outcome: accepted (became the latest document), stale "
    "(older than the latest, kept in history) or duplicate (already in history); each packet "
    "counts once.",
    ["edge", "outcome"],
)
REJECTED = Counter(
    "latest_packets_rejected", "Packets refused, by edge and reason code.", ["edge", "reason"]
)
DEAD_LETTERED = Counter(
    "latest_packets_dead_lettered", "Refused AMQP packets published to the dead-letter exchange."
)
BATCH_SIZE = Histogram(
    "latest_write_batch_packets",
    "Packets per Ingestor.write_batch, by edge.",
    ["edge"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "latest_write_batch_seconds",
    "Seconds of one Ingestor.write_batch (the store's round trips), by edge.",
    ["edge"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Gauge(
    "latest_amqp_queue_messages",
    "Messages ready in the consumed AMQP queue (the consumer's lag), read every few seconds.",
    ["queue"],
    multiprocess_mode="mostrecent",
)

# --- history leaving Redis -------------------------------------------------------------------

JOBS = Counter(
    "latest_jobs",
    "Offload and merge runs, by outcome: done, busy (another process held the lock) or the "
    "reason it stopped (lock_lost, store_unavailable, failed).",
    ["job", "outcome"],
)
JOB_ENTRIES = Counter("latest_job_entries", "History entries moved or merged, by job.", ["job"])
JOB_BYTES = Counter("latest_job_bytes", "Bytes of objects written, by job.", ["job"])
OBJECT_READ_BYTES = Counter(
    "latest_object_read_bytes", "Bytes read from the object store (history reads and merges)."
)
REDIS_MEMORY_RATIO = Gauge(
    "latest_redis_memory_ratio",
    "Redis used_memory / maxmemory (or LATEST_OFFLOAD_MAX_BYTES), as the offload trigger last "
    "read it.",
    multiprocess_mode="mostrecent",
)

# --- reads -----------------------------------------------------------------------------------

HISTORY_SECONDS = Histogram(
    "latest_history_query_seconds",
    "Seconds of a GET /history query until its answer starts, by format.",
    ["format"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WS_CLIENTS = Gauge("latest_ws_clients", "Websocket connections open.", multiprocess_mode="livesum")
WS_FRAMES = Counter("latest_ws_frames_sent", "Websocket frames written to clients.")
WS_CATCHUPS = Counter(
    "latest_ws_catchup_reads", "Backlog pages read from the stores for websocket subscriptions."
)
WS_SLOW = Counter(
    "latest_ws_slow_clients",
    "Slow websocket clients: overflow (an entry found the socket's queue full: its "
    "subscriptions read from the stores instead) or closed (4008).",
    ["action"],
)

# --- HTTP ------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "latest_http_requests",
    "HTTP requests and websocket connections, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "latest_http_request_seconds",
    "Seconds from a request's start to its answer's end, by route template.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TOKEN_REQUESTS = Counter(
    "latest_token_requests", "Requests and websocket connections, by token name.", ["token"]
)
TOKEN_BYTES = Counter(
    "latest_token_bytes",
    "Bytes received (in) and sent (out), bodies and websocket frames, by token name.",
    ["token", "direction"],
)


# --- helpers for the hot paths ---------------------------------------------------------------


def _cached(metric: Any) -> Callable[..., Any]:
    """``metric.labels(*values)``, resolved once per label set."""
    children: dict[tuple[str, ...], Any] = {}

    def child(*labels: str) -> Any:
        found = children.get(labels)
        if found is None:
            found = children[labels] = metric.labels(*labels)
        return found

    return child


rejected_child = _cached(REJECTED)
http_child = _cached(HTTP_REQUESTS)
http_seconds_child = _cached(HTTP_SECONDS)
token_child = _cached(TOKEN_REQUESTS)
token_bytes_child = _cached(TOKEN_BYTES)
job_child = _cached(JOBS)
history_child = _cached(HISTORY_SECONDS)


@dataclass(slots=True)
class RequestMetrics:
    """The children one request moves, resolved once per route, method, status and token."""

    requests: Any
    seconds: Any
    token: Any
    bytes_in: Any
    bytes_out: Any


_requests: dict[tuple[str, str, int, str], RequestMetrics] = {}


def request(route: str, method: str, status: int, token: str) -> RequestMetrics:
    key = (route, method, status, token)
    found = _requests.get(key)
    if found is None:
        found = _requests[key] = RequestMetrics(
            http_child(route, method, status),
            http_seconds_child(route),
            token_child(token),
            token_bytes_child(token, "in"),
            token_bytes_child(token, "out"),
        )
    return found


@dataclass(slots=True)
class EdgeMetrics:
    """The children of one edge, for ``Ingestor.write_batch``."""

    accepted: Any
    stale: Any
    duplicate: Any
    size: Any
    seconds: Any

    def written(
        self, packets: int, accepted: int, stale: int, duplicates: int, took: float
    ) -> None:
        self.size.observe(packets)
        self.seconds.observe(took)
        if accepted:
            self.accepted.inc(accepted)
        if stale > duplicates:
            self.stale.inc(stale - duplicates)
        if duplicates:
            self.duplicate.inc(duplicates)


_edges: dict[str, EdgeMetrics] = {}


def edge(name: str) -> EdgeMetrics:
    found = _edges.get(name)
    if found is None:
        found = _edges[name] = EdgeMetrics(
            PACKETS.labels(name, "accepted"),
            PACKETS.labels(name, "stale"),
            PACKETS.labels(name, "duplicate"),
            BATCH_SIZE.labels(name),
            BATCH_SECONDS.labels(name),
        )
    return found


def rejected(edge_name: str, reasons: Iterable[str]) -> None:
    """One packet refused per reason given."""
    for reason in reasons:
        rejected_child(edge_name, reason).inc()


def dead_lettered(reasons: list[str]) -> None:
    """AMQP packets refused, each published to the dead-letter exchange with its reason."""
    DEAD_LETTERED.inc(len(reasons))
    rejected("amqp", reasons)


def job_run(job: str, outcome: str, entries: int = 0) -> None:
    job_child(job, outcome).inc()
    if entries:
        JOB_ENTRIES.labels(job).inc(entries)


def job_failed(job: str, exc: BaseException) -> None:
    """A run that stopped on ``exc``: the outcome is its reason code (the error tree's), or
    ``lock_lost``, or ``failed`` for anything else (a bug)."""
    if isinstance(exc, LatestError):
        outcome = "store_unavailable" if exc.reason.startswith("store_") else exc.reason
    elif type(exc).__name__ == "LockLost":
        outcome = "lock_lost"
    else:
        outcome = "failed"
    job_child(job, outcome).inc()


def job_bytes(job: str, size: int) -> None:
    JOB_BYTES.labels(job).inc(size)


def memory_ratio(ratio: float | None) -> float | None:
    """Record the ratio read and hand it back (``return metrics.memory_ratio(...)``)."""
    if ratio is not None:
        REDIS_MEMORY_RATIO.set(ratio)
    return ratio


def history_query(fmt: str, started: float) -> None:
    history_child(fmt).observe(time.perf_counter() - started)


@dataclass(slots=True)
class Tally:
    """What one connection moved, kept in its ASGI scope (``TALLY_KEY``) by the web layer's
    middleware: bytes in and out through ASGI, and bytes a websocket wrote around it."""

    bytes_in: int = 0
    bytes_out: int = 0


TALLY_KEY = "latest.tally"
# A route's path template, set by an app that routes by itself (the Elasticsearch-compatible
# API's dispatcher) where the router's route is one catch-all; the middleware reads it first.
ROUTE_KEY = "latest.route"
UNMATCHED = "unmatched"  # the route label of a path no route matches


def tally_of(scope: MutableMapping[str, Any]) -> Tally:
    found = scope.get(TALLY_KEY)
    if found is None:
        found = scope[TALLY_KEY] = Tally()
    return found  # type: ignore[no-any-return]


# --- the queue's depth -----------------------------------------------------------------------


async def watch_queue_depth(connection: Any, queue: str) -> None:
    """Set the gauge of ``queue`` from a passive declare's message count every
    QUEUE_DEPTH_INTERVAL seconds, on a channel of its own (a failed declare closes its
    channel: the consumer's is left alone), until cancelled. A failed read keeps the last value
    (the consumer logs the connection's troubles)."""
    gauge = QUEUE_DEPTH.labels(queue)
    channel: Any = None
    while True:
        try:
            if channel is None or channel.is_closed:
                channel = await connection.channel()
            # on the channel underneath: aio-pika's robust channel answers a queue it declared
            # once with that first declaration's count
            underlay = await channel.get_underlay_channel()
            declared = await underlay.queue_declare(queue, passive=True)
            gauge.set(declared.message_count or 0)
        except Exception:  # reconnecting, or the queue is gone: read again next time
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()
            channel = None
        await asyncio.sleep(QUEUE_DEPTH_INTERVAL)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a watcher started with ``asyncio.create_task`` and wait for it."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- several processes and the exposition ----------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(ENV) or None


def check(directory: str | None) -> None:
    """Refuse to run with LATEST_METRICS_DIR set while this process keeps its metrics in memory
    (the directory was named after this module was imported): its /metrics would show the
    other processes' files and none of its own values."""
    if directory and not multiprocess_mode():
        raise LatestError(
            f"LATEST_METRICS_DIR={directory} was set after the metrics were created: set it, "
            f"or {ENV}, in the environment of the process"
        )


def multiprocess_mode() -> bool:
    """Whether the metrics live in files (several processes), not in this process's memory."""
    return values.ValueClass is not values.MutexValue


def process_exit() -> None:
    """This process ends: its live gauges (websocket clients) stop counting."""
    directory = multiprocess_dir()
    if directory and multiprocess_mode():
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def exposition() -> bytes:
    """The Prometheus text of every metric: this process's, or, with several processes, the sum
    of every process's files."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
