"""Limits of the web layer, on every listener (LATEST_PORT and LATEST_ES_PORT): a request rate
per client, a bound on every request body, and a bounded number of history queries at once.

**Rate** (``Limits``, ASGI middleware). Each client (``access.client_key``: the token's name
when the request is authenticated, else the client's address) has a token bucket of
LATEST_RATE_BURST requests refilled at LATEST_RATE_LIMIT per second; a request that finds it
empty is answered 429 with ``Retry-After`` (whole seconds, at least 1) and counts for nothing.
Buckets are kept for the LATEST_RATE_CLIENTS clients seen last (an LRU), so a scan from many
addresses costs bounded memory; a client forgotten starts again with a full bucket. Health
probes (``/healthz``, ``/readyz``) are never limited. A websocket upgrade is one request.

**Bodies** (``Limits`` too). A request declaring a ``Content-Length`` past
LATEST_MAX_BODY_BYTES is answered 413 before its route runs, whatever the route: every route
that reads a body also stops reading at its own bound (web/_request.py ``read_body``), which
holds for bodies sent chunked, and a route that reads none leaves the body to uvicorn, which
discards it.

**History** (``Gate``, ``Gated``). At most LATEST_HISTORY_CONCURRENCY history queries run at
once; up to LATEST_HISTORY_QUEUE more wait, each at most LATEST_HISTORY_WAIT seconds, for a
slot; past either: 503 ``busy`` with ``Retry-After``. A slot is held until the response is
written (a streamed NDJSON or CSV download holds it to its end). Latest reads never wait for
one: a slow history query cannot hold up ``GET /latest``.

Errors have the REST API's shape (``{"error": {"type", "reason"}}``), or Elasticsearch's on the
Elasticsearch-compatible API (``es_rejected_execution_exception`` for the rate,
``content_too_long_exception`` for bodies).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from latest_server.access import client_key
from latest_server.settings import Settings
from latest_server.web._request import error_body

log = logging.getLogger(__name__)

UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})
ES_HEADERS = [(b"x-elastic-product", b"Elasticsearch")]


class TokenBuckets:
    """One token bucket per client key, for the ``capacity`` keys used last."""

    def __init__(self, rate: float, burst: int, capacity: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.capacity = capacity
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    @classmethod
    def of(cls, settings: Settings) -> TokenBuckets | None:
        """The buckets LATEST_RATE_LIMIT asks for; None when it is off (0)."""
        if settings.rate_limit <= 0:
            return None
        return cls(settings.rate_limit, settings.rate_burst, settings.rate_clients)

    def take(self, key: str, now: float) -> float:
        """Take one token of ``key``'s bucket: 0.0 if there was one, else the seconds until
        there is."""
        buckets = self.buckets
        found = buckets.get(key)
        if found is None:
            tokens = self.burst
            if len(buckets) >= self.capacity:
                buckets.popitem(last=False)  # the client seen longest ago
        else:
            tokens = min(self.burst, found[0] + (now - found[1]) * self.rate)
            buckets.move_to_end(key)
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return 0.0
        buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1 (RFC 9110 §10.2.3 has no fractions)."""
    return str(max(1, math.ceil(seconds)))


def _es_error(status: int, type_: str, reason: str) -> bytes:
    cause = {"type": type_, "reason": reason}
    return orjson.dumps({"error": {"root_cause": [cause], **cause}, "status": status})


