"""The ES-compatible API over real HTTP (httpx): what the client-driven checks do not reach —
the one write path (history, /latest), index namespaces, the mount under a path prefix, raw-path
routing, validation answers, and the listener that ``latest-server serve`` opens."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from latest_server.settings import Settings
from tests.conftest import REDIS_URL, ServerThread, free_port
from tests.es.conftest import EsServerThread
from tests.services import until_up


@pytest.fixture
def main_and_es(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """The main app with the ES API mounted under /es: both clients reach one process."""
    server = http_server(settings, amqp_url=None, es_prefix="/es")
    with (
        httpx.Client(base_url=server.url, timeout=10) as main,
        httpx.Client(base_url=server.url + "/es", timeout=10) as es,
    ):
        yield main, es


def test_writes_take_the_one_write_path(main_and_es: tuple[httpx.Client, httpx.Client]) -> None:
    main, es = main_and_es
    resource = "city/aqm 1"
    doc = {"id": resource, "observationDateTime": "2024-05-01T10:00:00+02:00", "pm25": 7}
    digest = hashlib.sha1(resource.encode()).hexdigest()
    put = es.put(f"/latest/_doc/{digest}", json=doc)
    assert put.status_code == 201
    assert put.headers["location"] == f"/latest/_doc/{digest}"
    assert put.json()["_version"] == 1714550400000000  # the packet time, µs
    # the main API sees it under the packet's id, with its version as ETag
    latest = main.get("/latest/city%2Faqm%201")
    assert latest.json() == doc
    assert latest.headers["etag"] == '"1714550400000000"'
    older = dict(doc, observationDateTime="2024-05-01T09:00:00+02:00", pm25=9)
    stale = es.put("/latest/_doc/city%2Faqm%201", json=older)
    assert stale.status_code == 409
    # ... and history holds both packets, late one included, like /ingest
    history = main.get("/history/city%2Faqm%201", params={"from": 0}).json()
    assert [entry["doc"]["pm25"] for entry in history["entries"]] == [9, 7]
    # a packet ingested over HTTP is readable over the ES API, by id and by sha1(id)
    main.post("/ingest", json={"id": "b/c", "ts": 1_700_000_000, "v": 1})
    for name in ("b%2Fc", hashlib.sha1(b"b/c").hexdigest()):
        found = es.get(f"/latest/_doc/{name}").json()
        assert found["_source"] == {"id": "b/c", "ts": 1_700_000_000, "v": 1}
        assert found["_version"] == 1_700_000_000_000_000


def test_bulk_ids_resolve_the_same_way_when_they_repeat(
    main_and_es: tuple[httpx.Client, httpx.Client],
) -> None:
    """The writer remembers how an (index, _id, id field) resolves: the second request, which
    repeats the first one's ids with later times, must land exactly where the first did."""
    main, es = main_and_es
    digest = hashlib.sha1(b"r/1").hexdigest()

    def body(hour: int) -> bytes:
        targets = [
            {"_index": "latest", "_id": digest},  # sha1 of the id field
            {"_index": "latest", "_id": "r/1"},  # the id field itself
            {"_index": "latest"},  # no _id: the id field
            {"_index": "other", "_id": digest},  # another namespace
            {"_index": "latest", "_id": "own"},  # an _id of its own
        ]
        return b"".join(
            orjson.dumps({"index": target})
            + b"\n"
            + orjson.dumps({"id": "r/1", "observationDateTime": f"2024-05-01T{hour:02}:0{i}:00Z"})
            + b"\n"
            for i, target in enumerate(targets)
        )

    expected_ids = [digest, "r/1", "r/1", digest, "own"]
    for hour in (1, 2):
        answer = es.post("/_bulk", content=body(hour), headers={"content-type": "application/json"})
        items = [item["index"] for item in answer.json()["items"]]
        assert [item["_id"] for item in items] == expected_ids
        # one variable in "latest" written three times, the first time created
        assert [item["result"] for item in items[:3]] == [
            "created" if hour == 1 else "updated",
            "updated",
            "updated",
        ]
        assert [item["result"] for item in items[3:]] == ["created" if hour == 1 else "updated"] * 2
        hour_us = 1714521600000000 + hour * 3_600_000_000
        for index, name, minute in [
            ("latest", digest, 2),
            ("latest", "r%2F1", 2),
            ("other", digest, 3),
        ]:
            assert (
                es.get(f"/{index}/_doc/{name}").json()["_version"] == hour_us + minute * 60_000_000
            )
        assert es.get("/latest/_doc/own").json()["_version"] == hour_us + 4 * 60_000_000
    # "own" is a variable of its own; "r/1" has every packet of the main index in history
    assert main.get("/latest/own").status_code == 200
    history = main.get("/history/r%2F1", params={"from": 0}).json()["entries"]
    assert [entry["doc"]["observationDateTime"][11:16] for entry in history] == [
        f"0{hour}:0{minute}" for hour in (1, 2) for minute in range(3)
    ]


