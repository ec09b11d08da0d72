"""LATEST_BACKEND=elasticsearch: latest documents in an Elasticsearch index through the official
client (elasticsearch-py 8.x, the project's dependency, on httpx), history and feed in Redis.

No Elasticsearch server can run here (no Docker, no JVM download), so the "Elasticsearch" is
this project's own ES-compatible API on a second uvicorn listener: the backend's real client
speaks real HTTP to a server that answers as Elasticsearch does (external versions, 409s,
index creation, mget). Its documents land in the index ``backend-latest`` there, a namespace of
their own, so the two servers share one Redis database without touching each other's keys.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
import redis

from latest_server import keys
from latest_server.settings import Settings
from tests.conftest import REDIS_URL, ServerThread
from tests.es.conftest import EsServerThread

INDEX = "backend-latest"


@pytest.mark.redis_both  # history and the feed in a Redis Cluster too (lua/append.lua)
def test_latest_documents_live_in_elasticsearch(
    settings: Settings,
    es_server: Callable[..., EsServerThread],
    http_server: Callable[..., ServerThread],
) -> None:
    elasticsearch = es_server(settings)
    server = http_server(
        settings,
        amqp_url=None,
        backend="elasticsearch",
        elasticsearch_url=elasticsearch.url,
        es_index=INDEX,
    )
    with (
        httpx.Client(base_url=server.url, timeout=10) as http,
        httpx.Client(base_url=elasticsearch.url, timeout=10) as es,
    ):
        # the backend created its index at start
        assert es.head(f"/{INDEX}").status_code == 200
        batch = [
            {"id": "city/a", "ts": 1_700_000_002, "v": 2},
            {"id": "city/a", "ts": 1_700_000_001, "v": 1},  # late: a 409 there, stale here
            {"id": "city/b", "ts": 1_700_000_000, "v": 0},
        ]
        answer = http.post("/ingest", json=batch).json()
        assert (answer["accepted"], answer["stale"]) == (2, 1)
        redelivered = http.post("/ingest", json=batch[:1]).json()
        assert (redelivered["stale"], redelivered["duplicates"]) == (1, 1)

        # in "Elasticsearch": _id = sha1(id), _version = packet time (µs), external versioning
        digest = hashlib.sha1(b"city/a").hexdigest()
        stored = es.get(f"/{INDEX}/_doc/{digest}").json()
        assert stored["_version"] == 1_700_000_002_000_000
        assert stored["_source"] == batch[0]

        # /latest reads the index; history (both packets of city/a) stays in Redis
        latest = http.get("/latest/city%2Fa")
        assert latest.json() == batch[0]
        assert latest.headers["etag"] == '"1700000002000000"'
        many = http.get("/latest", params=[("id", "city/b"), ("id", "nobody")]).json()
        assert [doc["found"] for doc in many["docs"]] == [True, False]
        history = http.get("/history/city%2Fa", params={"from": 0}).json()
        assert [entry["doc"]["v"] for entry in history["entries"]] == [1, 2]
        assert http.get("/readyz").json()["checks"]["redis"] is True

        # Elasticsearch unreachable: nothing is acknowledged, the producer retries
        elasticsearch.__exit__()
        down = http.post("/ingest", json={"id": "city/c", "ts": 1_700_000_003})
        assert down.status_code == 503
        assert down.json()["error"]["type"] == "store_unavailable"
        assert http.get("/readyz").status_code == 503


def test_variables_of_the_elasticsearch_backend_are_indexed_and_listed(
    settings: Settings,
    es_server: Callable[..., EsServerThread],
    http_server: Callable[..., ServerThread],
) -> None:
    """The index of variables is kept with the latest documents in Elasticsearch too: the
    listing's versions come from the index there, the entry counts from Redis' history."""
    elasticsearch = es_server(settings)
    server = http_server(
        settings,
        amqp_url=None,
        backend="elasticsearch",
        elasticsearch_url=elasticsearch.url,
        es_index=INDEX,
    )
    with httpx.Client(base_url=server.url, timeout=10) as http:
        batch = [
            {"id": "site/b", "ts": 1_700_000_001},
            {"id": "site/a", "ts": 1_700_000_002},
            {"id": "site/a", "ts": 1_700_000_000},  # late
            {"id": "other", "ts": 1_700_000_000},
        ]
        assert http.post("/ingest", json=batch).status_code == 200
        listed = http.get("/variables", params={"prefix": "site/", "limit": 1}).json()
        assert listed["variables"] == [
            {"id": "site/a", "version": 1_700_000_002_000_000, "entries": 2, "deleted": False}
        ]
        rest = http.get("/variables", params={"prefix": "site/", "cursor": listed["next"]})
        assert rest.json() == {
            "variables": [
                {"id": "site/b", "version": 1_700_000_001_000_000, "entries": 1, "deleted": False}
            ],
            "next": None,
        }
        page = http.get("/latest", params={"prefix": "site/"}).json()
        assert [(d["id"], d["doc"]) for d in page["docs"]] == [
            ("site/a", batch[1]),
            ("site/b", batch[0]),
        ]
        assert page["next"] is None

        # a reindex finds them by their history's meta (no latest hash in Redis here), and
        # leaves out the stand-in Elasticsearch's own variables (another namespace)
        store = redis.Redis.from_url(REDIS_URL)
        try:
            store.delete(keys.VARIABLES)
            assert http.get("/variables").json()["variables"] == []
            subprocess.run(
                [sys.executable, "-m", "latest_server", "reindex"],
                env={**os.environ, "REDIS_URL": REDIS_URL},
                check=True,
                capture_output=True,
                timeout=60,
            )
        finally:
            store.close()
        listed = http.get("/variables").json()["variables"]
        assert [v["id"] for v in listed] == ["other", "site/a", "site/b"]
