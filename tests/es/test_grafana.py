"""Grafana's Elasticsearch data source against the ES-compatible API, over real HTTP: its health
check, the version and field lookups, a metric query (date_histogram + max/avg), a terms split,
a raw-data query, a logs query, as its Go backend sends them (tests/es/grafana.py), over data in
Redis, transfer and merged objects (file:// and S3 on moto). The answers are checked against
values counted from the packets the test wrote."""

from __future__ import annotations

import math
import statistics
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.web.es.errors import IllegalArgument
from latest_server.web.es.query import Fields, plan
from latest_server.web.es.rows import variables
from tests.auth.helpers import bearer, write_tokens
from tests.es.conftest import EsServerThread
from tests.es.grafana import (
    COUNT,
    FROM_MS,
    MSEARCH,
    T0,
    TIME_FIELD,
    TO_MS,
    VARIABLES,
    Entry,
    fill,
    fixed_buckets,
    histogram,
    msearch_body,
    series,
    time_filter,
)

NDJSON = {"content-type": "application/x-ndjson"}
FIELDS = Fields(Settings())


@pytest.fixture
async def es(
    settings: Settings,
    objects_url: str,
    stores: Resources,
    es_server: Callable[..., EsServerThread],
) -> AsyncIterator[tuple[httpx.AsyncClient, list[Entry]]]:
    entries = await fill(stores)
    server = es_server(settings, objects_url=objects_url)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client, entries


def close(a: Any, b: Any) -> bool:
    """Equal JSON, numbers within a relative 1e-9."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


async def msearch(client: httpx.AsyncClient, *bodies: dict[str, Any]) -> list[dict[str, Any]]:
    reply = await client.post(MSEARCH, content=msearch_body(*bodies), headers=NDJSON)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-elastic-product"] == "Elasticsearch"
    responses: list[dict[str, Any]] = reply.json()["responses"]
    return responses


async def test_health_version_and_fields(es: tuple[httpx.AsyncClient, list[Entry]]) -> None:
    client, _ = es
    health = await client.get("/_cluster/health", params={"wait_for_status": "yellow"})
    assert health.status_code == 200
    assert health.json()["status"] != "red"  # healthcheck.go: red is the only failure
    info = (await client.get("/")).json()
    major, minor = (int(part) for part in info["version"]["number"].split(".")[:2])
    assert (major, minor) >= (7, 10)  # the oldest version Grafana takes
    assert info["version"]["build_flavor"] != "serverless"  # cluster_info.go

    mapping = (await client.get("/latest/_mapping")).json()
    properties = mapping["latest"]["mappings"]["properties"]
    assert properties["ts"] == {"type": "date"}
    assert properties["observationDateTime"] == {"type": "date"}  # LATEST_TIME_FIELD's first
    assert properties["temp"] == {"type": "double"}
    assert properties["unit"] == {"type": "keyword"}
    assert properties["id"] == {"type": "keyword"}
    assert properties["meta"] == {"properties": {"rssi": {"type": "double"}}}

    caps = (await client.get("/latest/_field_caps", params={"fields": "*"})).json()
    assert caps["indices"] == ["latest"]
    assert caps["fields"]["ts"]["date"]["aggregatable"] is True
    assert caps["fields"]["meta.rssi"]["double"]["type"] == "double"
    assert caps["fields"]["unit"]["keyword"]["searchable"] is True
    missing = await client.get("/nothing/_mapping")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "index_not_found_exception"


async def test_metric_query_max_and_avg(es: tuple[httpx.AsyncClient, list[Entry]]) -> None:
    """Two queries of one panel (testdata_request/metric_multi): max and avg of one variable
    per minute, the variable picked by Grafana's query string."""
    client, entries = es
    query = time_filter("id:room\\/2")
    bodies = [
        {
            "size": 0,
            "query": query,
            "aggs": {
                "2": {"date_histogram": histogram("1m"), "aggs": {"1": {kind: {"field": "temp"}}}}
            },
        }
        for kind in ("max", "avg")
    ]
    highest, average = await msearch(client, *bodies)
    mine = [e for e in entries if e.variable == "room/2"]
    expected = list(fixed_buckets(mine, 60_000))
    assert len(expected) == (TO_MS - FROM_MS) // 60_000 + 1
    assert series(highest["aggregations"]["2"]["buckets"], "1") == [
        (key, max(e.temp for e in inside) if inside else None) for key, inside in expected
    ]
    got = series(average["aggregations"]["2"]["buckets"], "1")
    assert [key for key, _ in got] == [key for key, _ in expected]
    for (_, value), (_, inside) in zip(got, expected, strict=True):
        assert value == (
            pytest.approx(statistics.fmean(e.temp for e in inside)) if inside else None
        )
    buckets = highest["aggregations"]["2"]["buckets"]
    assert [b["doc_count"] for b in buckets] == [len(inside) for _, inside in expected]
    assert all(b["key_as_string"] == str(b["key"]) for b in buckets)  # format epoch_millis
    assert highest["hits"]["total"] == {"value": len(mine), "relation": "eq"}
    assert highest["status"] == 200


