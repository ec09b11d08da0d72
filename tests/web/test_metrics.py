"""``GET /metrics`` through real uvicorn, parsed with prometheus_client's own parser: each test
reads the metrics before and after what it sends (the server runs in this process, beside
other tests' servers) and checks they moved by exactly that much."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from latest_server.access import Principal, set_principal
from latest_server.consumer import Consumer
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.web.http.metrics import get_metrics
from latest_server.web.observe import Observe
from tests.conftest import ServerThread, publish, unique, wait_for, ws_url
from tests.servers import UvicornThread

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Meter:
    """Scrapes before and after; ``moved(name, **labels)`` is the difference."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.before = scrape(client)
        self.after: Samples = {}

    def read(self) -> Meter:
        self.after = scrape(self.client)
        return self

    def moved(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


@pytest.fixture
def server(settings: Settings, http_server: Callable[..., ServerThread]) -> ServerThread:
    return http_server(settings, amqp_url=None, es_prefix="/es")


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def doc(variable: str, second: int, **extra: Any) -> dict[str, Any]:
    return {"id": variable, "ts": 1_700_000_000 + second, **extra}


def test_http_ingest_counts_each_outcome_and_each_reason(client: httpx.Client) -> None:
    v = unique("v")
    meter = Meter(client)
    body = [
        doc(v, 10),  # accepted
        doc(v, 20),  # accepted
        doc(v, 5),  # stale: older than the latest, a new history entry
        doc(v, 20),  # duplicate: the same entry again
        {"ts": 1},  # missing_id
        {"id": "x"},  # missing_time
        {"id": "y", "ts": "yesterday"},  # bad_time
        {"id": "z", "ts": 2},  # accepted (another variable)
    ]
    lines = b"\n".join(orjson.dumps(item) for item in body)
    answer = client.post("/ingest", content=lines, headers={"content-type": "application/x-ndjson"})
    assert answer.status_code == 200
    assert answer.json()["accepted"] == 3
    meter.read()
    assert meter.moved("latest_packets_total", edge="http", outcome="accepted") == 3
    assert meter.moved("latest_packets_total", edge="http", outcome="stale") == 1
    assert meter.moved("latest_packets_total", edge="http", outcome="duplicate") == 1
    for reason in ("missing_id", "missing_time", "bad_time"):
        assert meter.moved("latest_packets_rejected_total", edge="http", reason=reason) == 1
    assert meter.moved("latest_write_batch_packets_count", edge="http") == 1
    assert meter.moved("latest_write_batch_packets_sum", edge="http") == 5
    assert meter.moved("latest_write_batch_seconds_count", edge="http") == 1
    assert meter.moved("latest_packets_total", edge="amqp", outcome="accepted") == 0
    route = {"route": "/ingest", "method": "POST", "status": "200"}
    assert meter.moved("latest_http_requests_total", **route) == 1
    assert meter.moved("latest_http_request_seconds_count", route="/ingest") == 1
    assert meter.moved("latest_token_requests_total", token="anonymous") == 2  # and /metrics
    assert meter.moved("latest_token_bytes_total", token="anonymous", direction="in") == len(lines)


def test_requests_by_route_template_and_status(client: httpx.Client) -> None:
    v = unique("v")
    client.post("/ingest", json=doc(v, 1))
    meter = Meter(client)
    assert client.get(f"/latest/{v}").status_code == 200
    assert client.get(f"/latest/{v}-other").status_code == 404
    assert client.get("/latest/another/with/slashes").status_code == 404
    assert client.get("/nowhere").status_code == 404
    assert client.delete("/ingest").status_code == 405
    meter.read()
    latest = {"route": "/latest/{variable_id}", "method": "GET"}
    assert meter.moved("latest_http_requests_total", **latest, status="200") == 1
    assert meter.moved("latest_http_requests_total", **latest, status="404") == 2
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert meter.moved("latest_http_requests_total", **unmatched) == 1
    refused = {"route": "/ingest", "method": "DELETE", "status": "405"}
    assert meter.moved("latest_http_requests_total", **refused) == 1
    # No label carries a raw path.
    assert not [key for key in meter.after if any(v in value for _, value in key[1])]


def test_es_bulk_counts_written_and_refused_items(client: httpx.Client) -> None:
    v = unique("v")
    items = [
        ({"index": {"_index": "latest", "_id": v}}, doc(v, 10)),  # accepted
        ({"index": {"_index": "latest", "_id": v}}, doc(v, 5)),  # stale (409)
        ({"index": {"_index": "latest", "_id": v}}, doc(v, 10)),  # duplicate
        ({"index": {"_index": "latest", "_id": v + "b"}}, [1, 2]),  # not an object
    ]
    body = b"".join(orjson.dumps(a) + b"\n" + orjson.dumps(d) + b"\n" for a, d in items)
    meter = Meter(client)
    answer = client.post(
        "/es/_bulk", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert answer.status_code == 200
    assert answer.json()["errors"] is True
    meter.read()
    assert meter.moved("latest_packets_total", edge="es", outcome="accepted") == 1
    assert meter.moved("latest_packets_total", edge="es", outcome="stale") == 1
    assert meter.moved("latest_packets_total", edge="es", outcome="duplicate") == 1
    parse = {"edge": "es", "reason": "document_parsing_exception"}
    assert meter.moved("latest_packets_rejected_total", **parse) == 1
    bulk = {"route": "/es/_bulk", "method": "POST", "status": "200"}
    assert meter.moved("latest_http_requests_total", **bulk) == 1


async def test_amqp_counts_outcomes_and_dead_letters(
    settings: Settings, resources: Resources, amqp: Any, client: httpx.Client
) -> None:
    v = unique("v")
    meter = await asyncio.to_thread(Meter, client)
    consumer = Consumer(settings, resources.ingestor)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        bodies = [
            orjson.dumps(doc(v, 10)),
            orjson.dumps(doc(v, 20)),
            orjson.dumps(doc(v, 1)),  # stale
            orjson.dumps(doc(v, 20)),  # duplicate
            b"not json",  # not_json
            orjson.dumps({"id": v}),  # missing_time
        ]
        await publish(amqp, settings.exchange, bodies)
        await wait_for(lambda: consumer.processed == len(bodies))
    finally:
        await consumer.stop()
        await task
        await consumer.close()
    await asyncio.to_thread(meter.read)
    assert meter.moved("latest_packets_total", edge="amqp", outcome="accepted") == 2
    assert meter.moved("latest_packets_total", edge="amqp", outcome="stale") == 1
    assert meter.moved("latest_packets_total", edge="amqp", outcome="duplicate") == 1
    assert meter.moved("latest_packets_rejected_total", edge="amqp", reason="not_json") == 1
    assert meter.moved("latest_packets_rejected_total", edge="amqp", reason="missing_time") == 1
    assert meter.moved("latest_packets_dead_lettered_total") == 2


async def test_the_queue_depth_is_read_from_a_passive_declare(
    settings: Settings, resources: Resources, amqp: Any, client: httpx.Client
) -> None:
    """The consumer's lag: messages waiting in its queue, read on a channel of its own."""
    consumer = Consumer(settings, resources.ingestor)
    await consumer.start()  # declares the queue, starts the reader; nothing consumes yet
    try:
        assert consumer.underlay is not None and consumer.consumer_tag is not None
        await consumer.underlay.basic_cancel(consumer.consumer_tag)
        await publish(amqp, settings.exchange, [orjson.dumps(doc("q", n)) for n in range(7)])
        queue = await amqp.declare_queue(settings.queue, passive=True)
        assert queue.declaration_result.message_count == 7

        async def seven() -> bool:
            samples = await asyncio.to_thread(scrape, client)
            return value(samples, "latest_amqp_queue_messages", queue=settings.queue) == 7

        await wait_for(seven, within=15)
    finally:
        await consumer.stop()
        await consumer.close()
    assert consumer.depth is not None and consumer.depth.done()


async def test_websocket_clients_frames_and_history(
    server: ServerThread, client: httpx.Client
) -> None:
    v = unique("v")
    await asyncio.to_thread(client.post, "/ingest", json=[doc(v, n) for n in range(3)])
    meter = await asyncio.to_thread(Meter, client)
    received = 0
    async with websockets.connect(ws_url(server)) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "ids": [v]}).decode())
        while True:
            frame = orjson.loads(await ws.recv())
            received += 1
            if frame["type"] == "live":
                break
        during = await asyncio.to_thread(scrape, client)
        assert value(during, "latest_ws_clients") - value(meter.before, "latest_ws_clients") == 1
        await asyncio.to_thread(client.post, "/ingest", json=doc(v, 10))
        frame = orjson.loads(await ws.recv())
        assert frame["type"] == "entry"
        received += 1
    history = await asyncio.to_thread(client.get, f"/history/{v}", params={"format": "ndjson"})
    assert len(history.text.splitlines()) == 4

    async def closed() -> bool:
        samples = await asyncio.to_thread(scrape, client)
        return value(samples, "latest_ws_clients") == value(meter.before, "latest_ws_clients")

    await wait_for(closed, within=10)
    await asyncio.to_thread(meter.read)
    assert meter.moved("latest_ws_frames_sent_total") == received
    ws_route = {"route": "/ws", "method": "WS", "status": "101"}
    assert meter.moved("latest_http_requests_total", **ws_route) == 1
    assert meter.moved("latest_history_query_seconds_count", format="ndjson") == 1
    assert meter.moved("latest_history_query_seconds_count", format="json") == 0


