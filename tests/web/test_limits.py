"""The limits of web/limits.py and the websocket's per-client cap, against real uvicorn servers
with real clients (httpx, websockets, the official Elasticsearch client): the request rate per
client (429 + Retry-After, then recovery), history queries past their slots and queue (503 +
Retry-After) while latest reads go on, and websockets per client. Bodies: test_bodies.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from elasticsearch import ApiError, Elasticsearch

from latest_server.access import SCOPES, Principal, set_principal
from latest_server.settings import Settings
from latest_server.web.app import create_app, create_es_app, server_options
from latest_server.web.limits import Gate, TokenBuckets
from tests.conftest import ServerThread, hub_of, wait_for, ws_url
from tests.servers import UvicornThread


class AsToken:
    """Sets the ``Principal`` an ``x-token`` header names in the ASGI scope, as the
    authentication middleware does (``access.set_principal``), so that limits count by token."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            for name, value in scope["headers"]:
                if name == b"x-token":
                    set_principal(scope, Principal(value.decode(), frozenset(SCOPES)))
        await self.app(scope, receive, send)


@contextlib.contextmanager
def token_server(settings: Settings) -> Iterator[UvicornThread]:
    """The main app behind ``AsToken``, in uvicorn with `latest-server serve`'s options."""
    app = create_app(settings)
    with UvicornThread(AsToken(app), lifespan="on", **server_options(settings)) as server:
        server.app = app  # type: ignore[attr-defined]
        yield server


# --- the request rate ------------------------------------------------------------------------


def test_requests_past_the_burst_get_429_with_retry_after_then_recover(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> None:
    assert Settings().rate_limit == 0  # off unless set
    server = http_server(settings, amqp_url=None, rate_limit=2.0, rate_burst=3)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        ingest = http.post("/ingest", json={"id": "r", "ts": 1_700_000_000})
        assert ingest.status_code == 200
        assert [http.get("/latest/r").status_code for _ in range(2)] == [200, 200]
        refused = http.get("/latest/r")
        assert refused.status_code == 429
        retry = refused.headers["Retry-After"]
        assert retry.isdigit() and int(retry) >= 1
        error = refused.json()["error"]
        assert error["type"] == "rate_limited"
        assert "LATEST_RATE_LIMIT" in error["reason"]
        assert http.post("/ingest", json={"id": "r", "ts": 1}).status_code == 429  # writes too
        assert http.get("/healthz").status_code == 200  # probes are never limited
        time.sleep(int(retry))
        assert http.get("/latest/r").status_code == 200  # recovered after the wait


async def test_a_websocket_upgrade_is_a_request(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> None:
    server = http_server(settings, amqp_url=None, rate_limit=0.5, rate_burst=1)
    async with websockets.connect(ws_url(server)):
        pass
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(server))
    response = refused.value.response
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert orjson.loads(response.body)["error"]["type"] == "rate_limited"


def test_each_token_has_its_own_bucket(settings: Settings) -> None:
    limited = dataclasses.replace(settings, amqp_url=None, rate_limit=1.0, rate_burst=2)
    with token_server(limited) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        a = {"x-token": "a"}
        assert [http.get("/healthz").status_code for _ in range(5)] == [200] * 5
        assert [http.get("/latest/x", headers=a).status_code for _ in range(3)] == [404, 404, 429]
        # another token, and requests without one (counted by address), are not held up by a's
        assert http.get("/latest/x", headers={"x-token": "b"}).status_code == 404
        assert http.get("/latest/x").status_code == 404
        assert http.get("/latest/x", headers=a).status_code == 429


def test_the_elasticsearch_api_answers_429_in_its_own_shape(settings: Settings) -> None:
    limited = dataclasses.replace(settings, amqp_url=None, rate_limit=1.0, rate_burst=1)
    with UvicornThread(create_es_app(limited), lifespan="on") as server:
        client = Elasticsearch(server.url, max_retries=0, request_timeout=10)
        try:
            assert client.info()["tagline"]
            with pytest.raises(ApiError) as refused:
                client.info()
        finally:
            client.close()
        assert refused.value.status_code == 429
        body = refused.value.body
        assert body["status"] == 429
        assert body["error"]["type"] == "es_rejected_execution_exception"
        assert body["error"]["root_cause"][0]["type"] == "es_rejected_execution_exception"
        assert refused.value.meta.headers["X-Elastic-Product"] == "Elasticsearch"
        assert int(refused.value.meta.headers["Retry-After"]) >= 1


def test_both_listeners_of_a_process_count_one_rate(settings: Settings) -> None:
    """The runner gives both apps the same buckets: a client's burst spent on LATEST_PORT is
    spent on LATEST_ES_PORT too."""
    limited = dataclasses.replace(settings, amqp_url=None, rate_limit=0.5, rate_burst=2)
    buckets = TokenBuckets.of(limited)
    assert buckets is not None and TokenBuckets.of(settings) is None
    main_app = create_app(limited, buckets=buckets)
    es_app = create_es_app(limited, buckets=buckets)
    with (
        UvicornThread(main_app, lifespan="on") as main,
        UvicornThread(es_app, lifespan="on") as es,
        httpx.Client(timeout=10) as http,
    ):
        assert http.get(main.url + "/latest/x").status_code == 404
        assert http.get(es.url + "/").status_code == 200
        assert http.get(main.url + "/latest/x").status_code == 429
        refused = http.get(es.url + "/")
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "es_rejected_execution_exception"


def test_buckets_are_kept_for_the_clients_seen_last() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, capacity=2)
    assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) == pytest.approx(1.0)  # empty: a second until the next
    assert buckets.take("b", 0.0) == 0.0
    assert buckets.take("c", 0.0) == 0.0  # a, seen longest ago, is forgotten
    assert list(buckets.buckets) == ["b", "c"]
    assert buckets.take("a", 0.0) == 0.0  # and starts again with a full bucket
    assert len(buckets.buckets) == 2
    assert buckets.take("c", 0.5) == pytest.approx(0.5)  # half refilled