async def test_terms_split_with_min_and_max(es: tuple[httpx.AsyncClient, list[Entry]]) -> None:
    """testdata_request/metric_complex: a terms split on the id (ordered by key, descending),
    then a date_histogram with max and min."""
    client, entries = es
    body = {
        "aggs": {
            "4": {
                "aggs": {
                    "2": {
                        "aggs": {"1": {"max": {"field": "temp"}}, "3": {"min": {"field": "temp"}}},
                        "date_histogram": histogram("5m"),
                    }
                },
                "terms": {"field": "id", "order": {"_key": "desc"}, "size": 2},
            }
        },
        "query": time_filter(),
        "size": 0,
    }
    [answer] = await msearch(client, body)
    split = answer["aggregations"]["4"]
    assert [b["key"] for b in split["buckets"]] == ["room/3", "room/2"]
    assert split["sum_other_doc_count"] == sum(e.variable == "room/1" for e in entries)
    for bucket in split["buckets"]:
        mine = [e for e in entries if e.variable == bucket["key"]]
        assert bucket["doc_count"] == len(mine)
        expected = list(fixed_buckets(mine, 300_000))
        got = bucket["2"]["buckets"]
        assert series(got, "1") == [
            (k, max((e.temp for e in i), default=None)) for k, i in expected
        ]
        assert series(got, "3") == [
            (k, min((e.temp for e in i), default=None)) for k, i in expected
        ]
    assert answer["hits"]["total"]["value"] == len(entries)
    # a dashboard variable's values: Grafana's terms lookup (size 500, by key)
    lookup = {
        "size": 0,
        "query": time_filter(),
        "aggs": {"1": {"terms": {"field": "id", "size": 500, "order": {"_key": "asc"}}}},
    }
    [values] = await msearch(client, lookup)
    assert [(b["key"], b["doc_count"]) for b in values["aggregations"]["1"]["buckets"]] == [
        (v, sum(e.variable == v for e in entries)) for v in VARIABLES
    ]


