"""Tokens on the Elasticsearch-compatible API: the official client with ``basic_auth=`` and
``api_key=`` (both forms) and Bearer, Logstash's requests replayed with Basic auth, indices
checked, deletes and index creation only for ``admin``, ``_bulk`` and ``_mget`` items refused one
by one, and Elasticsearch's ``security_exception`` shapes for 401 and 403."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from elasticsearch import AuthenticationException, AuthorizationException, Elasticsearch

from latest_server.settings import Settings
from tests.auth.helpers import secret, write_tokens
from tests.conftest import ServerThread
from tests.es.conftest import EsServerThread


@pytest.fixture
def server(
    settings: Settings, tmp_path: Path, es_server: Callable[..., EsServerThread]
) -> EsServerThread:
    return es_server(settings, tokens_file=str(write_tokens(tmp_path / "tokens.toml")))


def client(server: EsServerThread, **auth: object) -> Elasticsearch:
    return Elasticsearch(server.url, request_timeout=10, **auth)  # type: ignore[arg-type]


def test_the_official_client_with_basic_auth_and_api_keys(server: EsServerThread) -> None:
    writer = client(server, basic_auth=("logstash", secret("both")))
    assert writer.info()["version"]["number"].startswith("8")
    for doc_id in ("x/1", "a/1"):
        written = writer.index(
            index="latest", id=doc_id, document={"id": doc_id, "ts": 1_700_000_000}
        )
        assert written["result"] == "created"
    encoded = base64.b64encode(f"key-id:{secret('reader')}".encode()).decode()
    for auth in (
        {"api_key": ("key-id", secret("reader"))},
        {"api_key": encoded},
        {"bearer_auth": secret("reader")},
    ):
        es = client(server, **auth)
        assert es.get(index="latest", id="a/1")["_source"]["ts"] == 1_700_000_000
    reader = client(server, api_key=("key-id", secret("reader")))
    with pytest.raises(AuthorizationException) as refused:  # write scope missing
        reader.index(index="latest", id="a/1", document={"id": "a/1", "ts": 1_700_000_000})
    assert refused.value.status_code == 403
    assert refused.value.body["error"]["type"] == "security_exception"
    assert "is unauthorized for user [reader]" in refused.value.body["error"]["reason"]
    with pytest.raises(AuthorizationException):  # outside the reader's prefixes
        reader.get(index="latest", id="x/1")
    with pytest.raises(AuthenticationException) as unknown:
        client(server, basic_auth=("logstash", "lt_wrong")).info()
    assert unknown.value.status_code == 401
    assert unknown.value.body["error"]["type"] == "security_exception"
    with pytest.raises(AuthenticationException):
        client(server).info()


def test_indices_deletes_and_items(server: EsServerThread) -> None:
    logs = client(server, basic_auth=("u", secret("logs")))
    assert logs.index(index="logs", id="l/1", document={"ts": 1_700_000_000})["result"] == "created"
    with pytest.raises(AuthorizationException) as other_index:
        logs.index(index="latest", id="l/1", document={"ts": 1_700_000_000})
    assert "[latest]" in other_index.value.body["error"]["reason"]
    with pytest.raises(AuthorizationException):  # deletes are admin's
        logs.delete(index="logs", id="l/1")
    with pytest.raises(AuthorizationException):
        logs.indices.create(index="logs2")
    bulk = logs.bulk(
        operations=[
            {"index": {"_index": "logs", "_id": "l/2"}},
            {"ts": 1_700_000_001},
            {"index": {"_index": "latest", "_id": "l/3"}},
            {"ts": 1_700_000_001},
            {"delete": {"_index": "logs", "_id": "l/1"}},
        ]
    )
    statuses = [next(iter(item.values()))["status"] for item in bulk["items"]]
    assert statuses == [201, 403, 403]
    assert bulk["items"][1]["index"]["error"]["type"] == "security_exception"
    found = logs.mget(docs=[{"_index": "logs", "_id": "l/2"}, {"_index": "latest", "_id": "l/2"}])
    assert found["docs"][0]["found"] is True
    assert found["docs"][1]["error"]["type"] == "security_exception"
    admin = client(server, basic_auth=("root", secret("admin")))
    assert admin.delete(index="logs", id="l/1")["result"] == "deleted"
    assert admin.get(index="logs", id="l/2")["found"] is True
    # prefixes hold on the ES API too: the writer may write only a/
    writer = client(server, basic_auth=("w", secret("writer")))
    bulk = writer.bulk(
        operations=[
            {"index": {"_index": "latest", "_id": "a/1"}},
            {"id": "a/1", "ts": 1_700_000_000},
            {"index": {"_index": "latest", "_id": "b/1"}},
            {"id": "b/1", "ts": 1_700_000_000},
        ]
    )
    assert [next(iter(i.values()))["status"] for i in bulk["items"]] == [201, 403]


def test_a_logstash_bulk_with_basic_auth(server: EsServerThread) -> None:
    """Logstash's start-up probes and a gzip _bulk as it sends them, with ``user => "logstash"``
    and ``password => <token>`` (tests/es/test_logstash.py has the requests without tokens)."""
    basic = base64.b64encode(f"logstash:{secret('both')}".encode()).decode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Logstash/8.15.0 logstash-output-elasticsearch/11.22.7",
        "Authorization": f"Basic {basic}",
    }
    body = (
        orjson.dumps({"index": {"_id": None, "_index": "latest", "routing": None}})
        + b"\n"
        + orjson.dumps({"id": "ls/1", "ts": 1_700_000_000, "v": 1})
        + b"\n"
    )
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        assert http.head("/").status_code == 200
        assert http.get("/_license").status_code == 200
        put = http.put("/_index_template/ecs-logstash", json={"index_patterns": ["x-*"]})
        assert put.json() == {"acknowledged": True}
        answer = http.post(
            "/_bulk", content=gzip.compress(body), headers={"Content-Encoding": "gzip"}
        )
        assert answer.status_code == 200
        assert answer.json()["errors"] is False
        bad = http.post("/_bulk", content=body, headers={"Authorization": "Basic bG9nc3Rhc2g6eA=="})
        assert bad.status_code == 401
        assert bad.headers["www-authenticate"] == 'Basic realm="latest-server", ApiKey, Bearer'
        assert bad.headers["x-elastic-product"] == "Elasticsearch"
        assert bad.json()["error"]["root_cause"][0]["type"] == "security_exception"
        assert bad.json()["status"] == 401


def test_the_api_under_a_prefix_of_the_main_port(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> None:
    """LATEST_ES_PREFIX: the guard of the main app answers below it in Elasticsearch's shapes."""
    tokens = write_tokens(tmp_path / "tokens.toml")
    server = http_server(settings, amqp_url=None, tokens_file=str(tokens), es_prefix="/es")
    es = Elasticsearch(server.url + "/es", basic_auth=("u", secret("both")), request_timeout=10)
    es.index(index="latest", id="p/1", document={"id": "p/1", "ts": 1_700_000_000})
    with httpx.Client(base_url=server.url, timeout=10) as http:
        bare = http.get("/es/latest/_doc/p%2F1")
        assert bare.status_code == 401
        assert bare.json()["error"]["type"] == "security_exception"
        assert bare.headers["x-elastic-product"] == "Elasticsearch"
        read = http.get("/latest/p%2F1", headers={"Authorization": f"Bearer {secret('both')}"})
        assert read.json()["id"] == "p/1"  # one write path: REST sees what ES wrote
        other = http.get("/latest/p%2F1", headers={"Authorization": f"Bearer {secret('logs')}"})
        assert other.status_code == 200  # "logs" may read every variable on REST
        es_refused = http.get(
            "/es/latest/_doc/p%2F1", headers={"Authorization": f"Bearer {secret('logs')}"}
        )
        assert es_refused.status_code == 403  # but not the index "latest"
        assert "on index [latest]" in es_refused.json()["error"]["reason"]