def test_indices_are_namespaces(main_and_es: tuple[httpx.Client, httpx.Client]) -> None:
    main, es = main_and_es
    assert es.put("/one/_doc/x", json={"n": 1}).status_code == 201
    assert es.put("/two/_doc/x", json={"n": 2}).status_code == 201
    assert es.get("/one/_doc/x").json()["_source"] == {"n": 1}
    assert es.get("/two/_doc/x").json()["_source"] == {"n": 2}
    assert es.get("/latest/_doc/x").status_code == 404
    assert main.get("/latest/x").status_code == 404  # only the main index shares /latest
    missing = es.get("/three/_doc/x")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "index_not_found_exception"
    assert missing.json()["error"]["root_cause"][0]["resource.id"] == "three"
    assert es.head("/one").status_code == 200 and es.head("/three").status_code == 404


def test_bodies_params_and_media_types(main_and_es: tuple[httpx.Client, httpx.Client]) -> None:
    _, es = main_and_es
    vnd = "application/vnd.elasticsearch+json; compatible-with=9"
    put = es.put(
        "/latest/_doc/m?refresh=true",
        content=orjson.dumps({"a": {"b": 1, "c": 2}, "d": 3}),
        headers={"Content-Type": vnd, "Accept": vnd},
    )
    assert put.status_code == 201
    assert put.json()["forced_refresh"] is True
    assert put.headers["content-type"].startswith("application/vnd.elasticsearch+json")
    assert es.put("/latest/_doc/m?refresh=soon", json={}).json()["error"]["reason"] == (
        "Unknown value for refresh: [soon]."
    )
    empty = es.put("/latest/_doc/m", content=b"")
    assert (empty.status_code, empty.json()["error"]["type"]) == (400, "parse_exception")
    not_object = es.put("/latest/_doc/m", json=[1])
    assert not_object.json()["error"]["type"] == "document_parsing_exception"
    got = es.get("/latest/_doc/m", params={"_source_includes": "a.*", "_source_excludes": "a.c"})
    assert got.json()["_source"] == {"a": {"b": 1}}
    assert es.get("/latest/_source/m").json() == {"a": {"b": 1, "c": 2}, "d": 3}
    mget = es.post("/_mget", json={})
    assert mget.json()["error"]["reason"] == "Validation Failed: 1: no documents to get;"
    no_id = es.post("/_mget", json={"docs": [{"_index": "latest"}]})
    assert no_id.json()["error"]["reason"] == "Validation Failed: 1: id is missing for doc 0;"
    no_index = es.post("/_mget", json={"docs": [{"_id": "m"}]})
    assert "index is missing for doc 0" in no_index.json()["error"]["reason"]
    numbers = es.post("/latest/_mget", json={"ids": [7, "m"]}).json()["docs"]
    assert [(d["_id"], d["found"]) for d in numbers] == [("7", False), ("m", True)]
    wrong = es.delete("/_bulk")
    assert wrong.status_code == 405
    assert wrong.headers["x-elastic-product"] == "Elasticsearch"


def test_standalone_listener_and_redis_down(
    settings: Settings, es_server: Callable[..., EsServerThread]
) -> None:
    server = es_server(settings)
    with httpx.Client(base_url=server.url, timeout=10) as es:
        assert es.get("/_cluster/health").json()["status"] == "green"
        resources = server.server.config.app.state.resources  # type: ignore[attr-defined]
        from latest_server.redis_client import connect

        resources.latest.redis = connect(
            f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5
        )
        down = es.put("/latest/_doc/a", json={})
        assert down.status_code == 503  # clients and Logstash retry it
        assert down.json()["error"]["type"] == "unavailable_shards_exception"
        assert down.headers["x-elastic-product"] == "Elasticsearch"


def test_serve_opens_the_es_listener(tmp_path: Path) -> None:
    """``latest-server serve`` answers on LATEST_PORT and on LATEST_ES_PORT in one process."""
    port, es_port = free_port(), free_port()
    env = dict(
        os.environ,
        REDIS_URL=REDIS_URL,
        LATEST_PORT=str(port),
        LATEST_ES_PORT=str(es_port),
        LATEST_DATA_DIR=str(tmp_path),
    )
    env.pop("AMQP_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "latest_server", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        info, health = until_up(
            process,
            lambda: (
                httpx.get(f"http://127.0.0.1:{es_port}/", timeout=1),
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1),
            ),
            (httpx.TransportError,),
            within=20,
            poll=0.1,
        )
        assert info.headers["x-elastic-product"] == "Elasticsearch"
        assert info.json()["tagline"] == "You Know, for Search"
        assert health.json() == {"status": "ok", "pid": process.pid}
    finally:
        process.terminate()
        process.wait(20)