async def test_raw_data_and_logs(es: tuple[httpx.AsyncClient, list[Entry]]) -> None:
    """testdata_request/raw_data and logs: the newest 500 hits, sorted on the time field, with
    the time as docvalue and in ``fields``; the logs query also asks highlights and its log
    volume histogram."""
    client, entries = es
    raw = {
        "docvalue_fields": [TIME_FIELD],
        "query": time_filter('id:room\\/1 OR id:"room/3"'),
        "script_fields": {},
        "size": 50,
        "sort": {
            TIME_FIELD: {"order": "desc", "unmapped_type": "boolean"},
            "_doc": {"order": "desc"},
        },
        "fields": [{"field": TIME_FIELD, "format": "strict_date_optional_time_nanos"}],
    }
    logs = raw | {
        "size": 500,
        "highlight": {
            "pre_tags": ["@HIGHLIGHT@"],
            "post_tags": ["@/HIGHLIGHT@"],
            "fragment_size": 2147483647,
            "fields": {"*": {}},
        },
        "aggs": {"1": {"date_histogram": histogram("60000ms")}},
    }
    raw_answer, logs_answer = await msearch(client, raw, logs)
    chosen = [e for e in entries if e.variable in ("room/1", "room/3")]
    newest = sorted(chosen, key=lambda e: (e.ts_ms, e.variable), reverse=True)
    hits = raw_answer["hits"]["hits"]
    assert [h["_source"] for h in hits] == [e.doc for e in newest[:50]]
    # only the newest of each variable were read; the total is counted by the engine
    assert raw_answer["hits"]["total"] == {"value": len(chosen), "relation": "eq"}
    tracked = await client.post("/latest/_search", json=raw | {"track_total_hits": 100})
    assert tracked.json()["hits"]["total"] == {"value": 100, "relation": "gte"}
    untracked = await client.post("/latest/_search", json=raw | {"track_total_hits": False})
    assert untracked.json()["hits"]["total"]["relation"] == "gte"
    first = hits[0]
    assert first["_index"] == "latest"
    key, _, seq = first["_id"].partition(":")
    assert key == keys.key_for(newest[0].variable) and int(seq) > 0
    moment = datetime.fromtimestamp(newest[0].ts_ms / 1000, UTC)
    assert first["fields"][TIME_FIELD] == [moment.strftime("%Y-%m-%dT%H:%M:%S.000000000Z")]
    assert first["sort"][0] == newest[0].ts_ms
    assert len({h["_id"] for h in hits}) == len(hits)

    log_hits = logs_answer["hits"]["hits"]
    assert len(log_hits) == len(chosen) == 2 * COUNT
    assert sorted((h["_source"]["id"], h["_source"]["ts"]) for h in log_hits) == sorted(
        (e.variable, e.doc["ts"]) for e in chosen
    )
    assert logs_answer["hits"]["total"] == {"value": len(chosen), "relation": "eq"}
    volume = logs_answer["aggregations"]["1"]["buckets"]
    assert [(b["key"], b["doc_count"]) for b in volume] == [
        (k, len(i)) for k, i in fixed_buckets(chosen, 60_000)
    ]


async def test_every_metric_and_calendar_zones(es: tuple[httpx.AsyncClient, list[Entry]]) -> None:
    client, entries = es
    aggs = {
        "c": {"cardinality": {"field": "meta.rssi"}},
        "n": {"value_count": {"field": "temp"}},
        "s": {"sum": {"field": "temp"}},
        "p": {"percentiles": {"field": "temp", "percents": ["25", "50", "99"]}},
        "x": {"extended_stats": {"field": "temp", "sigma": "2"}},
        "v": {"cardinality": {"field": "id"}},
    }
    for zone in ("Asia/Kathmandu", "America/St_Johns", "UTC"):
        spec = {
            "field": TIME_FIELD,
            "calendar_interval": "1h",
            "time_zone": zone,
            "min_doc_count": 1,
        }
        # "h" counts strings too (cardinality, value_count): computed from the entries; "e",
        # numbers only, by the aggregation engine: both must give the data's values
        numeric = {name: aggs[name] for name in ("s", "p", "x")}
        body = {
            "size": 0,
            "query": time_filter(),
            "aggs": {
                "h": {"date_histogram": spec, "aggs": aggs},
                "e": {"date_histogram": spec, "aggs": numeric},
            },
        }
        [answer] = await msearch(client, body)
        assert answer["status"] == 200, answer
        engine = answer["aggregations"]["e"]["buckets"]
        rows = answer["aggregations"]["h"]["buckets"]
        assert len(engine) == len(rows)
        for ours, theirs in zip(engine, rows, strict=True):
            assert close({k: ours[k] for k in numeric}, {k: theirs[k] for k in numeric})
            assert (ours["key"], ours["doc_count"]) == (theirs["key"], theirs["doc_count"])
        tz = ZoneInfo(zone)
        groups: dict[int, list[Entry]] = {}
        for entry in entries:
            local = datetime.fromtimestamp(entry.ts_ms / 1000, tz).replace(minute=0, second=0)
            groups.setdefault(int(local.timestamp() * 1000), []).append(entry)
        got = answer["aggregations"]["h"]["buckets"]
        assert [(b["key"], b["doc_count"]) for b in got] == sorted(
            (k, len(v)) for k, v in groups.items()
        ), zone
        for bucket in got:
            inside = groups[bucket["key"]]
            temps = [e.temp for e in inside]
            assert bucket["c"]["value"] == len({e.doc["meta"]["rssi"] for e in inside})
            assert bucket["n"]["value"] == len(temps)
            assert bucket["s"]["value"] == pytest.approx(sum(temps))
            quartiles = statistics.quantiles(temps, n=100, method="inclusive")
            assert bucket["p"]["values"] == pytest.approx(
                {"25.0": quartiles[24], "50.0": quartiles[49], "99.0": quartiles[98]}
            )
            stats = bucket["x"]
            assert stats["count"] == len(temps)
            assert stats["std_deviation"] == pytest.approx(statistics.pstdev(temps))
            assert stats["variance_sampling"] == pytest.approx(statistics.variance(temps))
            upper = statistics.fmean(temps) + 2 * statistics.pstdev(temps)
            assert stats["std_deviation_bounds"]["upper"] == pytest.approx(upper)
            assert bucket["v"]["value"] == len({e.variable for e in inside})
            local = datetime.fromtimestamp(bucket["key"] / 1000, tz)
            assert local.minute == 0 and local.second == 0
            offset = local.utcoffset() or timedelta(0)
            assert bucket["key_as_string"].endswith("Z" if not offset else local.isoformat()[-6:])