def test_per_token_counts_follow_the_principal_set_inside() -> None:
    """The token label is the principal the authentication middleware (inside ours) sets on
    the scope: here a stand-in for it names each request's token from a header."""

    class NameTheToken:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            name = dict(scope.get("headers", ())).get(b"x-test-token")
            if name:
                set_principal(scope, Principal(name.decode(), frozenset({"read"})))
            await self.app(scope, receive, send)

    async def echo(request: Request) -> Response:
        return Response(await request.body())

    app = Starlette(
        routes=[Route("/echo", echo, methods=["POST"])],
        middleware=[Middleware(Observe), Middleware(NameTheToken)],
    )
    metrics_app = Starlette(routes=[Route("/metrics", get_metrics)])
    with (
        UvicornThread(app) as server,
        UvicornThread(metrics_app) as exposition,  # not observed: /metrics is not counted
        httpx.Client(base_url=exposition.url, timeout=10) as reader,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        meter = Meter(reader)
        for token, body in (("alice", b"x" * 10), ("alice", b"y" * 5), ("bob", b"z")):
            answer = http.post("/echo", content=body, headers={"x-test-token": token})
            assert answer.content == body
        http.post("/echo", content=b"anon")
        meter.read()
    assert meter.moved("latest_token_requests_total", token="alice") == 2
    assert meter.moved("latest_token_requests_total", token="bob") == 1
    assert meter.moved("latest_token_requests_total", token="anonymous") == 1
    for direction in ("in", "out"):
        assert meter.moved("latest_token_bytes_total", token="alice", direction=direction) == 15
        assert meter.moved("latest_token_bytes_total", token="bob", direction=direction) == 1