class Limits:
    """ASGI middleware: the request rate per client and the declared size of bodies (above).
    ``es``: every path is the Elasticsearch-compatible API (its own listener); else the paths
    under ``es_prefix`` are (LATEST_ES_PREFIX). ``buckets``: the request rates of another
    listener of the process, to share; else its own."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        es: bool = False,
        es_prefix: str | None = None,
        buckets: TokenBuckets | None = None,
    ) -> None:
        self.app = app
        self.es = es
        self.es_prefix = es_prefix
        self.max_body = settings.max_body_bytes
        # shared by the listeners of one process (runner.py), so that a client's rate is one
        self.buckets = buckets if buckets is not None else TokenBuckets.of(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if self.buckets is not None and scope["path"] not in UNLIMITED_PATHS:
            key = client_key(scope)
            wait = self.buckets.take(key, time.monotonic())
            if wait:
                log.debug("rate limited: %s", key)
                reason = (
                    f"more than {self.buckets.rate:g} requests per second (burst "
                    f"{self.buckets.burst:g}) from this client (LATEST_RATE_LIMIT, "
                    f"LATEST_RATE_BURST); retry after {retry_after(wait)} s"
                )
                return await self._refuse(
                    scope,
                    send,
                    429,
                    "rate_limited",
                    "es_rejected_execution_exception",
                    reason,
                    [(b"retry-after", retry_after(wait).encode())],
                )
        if kind == "http":
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                reason = (
                    f"request body is {declared} bytes, larger than {self.max_body} bytes "
                    "(LATEST_MAX_BODY_BYTES)"
                )
                return await self._refuse(
                    scope, send, 413, "too_large", "content_too_long_exception", reason, []
                )
        await self.app(scope, receive, send)

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        status: int,
        type_: str,
        es_type: str,
        reason: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        es = self.es or (
            self.es_prefix is not None and (scope["path"] + "/").startswith(self.es_prefix + "/")
        )
        if es:
            body = b"" if scope.get("method") == "HEAD" else _es_error(status, es_type, reason)
            headers = [*headers, *ES_HEADERS]
        else:
            body = error_body(type_, reason)
        await send_error(scope, send, status, body, headers)


async def send_error(
    scope: Scope, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """A JSON error as the response to an HTTP request, or to a websocket upgrade (the denial
    response, where the server offers it; else the upgrade is closed with 1013, try again)."""
    all_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": body})
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        start = {"type": "websocket.http.response.start", "status": status}
        await send({**start, "headers": all_headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": 1013, "reason": ""})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


# --- history queries -------------------------------------------------------------------------


class Busy(Exception):
    """No history slot: the queue is full, or the wait for a slot was too long."""


class Gate:
    """``slots`` history queries at once; at most ``queue`` waiting, each ``wait`` seconds."""

    def __init__(self, slots: int, queue: int, wait: float) -> None:
        self.slots = slots
        self.queue = queue
        self.wait = wait
        self.semaphore = asyncio.Semaphore(slots)
        self.waiting = 0

    @classmethod
    def of(cls, settings: Settings) -> Gate:
        return cls(settings.history_concurrency, settings.history_queue, settings.history_wait)

    async def acquire(self) -> None:
        """A slot, or ``Busy``: call ``release`` once done."""
        if not self.semaphore.locked():
            await self.semaphore.acquire()  # free: returns at once
            return
        if self.waiting >= self.queue:
            raise Busy(
                f"{self.slots} history queries are running and {self.waiting} waiting "
                "(LATEST_HISTORY_CONCURRENCY, LATEST_HISTORY_QUEUE); try again later"
            )
        self.waiting += 1
        try:
            await asyncio.wait_for(self.semaphore.acquire(), self.wait)
        except TimeoutError:
            raise Busy(
                f"no history query slot was free within {self.wait:g} s "
                "(LATEST_HISTORY_CONCURRENCY, LATEST_HISTORY_WAIT); try again later"
            ) from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self.semaphore.release()


class Gated:
    """An ASGI app (a route's endpoint) that runs only while it holds a slot of ``gate``; the
    slot is held until its response is written."""

    def __init__(self, gate: Gate, app: ASGIApp) -> None:
        self.gate = gate
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.gate.acquire()
        except Busy as exc:
            log.info("history query refused: %s", exc)
            body = error_body("busy", str(exc))
            return await send_error(scope, send, 503, body, [(b"retry-after", b"1")])
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.release()
