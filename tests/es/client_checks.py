"""Checks of the Elasticsearch-compatible API made with the official client, run as a script in
a subprocess whose sys.path holds one client major (8.x or 9.x), so both majors run in one test
session (tests/es/test_client.py). Real HTTP: the client's urllib3 node against uvicorn.

    python tests/es/client_checks.py http://127.0.0.1:9200 [check ...]

prints one JSON object: {check name: null (passed) or the failure's traceback, "version":
the client's version}. Imports nothing
but the standard library and ``elasticsearch``: the project's packages are not on this path.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

CHECKS: dict[str, Callable[[Any, str], None]] = {}


def check(function: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    CHECKS[function.__name__] = function
    return function


def expect_error(kind: type[Exception], call: Callable[[], Any]) -> Exception:
    try:
        call()
    except kind as exc:
        return exc
    raise AssertionError(f"expected {kind.__name__}")


@check
def info_and_ping(es: Any, url: str) -> None:
    import elasticsearch

    info = es.info()
    assert info["version"]["number"].startswith("8."), info
    assert info["tagline"] == "You Know, for Search"
    assert info["cluster_uuid"]
    assert es.ping() is True
    # Every response carries the product header, or the client refuses to go on.
    assert es.info().meta.headers["x-elastic-product"] == "Elasticsearch"
    assert elasticsearch.__versionstr__


@check
def external_versions(es: Any, url: str) -> None:
    from elasticsearch import ConflictError

    doc_id = "ext-1"
    created = es.index(
        index="latest", id=doc_id, document={"v": 5}, version=5, version_type="external"
    )
    assert created.meta.status == 201
    assert (created["result"], created["_version"]) == ("created", 5)
    again = expect_error(
        ConflictError,
        lambda: es.index(
            index="latest", id=doc_id, document={"v": 5}, version=5, version_type="external"
        ),
    )
    reason = (
        f"[{doc_id}]: version conflict, current version [5] is higher or equal to the one "
        "provided [5]"
    )
    assert reason in str(again), str(again)
    assert again.meta.status == 409
    older = expect_error(
        ConflictError,
        lambda: es.index(
            index="latest", id=doc_id, document={"v": 4}, version=4, version_type="external"
        ),
    )
    assert "provided [4]" in str(older)
    newer = es.index(
        index="latest", id=doc_id, document={"v": 6}, version=6, version_type="external"
    )
    assert newer.meta.status == 200
    assert (newer["result"], newer["_version"]) == ("updated", 6)
    gte = es.index(
        index="latest", id=doc_id, document={"v": 66}, version=6, version_type="external_gte"
    )
    assert (gte.meta.status, gte["_version"]) == (200, 6)
    assert es.get(index="latest", id=doc_id)["_source"] == {"v": 66}
    lower = expect_error(
        ConflictError,
        lambda: es.index(
            index="latest", id=doc_id, document={}, version=5, version_type="external_gte"
        ),
    )
    assert "current version [6] is higher than the one provided [5]" in str(lower)


@check
def version_limits(es: Any, url: str) -> None:
    from elasticsearch import BadRequestError

    zero = es.index(index="latest", id="zero", document={}, version=0, version_type="external")
    assert zero["_version"] == 0
    negative = expect_error(
        BadRequestError,
        lambda: es.index(
            index="latest", id="neg", document={}, version=-1, version_type="external"
        ),
    )
    assert "illegal version value [-1] for version type [EXTERNAL]" in str(negative)
    largest = 2**53
    assert (
        es.index(index="latest", id="big", document={}, version=largest, version_type="external")[
            "_version"
        ]
        == largest
    )
    # Documented deviation (docs/elasticsearch.md, "Deviations"): above 2**53 a version is not
    # exact in Redis' Lua, so it is refused with a 400 instead of being compared wrongly.
    for version in (2**63 - 1, 2**63):
        expect_error(
            BadRequestError,
            lambda v=version: es.index(
                index="latest", id="huge", document={}, version=v, version_type="external"
            ),
        )
    internal = expect_error(
        BadRequestError, lambda: es.index(index="latest", id="int", document={}, version=3)
    )
    assert "internal versioning can not be used" in str(internal)
    force = expect_error(
        BadRequestError,
        lambda: es.index(index="latest", id="f", document={}, version=3, version_type="force"),
    )
    assert "No version type match [force]" in str(force)


@check
def get_and_exists(es: Any, url: str) -> None:
    from elasticsearch import NotFoundError

    es.index(index="latest", id="g1", document={"a": 1, "b": {"c": 2, "d": 3}}, refresh=True)
    found = es.get(index="latest", id="g1")
    assert found["found"] is True
    assert found["_source"] == {"a": 1, "b": {"c": 2, "d": 3}}
    assert found["_primary_term"] == 1
    assert es.get(index="latest", id="g1", source_includes=["b.c"])["_source"] == {"b": {"c": 2}}
    assert es.get(index="latest", id="g1", source_excludes=["b"])["_source"] == {"a": 1}
    assert "_source" not in es.get(index="latest", id="g1", source=False)
    missing = expect_error(NotFoundError, lambda: es.get(index="latest", id="nobody"))
    assert missing.body == {"_index": "latest", "_id": "nobody", "found": False}
    no_index = expect_error(NotFoundError, lambda: es.get(index="no-such-index", id="x"))
    assert "index_not_found_exception" in str(no_index)
    assert bool(es.exists(index="latest", id="g1")) is True
    assert bool(es.exists(index="latest", id="nobody")) is False
    assert es.get_source(index="latest", id="g1")["a"] == 1


@check
def mget_orders_and_reports(es: Any, url: str) -> None:
    es.index(index="latest", id="m1", document={"n": 1})
    es.index(index="other-index", id="m2", document={"n": 2})
    by_ids = es.mget(index="latest", ids=["m1", "nobody", "m1"])
    assert [d["_id"] for d in by_ids["docs"]] == ["m1", "nobody", "m1"]
    assert [d["found"] for d in by_ids["docs"]] == [True, False, True]
    assert by_ids["docs"][0]["_source"] == {"n": 1}
    by_docs = es.mget(
        docs=[
            {"_index": "other-index", "_id": "m2"},
            {"_index": "latest", "_id": "m1", "_source": False},
            {"_index": "no-such-index", "_id": "c"},
        ]
    )
    first, second, third = by_docs["docs"]
    assert first["_source"] == {"n": 2}
    assert second["found"] is True and "_source" not in second
    assert third["error"]["type"] == "index_not_found_exception"
    # An index is its own namespace: the same id elsewhere is another document.
    assert es.mget(index="other-index", ids=["m1"])["docs"][0]["found"] is False


@check
def bulk_mixed_items(es: Any, url: str) -> None:
    operations = [
        {"index": {"_index": "latest", "_id": "b1", "version": 10, "version_type": "external"}},
        {"n": 10},
        {"index": {"_index": "latest", "_id": "b1", "version": 9, "version_type": "external"}},
        {"n": 9},
        {"index": {"_index": "latest", "_id": "b2"}},
        [1, 2],
        {"index": {"_index": "latest", "_id": "b3", "version": "x", "version_type": "external"}},
        {"n": 0},
        {"create": {"_index": "latest", "_id": "b1"}},
        {"n": 0},
        {"delete": {"_index": "latest", "_id": "b4"}},
        {"index": {"_index": "latest", "_id": "b1", "version": "11", "version_type": "external"}},
        {"n": 11},
    ]
    response = es.bulk(operations=operations)
    items = response["items"]
    assert response["errors"] is True
    assert [next(iter(item)) for item in items] == [
        "index",
        "index",
        "index",
        "index",
        "create",
        "delete",
        "index",
    ]
    statuses = [next(iter(item.values()))["status"] for item in items]
    assert statuses == [201, 409, 400, 400, 409, 404, 200], statuses
    assert items[2]["index"]["error"]["type"] == "document_parsing_exception"
    assert items[3]["index"]["error"]["type"] == "illegal_argument_exception"
    assert "document already exists" in items[4]["create"]["error"]["reason"]
    assert items[5]["delete"]["result"] == "not_found"
    assert "error" not in items[5]["delete"]
    assert es.get(index="latest", id="b1")["_source"] == {"n": 11}
    clean = es.bulk(operations=[{"index": {"_index": "latest", "_id": "b5"}}, {"n": 1}])
    assert clean["errors"] is False


@check
def bulk_update_between_writes(es: Any, url: str) -> None:
    """An update line between index lines runs after the writes before it and before those
    after it, on the document as they leave it."""
    operations = [
        {"index": {"_index": "latest", "_id": "u1", "version": 1, "version_type": "external"}},
        {"a": 1, "b": {"c": 1}},
        {"update": {"_index": "latest", "_id": "u1"}},
        {"doc": {"b": {"d": 2}}},
        {"index": {"_index": "latest", "_id": "u2"}},
        {"x": 1},
        {"update": {"_index": "latest", "_id": "u2"}},
        "not an object",
        {"update": {"_index": "latest", "_id": "u2"}},
        {"doc": {"y": 2}},
    ]
    items = es.bulk(operations=operations)["items"]
    statuses = [next(iter(item.values()))["status"] for item in items]
    assert statuses == [201, 200, 201, 400, 200], statuses
    assert items[1]["update"]["result"] == "updated"
    assert es.get(index="latest", id="u1")["_source"] == {"a": 1, "b": {"c": 1, "d": 2}}
    assert es.get(index="latest", id="u2")["_source"] == {"x": 1, "y": 2}


@check
def helpers_bulk(es: Any, url: str) -> None:
    from elasticsearch import helpers

    actions = [
        {
            "_index": "latest",
            "_id": f"h{i % 50}",
            "_source": {"i": i},
            "version": i,
            "version_type": "external",
        }
        for i in range(200)
    ]
    actions += [
        {
            "_index": "latest",
            "_id": "h0",
            "_source": {"i": -1},
            "version": 0,
            "version_type": "external",
        }
    ]
    ok, errors = helpers.bulk(es, actions, chunk_size=64, ignore_status=(409,))
    # The stale one is ignored (no exception) and listed, not counted as a success.
    assert ok == 200, ok
    assert [next(iter(e.values()))["status"] for e in errors] == [409]
    assert es.get(index="latest", id="h7")["_source"] == {"i": 157}
    failed = expect_error(
        helpers.BulkIndexError,
        lambda: helpers.bulk(
            es,
            [
                {
                    "_index": "latest",
                    "_id": "h1",
                    "_source": {"i": 1},
                    "version": 1,
                    "version_type": "external",
                },
                {
                    "_index": "latest",
                    "_id": "h9",
                    "_source": {"i": 1},
                    "version": -5,
                    "version_type": "external",
                },
            ],
        ),
    )
    statuses = sorted(next(iter(e.values()))["status"] for e in failed.errors)
    assert statuses == [400, 409], statuses
    streamed = list(
        helpers.streaming_bulk(
            es,
            ({"_index": "latest", "_id": f"s{i}", "_source": {"i": i}} for i in range(30)),
            chunk_size=7,
        )
    )
    assert all(ok for ok, _ in streamed) and len(streamed) == 30


@check
def compressed_requests(es: Any, url: str) -> None:
    from elasticsearch import Elasticsearch

    with Elasticsearch(url, http_compress=True) as gz:
        gz.index(
            index="latest", id="gz", document={"z": "x" * 5000}, version=1, version_type="external"
        )
        assert gz.get(index="latest", id="gz")["_source"]["z"] == "x" * 5000
        response = gz.bulk(operations=[{"index": {"_index": "latest", "_id": "gz2"}}, {"z": 1}])
        assert response["errors"] is False
        # a larger compressed body: every document of it is written, none left behind
        operations: list[Any] = []
        for n in range(300):
            operations += [
                {"index": {"_index": "latest", "_id": f"gz-{n}"}},
                {"n": n, "pad": "y" * n},
            ]
        assert gz.bulk(operations=operations)["errors"] is False
        found = gz.mget(index="latest", ids=[f"gz-{n}" for n in range(300)])["docs"]
        assert [doc["_source"]["n"] for doc in found] == list(range(300))


@check
def ids_with_slashes(es: Any, url: str) -> None:
    doc_id = "iisc.ac.in/aqm/sensor 1?x=1"
    es.index(index="latest", id=doc_id, document={"s": 1})
    found = es.get(index="latest", id=doc_id)
    assert found["_id"] == doc_id and found["_source"] == {"s": 1}
    assert es.mget(index="latest", ids=[doc_id])["docs"][0]["found"] is True
    assert es.delete(index="latest", id=doc_id)["result"] == "deleted"


@check
def delete_leaves_a_tombstone(es: Any, url: str) -> None:
    from elasticsearch import ConflictError, NotFoundError

    es.index(index="latest", id="d1", document={"x": 1}, version=10, version_type="external")
    deleted = es.delete(index="latest", id="d1", version=20, version_type="external")
    assert (deleted["result"], deleted["_version"]) == ("deleted", 20)
    expect_error(NotFoundError, lambda: es.get(index="latest", id="d1"))
    stale = expect_error(
        ConflictError,
        lambda: es.index(index="latest", id="d1", document={}, version=15, version_type="external"),
    )
    assert "current version [20]" in str(stale)
    again = es.index(
        index="latest", id="d1", document={"x": 2}, version=21, version_type="external"
    )
    assert (again["result"], again["_version"]) == ("created", 21)
    missing = expect_error(NotFoundError, lambda: es.delete(index="latest", id="nobody"))
    assert missing.body["result"] == "not_found"
    old = expect_error(
        ConflictError,
        lambda: es.delete(index="latest", id="d1", version=5, version_type="external"),
    )
    assert old.meta.status == 409


@check
def create_and_update(es: Any, url: str) -> None:
    from elasticsearch import ConflictError, NotFoundError

    created = es.create(index="latest", id="c1", document={"a": 1})
    assert created["result"] == "created"
    exists = expect_error(
        ConflictError, lambda: es.create(index="latest", id="c1", document={"a": 2})
    )
    assert "document already exists" in str(exists)
    updated = es.update(index="latest", id="c1", doc={"b": {"c": 1}})
    assert updated["result"] == "updated"
    assert es.get(index="latest", id="c1")["_source"] == {"a": 1, "b": {"c": 1}}
    assert es.update(index="latest", id="c1", doc={"a": 1})["result"] == "noop"
    missing = expect_error(NotFoundError, lambda: es.update(index="latest", id="c2", doc={"a": 1}))
    assert "document_missing_exception" in str(missing)
    upsert = es.update(index="latest", id="c2", doc={"a": 3}, doc_as_upsert=True)
    assert upsert["result"] == "created"
    assert es.get(index="latest", id="c2")["_source"] == {"a": 3}


@check
def logstash_id_convention(es: Any, url: str) -> None:
    """The reference deployment: _id = sha1(resource id), version = packet time in ms."""
    resource = "iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86/rs.iudx.io/aqm/s1"
    digest = hashlib.sha1(resource.encode()).hexdigest()
    packet = {"id": resource, "observationDateTime": "2024-05-01T10:00:00+05:30", "pm2p5": 7}
    es.index(
        index="latest", id=digest, document=packet, version=1714537800000, version_type="external"
    )
    by_digest = es.get(index="latest", id=digest)
    by_id = es.get(index="latest", id=resource)
    assert by_digest["_source"] == by_id["_source"] == packet
    assert by_digest["_version"] == 1714537800000
    docs = es.mget(index="latest", ids=[digest, resource])["docs"]
    assert [d["found"] for d in docs] == [True, True]


@check
def index_housekeeping(es: Any, url: str) -> None:
    from elasticsearch import BadRequestError

    name = f"made-{sys.version_info[1]}-{hashlib.sha1(url.encode()).hexdigest()[:6]}"
    assert bool(es.indices.exists(index=name)) is False
    created = es.indices.create(index=name, mappings={"dynamic": False})
    assert created["acknowledged"] is True and created["index"] == name
    assert bool(es.indices.exists(index=name)) is True
    again = expect_error(BadRequestError, lambda: es.indices.create(index=name))
    assert "resource_already_exists_exception" in str(again)
    assert es.indices.refresh(index=name)["_shards"]["failed"] == 0
    assert es.cluster.health()["status"] == "green"
    bad = expect_error(BadRequestError, lambda: es.indices.create(index="Upper"))
    assert "invalid_index_name_exception" in str(bad)


def main(argv: list[str]) -> int:
    import elasticsearch
    from elasticsearch import Elasticsearch

    url, wanted = argv[1], argv[2:] or list(CHECKS)
    results: dict[str, str | None] = {"version": elasticsearch.__versionstr__}
    with Elasticsearch(url, request_timeout=30) as es:
        for name in wanted:
            try:
                CHECKS[name](es, url)
            except Exception:
                results[name] = traceback.format_exc()
            else:
                results[name] = None
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