async def test_search_count_and_hits_over_every_tier(
    es: tuple[httpx.AsyncClient, list[Entry]],
) -> None:
    client, entries = es
    mine = sorted((e for e in entries if e.variable == "room/2"), key=lambda e: e.ts_ms)
    window = {
        "range": {
            "ts": {
                "gte": "2023-11-14T22:15:00Z",
                "lt": mine[-1].ts_ms,
                "format": "strict_date_optional_time||epoch_millis",
            }
        }
    }
    query = {"bool": {"filter": [{"term": {"id": "room/2"}}, window]}}
    inside = [
        e
        for e in mine
        if datetime(2023, 11, 14, 22, 15, tzinfo=UTC).timestamp() * 1000 <= e.ts_ms < mine[-1].ts_ms
    ]
    counted = await client.post("/latest/_count", json={"query": query})
    assert counted.json()["count"] == len(inside)
    page = await client.post(
        "/latest/_search",
        json={"query": query, "size": 1000, "sort": [{"ts": "asc"}], "_source": ["temp"]},
    )
    hits = page.json()["hits"]["hits"]
    assert [h["_source"] for h in hits] == [{"temp": e.temp} for e in inside]
    assert [h["sort"][0] for h in hits] == [e.ts_ms for e in inside]
    filtered = await client.post(
        "/latest/_search?filter_path=hits.hits._source.temp",
        json={"query": {"term": {"id": "room/2"}}, "size": 3, "sort": [{"ts": "asc"}]},
    )
    assert filtered.json() == {"hits": {"hits": [{"_source": {"temp": e.temp}} for e in mine[:3]]}}
    every = await client.post("/latest/_count", json={"query": {"terms": {"id": list(VARIABLES)}}})
    assert every.json()["count"] == len(entries)
    listed = await client.get("/latest/_count")  # no filter on the id: every variable listed
    assert listed.json()["count"] == len(entries)
    pattern = await client.post(
        "/latest/_count", json={"query": {"query_string": {"query": "id:room\\/*"}}}
    )
    assert pattern.json()["count"] == len(entries)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"query": {"wildcard": {"id": "r*"}}}, "query.wildcard"),
        ({"query": {"bool": {"should": [{"term": {"id": "x"}}]}}}, "bool.should"),
        ({"query": {"range": {"ts": {"gte": "now-1h"}}}}, "range.ts.gte: now-1h"),
        ({"query": {"term": {"unit": "C"}}}, "term.unit"),
        ({"sort": [{"temp": "desc"}]}, "sort.temp"),
        ({"script_fields": {"f": {"script": "1"}}}, "script_fields"),
        ({"search_after": [1, 2]}, "search_after"),
        ({"aggs": {"d": {"derivative": {"buckets_path": "_count"}}}}, "aggs.d.derivative"),
        ({"aggs": {"t": {"terms": {"field": "unit"}}}}, "aggs.t.terms.field: unit"),
        ({"aggs": {"h": {"histogram": {"field": "temp", "interval": 5}}}}, "aggs.h.histogram"),
        ({"aggs": {"m": {"avg": {"field": "temp", "script": "x"}}}}, "aggs.m.avg.script"),
        ({"query": {"query_string": {"query": "temp:>5"}}}, "query_string: temp:>5"),
    ],
)
async def test_unsupported_parts_are_400_naming_them(
    settings: Settings,
    es_server: Callable[..., EsServerThread],
    body: dict[str, Any],
    named: str,
) -> None:
    server = es_server(settings)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        alone = await client.post("/latest/_search", json=body)
        assert alone.status_code == 400, alone.text
        error = alone.json()
        assert error["status"] == 400
        assert error["error"]["type"] == "illegal_argument_exception"
        assert error["error"]["root_cause"][0]["reason"] == error["error"]["reason"]
        assert f"[{named}]" in error["error"]["reason"]
        # in an _msearch, that search's item is the error, the others are answered
        ok = {"size": 0, "query": {"term": {"id": "room/1"}}}
        reply = await client.post(MSEARCH, content=msearch_body(body, ok), headers=NDJSON)
        bad, good = reply.json()["responses"]
        assert bad["status"] == 400 and f"[{named}]" in bad["error"]["reason"]
        assert good["status"] == 200 and good["hits"]["total"]["value"] == 0