# --- history queries -------------------------------------------------------------------------


class Slots:
    """Holds slots of a server's history gate from the test, on the server's event loop."""

    def __init__(self, server: ServerThread) -> None:
        self.loop = server.server.servers[0].get_loop()
        self.gate: Gate = server.server.config.app.state.history_gate

    def hold(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gate.acquire(), self.loop).result(5)

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.release)


@pytest.fixture
def gated(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> Iterator[Callable[..., Any]]:
    """Factory: a server with one history slot (and ``overrides``), its Slots and a client."""
    clients: list[httpx.Client] = []

    def start(**overrides: Any) -> tuple[Slots, httpx.Client]:
        server = http_server(settings, amqp_url=None, history_concurrency=1, **overrides)
        http = httpx.Client(base_url=server.url, timeout=30)
        clients.append(http)
        assert http.post("/ingest", json={"id": "h", "ts": 1_700_000_000}).status_code == 200
        return Slots(server), http

    yield start
    for client in clients:
        client.close()


def test_history_past_the_queue_is_503_and_latest_reads_go_on(gated: Callable[..., Any]) -> None:
    slots, http = gated(history_queue=1, history_wait=30.0)
    slots.hold()  # the one slot, as a slow query would hold it
    started = time.monotonic()
    assert http.get("/latest/h").status_code == 200  # not behind the history slot
    assert http.get("/latest", params={"id": "h"}).status_code == 200
    assert time.monotonic() - started < 2
    waiting: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: waiting.append(http.get("/history/h")))
    thread.start()
    deadline = time.monotonic() + 10
    while slots.gate.waiting < 1:
        assert time.monotonic() < deadline, "the query did not queue"
        time.sleep(0.01)
    refused = http.get("/history/h", params={"format": "ndjson"})
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["type"] == "busy"
    assert "LATEST_HISTORY_QUEUE" in refused.json()["error"]["reason"]
    assert not waiting  # the queued one still waits
    slots.release()
    thread.join(10)
    [served] = waiting
    assert served.status_code == 200
    assert [e["doc"]["id"] for e in served.json()["entries"]] == ["h"]
    # the slot came back when it was done, and the refused query took none
    assert http.get("/history/h").status_code == 200
    slots.hold()
    slots.release()


def test_history_that_waits_too_long_is_503(gated: Callable[..., Any]) -> None:
    slots, http = gated(history_queue=8, history_wait=0.3)
    slots.hold()
    started = time.monotonic()
    refused = http.get("/history/h", params={"format": "csv"})
    assert time.monotonic() - started >= 0.3
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert "LATEST_HISTORY_WAIT" in refused.json()["error"]["reason"]
    slots.release()
    assert http.get("/history/h", params={"format": "csv"}).status_code == 200


# --- websockets per client -------------------------------------------------------------------


async def test_websockets_past_the_clients_share_are_refused(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> None:
    server = http_server(settings, ws_max_connections_per_client=2)
    hub = hub_of(server)
    url = ws_url(server)
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(websockets.connect(url)) for _ in range(2)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url)
        response = refused.value.response
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        error = orjson.loads(response.body)["error"]
        assert error["type"] == "too_many_connections"
        assert "LATEST_WS_MAX_CONNECTIONS_PER_CLIENT" in error["reason"]
        await held[0].send(orjson.dumps({"op": "ping"}).decode())  # the held ones are served
        assert orjson.loads(await held[0].recv())["type"] == "pong"
        await held.pop().close()
        await wait_for(lambda: sum(hub.per_client.values()) == 1)
        again = await stack.enter_async_context(websockets.connect(url))
        await again.send(orjson.dumps({"op": "ping"}).decode())
        assert orjson.loads(await again.recv())["type"] == "pong"
    await wait_for(lambda: not hub.per_client)  # no key left behind


async def test_websockets_are_counted_per_token(settings: Settings) -> None:
    with token_server(dataclasses.replace(settings, ws_max_connections_per_client=1)) as server:
        url = server.url.replace("http://", "ws://") + "/ws"
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(
                websockets.connect(url, additional_headers={"x-token": "a"})
            )
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(url, additional_headers={"x-token": "a"})
            assert refused.value.response.status_code == 503
            # another token has its own share
            await stack.enter_async_context(
                websockets.connect(url, additional_headers={"x-token": "b"})
            )
