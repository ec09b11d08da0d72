"""The HTTP API through real uvicorn and httpx."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from latest_server.settings import Settings
from tests.conftest import ServerThread


@pytest.fixture
def client(settings: Settings, http_server: Callable[..., ServerThread]) -> Iterator[httpx.Client]:
    server = http_server(settings, amqp_url=None, max_body_bytes=100_000)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def ingest(client: httpx.Client, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/ingest", content=content, **kwargs)


@pytest.mark.redis_both
def test_ingest_object_then_read_latest_with_etag(client: httpx.Client) -> None:
    doc = {"id": "city/sensor 1", "observationDateTime": "2024-05-01T10:00:00+02:00", "pm25": 7}
    response = ingest(client, doc)
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "stale": 0, "duplicates": 0, "rejected": []}

    latest = client.get("/latest/city%2Fsensor%201")
    assert latest.status_code == 200
    assert latest.json() == doc
    assert latest.headers["content-type"] == "application/json"
    etag = latest.headers["etag"]
    assert etag == '"1714550400000000"'

    cached = client.get("/latest/city%2Fsensor%201", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.content == b""
    changed = client.get("/latest/city%2Fsensor%201", headers={"If-None-Match": '"1"'})
    assert changed.status_code == 200


@pytest.mark.redis_both
def test_array_and_ndjson_with_stale_and_rejected_items(client: httpx.Client) -> None:
    batch = [
        {"id": "a", "ts": 1_700_000_002},
        {"id": "a", "ts": 1_700_000_001},
        {"id": "a"},
        {"id": "b", "ts": 1_700_000_000},
    ]
    response = ingest(client, batch)
    assert response.status_code == 200
    assert response.json()["accepted"] == 2
    assert response.json()["stale"] == 1
    assert response.json()["rejected"] == [
        {"index": 2, "error": "missing_time", "detail": response.json()["rejected"][0]["detail"]}
    ]
    ndjson = b'{"id": "a", "ts": 1700000003}\n{"id": "a", "ts": 1700000002}\nnot json\n'
    response = ingest(client, ndjson, headers={"Content-Type": "application/x-ndjson"})
    body = response.json()
    assert (body["accepted"], body["stale"], body["duplicates"]) == (1, 1, 1)
    assert [r["error"] for r in body["rejected"]] == ["not_json"]
    assert client.get("/latest/a").json()["ts"] == 1_700_000_003


def test_everything_rejected_is_a_400_naming_the_problem(client: httpx.Client) -> None:
    response = ingest(client, b"{broken")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "not_json"
    assert response.json()["error"]["reason"]
    response = ingest(client, {"id": "x", "ts": "noon"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "bad_time"


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    response = ingest(client, b"[" + b'{"id":"x","ts":1},' * 10_000 + b"{}]")
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "too_large"


def test_unknown_variable_is_404_json(client: httpx.Client) -> None:
    response = client.get("/latest/nobody")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    assert "nobody" in response.json()["error"]["reason"]
    assert client.get("/no/such/route").json()["error"]["type"] == "not_found"
    assert client.delete("/ingest").status_code == 405


@pytest.mark.redis_both
def test_many_ids_in_one_call(client: httpx.Client) -> None:
    ingest(client, [{"id": "a", "ts": 1_700_000_000, "v": 1}, {"id": "b/c", "ts": 1_700_000_001}])
    by_query = client.get("/latest", params=[("id", "a"), ("id", "zz"), ("id", "b/c")]).json()
    by_body = client.post("/latest/_mget", json={"ids": ["a", "zz", "b/c"]}).json()
    assert by_query == by_body
    assert by_query["docs"] == [
        {
            "id": "a",
            "found": True,
            "version": 1_700_000_000_000_000,
            "doc": {"id": "a", "ts": 1_700_000_000, "v": 1},
        },
        {"id": "zz", "found": False},
        {
            "id": "b/c",
            "found": True,
            "version": 1_700_000_001_000_000,
            "doc": {"id": "b/c", "ts": 1_700_000_001},
        },
    ]
    assert client.get("/latest").status_code == 400
    bad = client.post("/latest/_mget", content=b'{"ids": "a"}')
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "bad_request"


@pytest.mark.redis_both
def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "pid": os.getpid()}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"redis": True}}


def test_redis_down_is_503_and_not_ready(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> None:
    server = http_server(settings, amqp_url=None)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        resources = server.server.config.app.state.resources  # type: ignore[attr-defined]
        # Point the running store at a port where nothing listens: a real refused connection.
        from latest_server.redis_client import connect
        from tests.conftest import free_port

        resources.latest.redis = connect(
            f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5
        )
        response = ingest(http, {"id": "a", "ts": 1_700_000_000})
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "store_unavailable"
        assert response.headers["retry-after"] == "1"
        assert http.get("/readyz").status_code == 503