async def test_bounds_of_a_search(
    settings: Settings, es_server: Callable[..., EsServerThread]
) -> None:
    server = es_server(settings, es_search_max_variables=2, es_search_max_buckets=10)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        many = await client.post(
            "/latest/_count", json={"query": {"terms": {"id": ["a", "b", "c"]}}}
        )
        assert many.status_code == 400
        assert "a filter on the id is required" in many.json()["error"]["reason"]
        spec = {"field": "ts", "fixed_interval": "1s", "extended_bounds": {"min": 0, "max": 60_000}}
        buckets = await client.post(
            "/latest/_search",
            json={
                "size": 0,
                "aggs": {"h": {"date_histogram": spec}},
                "query": {"term": {"id": "a"}},
            },
        )
        assert buckets.status_code == 400
        assert buckets.json()["error"]["type"] == "too_many_buckets_exception"
        typed = await client.post("/latest/_search?typed_keys=true", json={})
        assert typed.status_code == 400 and "typed_keys" in typed.json()["error"]["reason"]
        window = await client.post("/latest/_search", json={"size": 10_001})
        assert window.status_code == 400 and "Result window is too large" in window.text
        body = orjson.dumps({"index": "latest"}) + b"\n"
        unpaired = await client.post("/_msearch", content=body, headers=NDJSON)
        assert unpaired.status_code == 400


async def test_without_latest_hashes_a_search_names_its_ids(redis: Redis) -> None:
    """LATEST_BACKEND=elasticsearch keeps the latest documents of an index other than the main
    one (which the index of variables lists) in Elasticsearch: a search that would list that
    index's variables is refused, not answered empty; one naming them is planned."""
    listing = plan({"match_all": {}}, FIELDS)
    with pytest.raises(IllegalArgument, match="a filter naming the ids is required"):
        await variables(redis, listing, "logs", "logs", 10, listed=False)
    named = plan({"terms": {"id": ["b", "a"]}}, FIELDS)
    found = await variables(redis, named, "logs", "logs", 10, listed=False)
    assert [(v.id, v.key) for v in found] == [
        ("a", keys.key_for("a", "logs")),
        ("b", keys.key_for("b", "logs")),
    ]


async def test_tokens_see_their_prefixes_and_indices(
    settings: Settings, tmp_path: Path, es_server: Callable[..., EsServerThread]
) -> None:
    """A search needs ``read`` only (Grafana's token), covers only the token's variables (as
    Elasticsearch's document-level security) and indices (403 otherwise)."""
    server = es_server(settings, tokens_file=str(write_tokens(tmp_path / "tokens.toml")))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for doc in ({"id": "a/1", "ts": T0, "v": 1}, {"id": "x/1", "ts": T0, "v": 2, "hidden": 3}):
            put = await client.put(
                f"/latest/_doc/{doc['id'].replace('/', '%2F')}", json=doc, headers=bearer("both")
            )
            assert put.status_code == 201
        everything = {"size": 10, "query": {"match_all": {}}}
        named = {"size": 0, "query": {"term": {"id": "x/1"}}}
        reply = await client.post(
            MSEARCH, content=msearch_body(everything, named), headers=NDJSON | bearer("reader")
        )
        assert reply.status_code == 200
        listed, other = reply.json()["responses"]
        assert [h["_source"]["id"] for h in listed["hits"]["hits"]] == ["a/1"]
        assert other["hits"]["total"]["value"] == 0
        search = await client.post("/latest/_search", json=everything, headers=bearer("both"))
        assert [h["_source"]["id"] for h in search.json()["hits"]["hits"]] == ["a/1", "x/1"]
        fields = (await client.get("/latest/_mapping", headers=bearer("reader"))).json()
        assert "hidden" not in fields["latest"]["mappings"]["properties"]
        assert "v" in fields["latest"]["mappings"]["properties"]
        writer = await client.post("/latest/_search", json={}, headers=bearer("writer"))
        assert writer.status_code == 403
        other_index = await client.post("/latest/_count", json={}, headers=bearer("logs"))
        assert other_index.status_code == 403
        assert other_index.json()["error"]["type"] == "security_exception"


