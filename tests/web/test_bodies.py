"""Every request body is bounded: the test walks the routes of the app (and of the
Elasticsearch-compatible API's table) and sends an oversized body to each route that takes
POST or PUT, declared (``Content-Length``) and chunked; multi-gets are bounded in ids and bytes.
Real uvicorn, real httpx."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.routing import Mount, Route

from latest_server.settings import Settings
from latest_server.web.app import create_app
from latest_server.web.es import bulk as es_bulk
from latest_server.web.es import docs as es_docs
from latest_server.web.es import routes as es_routes
from tests.conftest import ServerThread

LIMIT = 4096
MGET_LIMIT = 1024
BODY_METHODS = ("POST", "PUT")
# The Elasticsearch handlers that read a body; the others (templates, index creation, refresh)
# read none, and uvicorn discards what is sent to them.
ES_READERS = {
    es_routes.write_doc,
    es_routes.write_auto_id,
    es_routes.create_doc,
    es_routes.mget_all,
    es_routes.bulk_all,
    es_docs.update,
    es_docs.mget,
    es_bulk.bulk,
}


def rest_routes(settings: Settings) -> list[tuple[str, str]]:
    """(method, path) of every route of the main app taking POST or PUT, its path parameters
    filled in (the Elasticsearch mount excepted: ``es_routes_of``)."""
    found = []
    for route in create_app(settings).routes:
        if isinstance(route, Route) and route.methods:
            path = route.path.replace("{variable_id:any}", "x").replace("{session_id:any}", "x")
            found += [(method, path) for method in sorted(route.methods) if method in BODY_METHODS]
        else:
            assert isinstance(route, Mount) or not hasattr(route, "methods"), route
    assert found, "no route takes a body?"
    return found


def es_routes_of(prefix: str) -> list[tuple[str, str, bool]]:
    """(method, path, reads a body) of every Elasticsearch route taking POST or PUT."""
    found = []
    for pattern, handlers in es_routes.TABLE:
        parts = ["latest" if (part == "*" and i == 0) else part for i, part in enumerate(pattern)]
        path = prefix + "/" + "/".join("x" if part == "*" else part for part in parts)
        for method, handler in handlers.items():
            if method in BODY_METHODS:
                found.append((method, path, handler in ES_READERS))
    return found


@pytest.fixture
def server(settings: Settings, http_server: Callable[..., ServerThread]) -> ServerThread:
    return http_server(
        settings,
        amqp_url=None,
        es_prefix="/es",
        max_body_bytes=LIMIT,
        max_mget_bytes=MGET_LIMIT,
        max_mget_ids=3,
    )


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def oversized() -> bytes:
    return b'{"pad": "' + b"x" * LIMIT + b'"}'


def chunks() -> Iterator[bytes]:
    """An oversized body without a Content-Length (chunked)."""
    body = oversized()
    for start in range(0, len(body), 512):
        yield body[start : start + 512]


def assert_rest_413(answer: httpx.Response, setting: str = "LATEST_MAX_BODY_BYTES") -> None:
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["type"] in ("too_large", "too_many_ids")
    assert setting in error["reason"]


def assert_es_413(answer: httpx.Response) -> None:
    assert answer.status_code == 413, answer.text
    assert answer.headers["X-Elastic-Product"] == "Elasticsearch"
    body = answer.json()
    assert body["status"] == 413
    assert body["error"]["type"] == "content_too_long_exception"
    assert body["error"]["root_cause"][0]["type"] == "content_too_long_exception"


def test_every_rest_route_with_a_body_refuses_an_oversized_one(
    settings: Settings, http: httpx.Client
) -> None:
    routes = rest_routes(settings)
    assert ("POST", "/ingest") in routes and ("POST", "/latest/_mget") in routes
    for method, path in routes:
        declared = http.request(method, path, content=oversized())
        assert_rest_413(declared)
        chunked = http.request(method, path, content=chunks())
        assert chunked.status_code == 413, (method, path, chunked.text)
        assert chunked.json()["error"]["type"] == "too_large"


def test_every_es_route_with_a_body_refuses_an_oversized_one(http: httpx.Client) -> None:
    routes = es_routes_of("/es")
    assert len(routes) >= 15
    for method, path, reads in routes:
        assert_es_413(http.request(method, path, content=oversized()))
        chunked = http.request(method, path, content=chunks())
        if reads:
            assert_es_413(chunked)
        else:  # the route never reads it: answered as without a body
            assert chunked.status_code < 500, (method, path, chunked.text)
            assert chunked.headers["X-Elastic-Product"] == "Elasticsearch"


def test_gzip_bodies_are_bounded_once_decoded(http: httpx.Client) -> None:
    import gzip

    packed = gzip.compress(b"[" + b'{"id": "g", "ts": 1700000000},' * 400 + b"{}]")
    assert len(packed) < LIMIT
    answer = http.post("/ingest", content=packed, headers={"content-encoding": "gzip"})
    assert_rest_413(answer)
    assert_es_413(
        http.post(
            "/es/_bulk",
            content=gzip.compress(b'{"index": {"_index": "latest"}}\n{}\n' * 200),
            headers={"content-encoding": "gzip", "content-type": "application/x-ndjson"},
        )
    )


# --- multi-gets ------------------------------------------------------------------------------


def test_multi_gets_are_bounded_in_ids(http: httpx.Client) -> None:
    assert http.post("/ingest", json={"id": "a", "ts": 1_700_000_000}).status_code == 200
    three = ["a", "b", "c"]
    assert http.post("/latest/_mget", json={"ids": three}).status_code == 200
    assert http.get("/latest", params=[("id", i) for i in three]).status_code == 200
    many = [*three, "d"]
    assert_rest_413(http.post("/latest/_mget", json={"ids": many}), "LATEST_MAX_MGET_IDS")
    assert_rest_413(http.get("/latest", params=[("id", i) for i in many]), "LATEST_MAX_MGET_IDS")
    found = http.post("/es/latest/_mget", json={"ids": three})
    assert found.status_code == 200 and len(found.json()["docs"]) == 3
    refused = http.post("/es/latest/_mget", json={"ids": many})
    assert_es_413(refused)
    assert "LATEST_MAX_MGET_IDS" in refused.json()["error"]["reason"]
    docs: list[dict[str, Any]] = [{"_index": "latest", "_id": i} for i in many]
    assert_es_413(http.post("/es/_mget", json={"docs": docs}))


def test_multi_gets_are_bounded_in_bytes(http: httpx.Client) -> None:
    body = orjson.dumps({"ids": ["a" * (MGET_LIMIT // 2), "b" * (MGET_LIMIT // 2)]})
    assert MGET_LIMIT < len(body) < LIMIT  # under the bound of other bodies
    assert_rest_413(http.post("/latest/_mget", content=body), "LATEST_MAX_MGET_BYTES")
    refused = http.post("/es/latest/_mget", content=body)
    assert_es_413(refused)
    assert "LATEST_MAX_MGET_BYTES" in refused.json()["error"]["reason"]
