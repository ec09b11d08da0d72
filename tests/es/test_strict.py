"""The ES-compatible API over real HTTP (httpx): unknown parameters answered as Elasticsearch
does, before anything is written; what the official client and Logstash send is taken; and
``filter_path`` bounded, linear, and able to look inside a stored ``_source``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from latest_server.settings import Settings
from latest_server.web.es import routes as es_api
from tests.es.conftest import EsServerThread


@pytest.fixture
def es(settings: Settings, es_server: Callable[..., EsServerThread]) -> Iterator[httpx.Client]:
    server = es_server(settings)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def test_an_unknown_parameter_is_refused_as_elasticsearch_does(es: httpx.Client) -> None:
    answer = es.put("/latest/_doc/x?foo=1", json={"v": 1})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "illegal_argument_exception"
    assert error["reason"] == "request [/latest/_doc/x] contains unrecognized parameter: [foo]"
    assert error["root_cause"][0]["reason"] == error["reason"]
    assert answer.headers["x-elastic-product"] == "Elasticsearch"
    assert es.get("/latest/_doc/x").status_code == 404  # nothing was written
    two = es.put("/latest/_doc/x?versoin=1&zz=2", json={}).json()["error"]["reason"]
    assert two == (
        "request [/latest/_doc/x] contains unrecognized parameters: "
        "[versoin] -> did you mean any of [version, version_type]?, [zz]"
    )
    piped = es.post("/_bulk?pipeline=p", content=b'{"index":{"_index":"latest"}}\n{}\n')
    assert "unrecognized parameter: [pipeline]" in piped.json()["error"]["reason"]


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "/?pretty&human=true&error_trace=false&filter_path=tagline", None),
        ("PUT", "/latest/_doc/a?refresh=true&timeout=1m&routing=r&wait_for_active_shards=1", {}),
        ("PUT", "/latest/_doc/b?version=5&version_type=external&op_type=index", {}),
        ("PUT", "/latest/_create/c?refresh=wait_for&require_alias=false", {}),
        ("GET", "/latest/_doc/a?_source_includes=v&realtime=true&preference=_local", None),
        ("HEAD", "/latest/_source/a?_source=true", None),
        ("POST", "/latest/_update/a?retry_on_conflict=3&refresh=true", {"doc": {"v": 2}}),
        ("GET", "/_cluster/health?wait_for_status=yellow&timeout=50s&level=cluster", None),
        ("GET", "/_license?accept_enterprise=true", None),
        ("PUT", "/_index_template/t?create=false&master_timeout=30s", {}),
        ("DELETE", "/latest/_doc/a?refresh=true&timeout=1m&routing=r", None),
    ],
)
def test_what_clients_send_is_taken(
    es: httpx.Client, method: str, url: str, body: dict[str, Any] | None
) -> None:
    es.put("/latest/_doc/a", json={"v": 1})
    answer = es.request(method, url, json=body)
    assert answer.status_code < 400, answer.text


def test_logstash_bulk_parameters_are_taken(es: httpx.Client) -> None:
    lines = b'{"index":{"_index":"latest","_id":"l"}}\n{"v":1}\n'
    answer = es.post(
        "/_bulk?filter_path=errors,items.*.error,items.*.status&refresh=false", content=lines
    )
    assert answer.json() == {"errors": False, "items": [{"index": {"status": 201}}]}


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": 1}
    for level in range(depth):
        doc = {f"k{level}": doc, "n": level, "list": [{"m": level}]}
    return doc


def test_filter_path_of_many_double_stars_answers_at_once(es: httpx.Client) -> None:
    """The request of the report: a 20-level document, ``_source_includes=*`` and 40 ``**``.
    It took the event loop for seconds (and gigabytes); the client's timeout is far above
    what it takes now, and a second request is answered meanwhile."""
    assert es.put("/latest/_doc/deep", json=nested(20)).status_code == 201
    value = ".".join(["**"] * 40 + ["zz"])
    answer = es.get(
        "/latest/_doc/deep",
        params={"_source_includes": "*", "filter_path": value},
        timeout=5,
    )
    assert (answer.status_code, answer.json()) == (200, {})
    inside = es.get("/latest/_doc/deep", params={"filter_path": "_source.**.leaf"}).json()
    leaf: Any = inside["_source"]
    for level in reversed(range(20)):
        leaf = leaf[f"k{level}"]
    assert leaf == {"leaf": 1}


def test_filter_path_looks_inside_a_stored_source(es: httpx.Client) -> None:
    es.put("/latest/_doc/m", json={"a": {"b": 1, "c": 2}, "d": 3})
    got = es.get("/latest/_doc/m", params={"filter_path": "_source.a.b,found"})
    assert got.json() == {"_source": {"a": {"b": 1}}, "found": True}
    source = es.get("/latest/_source/m", params={"filter_path": "d"})
    assert source.json() == {"d": 3}
    docs = es.post("/latest/_mget", params={"filter_path": "docs._source.d"}, json={"ids": ["m"]})
    assert docs.json() == {"docs": [{"_source": {"d": 3}}]}


def test_a_filter_path_past_its_bound_is_refused_before_the_write(es: httpx.Client) -> None:
    value = ".".join(["a"] * 101)
    answer = es.put("/latest/_doc/f", params={"filter_path": value}, json={"v": 1})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "illegal_argument_exception"
    assert "filter_path has 101 segments" in answer.json()["error"]["reason"]
    assert es.get("/latest/_doc/f").status_code == 404
    many = ",".join(f"f{n}" for n in range(101))
    refused = es.get("/latest/_doc/f", params={"_source_includes": many})
    assert refused.status_code == 400
    assert "_source has 101" in refused.json()["error"]["reason"]


def test_every_route_declares_its_parameters() -> None:
    """A handler left out of PARAMS would refuse even what Elasticsearch takes."""
    handlers = {handler for _, methods in es_api.TABLE for handler in methods.values()}
    assert handlers <= set(es_api.PARAMS)