@pytest.mark.parametrize(
    "body",
    [
        {"query": []},
        {"size": "many"},
        {"sort": 5},
        {"query": {"range": {"ts": {"gte": "yesterday"}}}},
        {"query": {"terms": {"id": "a"}}},
        {"query": {"query_string": {"query": "id:(a OR b"}}},
        {"aggs": {"h": {"date_histogram": {"field": "ts", "fixed_interval": "abc"}}}},
        {"aggs": {"h": {"date_histogram": {"field": "ts", "calendar_interval": "2d"}}}},
        {"aggs": {"h": {"date_histogram": {"field": "ts", "interval": "1m", "time_zone": "Mars"}}}},
        {
            "aggs": {
                "h": {
                    "date_histogram": {"field": "ts", "fixed_interval": "1m", "min_doc_count": -1}
                }
            }
        },
        {"aggs": {"p": {"percentiles": {"field": "v", "percents": [200]}}}},
        {"aggs": {"p": {"percentiles": {"field": "v", "percents": ["x"]}}}},
        {"aggs": {"t": {"terms": {"field": "id", "size": 0}}}},
        {"aggs": {"t": {"terms": {"field": "id", "order": {"_count": "up"}}}}},
        {"aggs": {"a": {"avg": {"field": "v"}, "aggs": {"b": {"max": {"field": "v"}}}}}},
        {"aggs": {"a": {"avg": {}}}},
        {"aggs": {"x": {"avg": {"field": "v"}, "max": {"field": "v"}}}},
    ],
)
async def test_bad_input_is_a_400(
    settings: Settings, es_server: Callable[..., EsServerThread], body: dict[str, Any]
) -> None:
    server = es_server(settings)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        query = {"query": {"term": {"id": "a"}}}
        reply = await client.post("/latest/_search", json=query | body)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["type"].endswith("_exception")


@pytest.mark.parametrize("direction", ["desc", "asc"])
async def test_log_context_pages_with_search_after(
    es: tuple[httpx.AsyncClient, list[Entry]], direction: str
) -> None:
    """Grafana's log context (data_query.go processLogsQuery with sortDirection and
    searchAfter): pages of a logs query, each after the last hit's ``sort`` values, cover every
    entry once, in order, across variables and tiers."""
    client, entries = es
    body: dict[str, Any] = {
        "size": 7,
        "query": time_filter(),
        "sort": {
            TIME_FIELD: {"order": direction, "unmapped_type": "boolean"},
            "_doc": {"order": direction},
        },
        "docvalue_fields": [TIME_FIELD],
        "script_fields": {},
        "aggs": {"1": {"date_histogram": histogram("60000ms")}},
    }
    seen: list[tuple[str, int]] = []
    after = None
    for _ in range(len(entries)):
        page_body = body if after is None else body | {"search_after": after}
        [page] = await msearch(client, page_body)
        assert page["status"] == 200, page
        hits = page["hits"]["hits"]
        assert page["hits"]["total"] == {"value": len(entries), "relation": "eq"}
        if not hits:
            break
        seen += [(h["_source"]["id"], h["_source"]["ts"]) for h in hits]
        after = hits[-1]["sort"]
    expected = sorted(((e.variable, e.doc["ts"]) for e in entries), key=lambda p: (p[1], p[0]))
    assert seen == (expected if direction == "asc" else expected[::-1])
