"""GET /history with agg=, lastN= and at=: the JSON shape, one or many variables, every tier,
and 400s naming the problem."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from latest_server.settings import Settings
from tests.auth.helpers import bearer, write_tokens
from tests.conftest import ServerThread
from tests.web.test_history import T0, fill


@pytest.fixture
def client(
    settings: Settings, objects_url: str, http_server: Callable[..., ServerThread]
) -> Iterator[httpx.Client]:
    server = http_server(settings, amqp_url=None, objects_url=objects_url)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def values(n: int) -> list[float]:
    return [math.sin(i / 10) for i in range(n)]


def test_buckets_of_one_variable_over_every_tier(
    client: httpx.Client, settings: Settings, objects_url: str
) -> None:
    fill(client, settings, objects_url, 600)  # 300 in a transfer object, 300 in Redis
    answer = client.get(
        "/history/s%2F1",
        params={"agg": "min,max,avg,sum,count,first,last", "interval": "1m", "field": "v"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["aggs"] == ["min", "max", "avg", "sum", "count", "first", "last"]
    assert body["fields"] == ["v"] and body["interval"] == "60000000us" and body["tz"] == "UTC"
    [variable] = body["variables"]
    assert variable["variable"] == "s/1"
    every = values(600)
    first_minute = (T0 // 60) * 60  # 22:13:00Z
    expected = {}
    for n, v in enumerate(every):
        expected.setdefault((T0 + n) // 60 * 60, []).append(v)
    assert [b["key"] for b in variable["buckets"]] == [s * 1000 for s in expected]
    for bucket, (start, held) in zip(variable["buckets"], expected.items(), strict=True):
        assert bucket["start"] == start * 1_000_000
        assert bucket["docs"] == len(held)
        got = bucket["values"]["v"]
        assert got["count"] == len(held)
        assert got["min"] == pytest.approx(min(held)) and got["max"] == pytest.approx(max(held))
        assert got["avg"] == pytest.approx(sum(held) / len(held))
        assert got["first"] == pytest.approx(held[0]) and got["last"] == pytest.approx(held[-1])
    assert (
        variable["buckets"][0]["iso"]
        == f"2023-11-14T22:{(first_minute // 60) % 60:02d}:00.000+00:00"
    )


def test_many_variables_calendar_interval_in_a_zone(client: httpx.Client) -> None:
    body = [
        {"id": f"m/{k}", "ts": T0 + 3600 * n, "v": n * (k + 1)} for k in range(3) for n in range(48)
    ]
    assert client.post("/ingest", content=orjson.dumps(body)).json()["accepted"] == 144
    answer = client.get(
        "/history",
        params=[
            ("id", "m/0"),
            ("id", "m/2"),
            ("agg", "sum"),
            ("agg", "count"),
            ("interval", "day"),
            ("tz", "Asia/Kolkata"),
            ("field", "v"),
        ],
    ).json()
    assert [v["variable"] for v in answer["variables"]] == ["m/0", "m/2"]
    for variable, k in zip(answer["variables"], (0, 2), strict=True):
        buckets = variable["buckets"]
        assert all(b["iso"].endswith("T00:00:00.000+05:30") for b in buckets)
        assert sum(b["values"]["v"]["count"] for b in buckets) == 48
        assert sum(b["values"]["v"]["sum"] for b in buckets) == sum(n * (k + 1) for n in range(48))


def test_last_entries_and_value_at_an_instant(client: httpx.Client) -> None:
    body = [{"id": "s/1", "ts": T0 + n, "v": n} for n in range(20)] + [
        {"id": "s/1", "ts": T0 + 5, "w": 1}
    ]
    client.post("/ingest", content=orjson.dumps(body))
    last = client.get("/history/s%2F1", params={"lastN": 3, "field": "v"}).json()
    entries = last["variables"][0]["entries"]
    assert [e["values"]["v"] for e in entries] == [17.0, 18.0, 19.0]
    assert [e["ts"] for e in entries] == [(T0 + n) * 10**6 for n in (17, 18, 19)]
    at = client.get("/history/s%2F1", params={"at": T0 + 5, "field": "v"}).json()
    assert at["variables"][0]["values"]["v"] == {"ts": (T0 + 5) * 10**6, "seq": 6, "value": 5.0}
    before = client.get("/history/s%2F1", params={"at": T0 - 1, "field": "v"}).json()
    assert before["variables"][0]["values"]["v"] is None


@pytest.mark.parametrize(
    ("query", "kind", "fragment"),
    [
        ("agg=median&field=v", "bad_aggregation", "median"),
        ("agg=avg&field=v&interval=7x", "bad_interval", "7x"),
        ("agg=avg&field=v&interval=1m&tz=Mars/Olympus", "bad_time_zone", "Mars/Olympus"),
        ("agg=avg&field=name", "bad_field", "name"),
        ("agg=avg", "bad_field", "field"),
        ("agg=avg&field=v&lastN=3", "bad_request", "lastN"),
        ("lastN=0&field=v", "bad_request", "lastN"),
        ("at=yesterday&field=v", "bad_request", "at"),
        ("agg=avg&field=v&format=csv", "bad_request", "JSON"),
        (
            "agg=avg&field=v&interval=1s&from=0&to=2000000000&min_doc_count=0",
            "too_many_buckets",
            "buckets",
        ),
    ],
)
def test_bad_aggregations_are_400_naming_the_problem(
    client: httpx.Client, query: str, kind: str, fragment: str
) -> None:
    client.post("/ingest", content=b'{"id": "s/1", "ts": 1700000000, "v": 1, "name": "x"}')
    response = client.get(f"/history/s%2F1?{query}")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == kind
    assert fragment in error["reason"]


def test_many_variables_need_ids_and_unknown_ones_are_404(client: httpx.Client) -> None:
    assert client.get("/history?agg=avg&field=v").status_code == 400
    assert client.get("/history/nobody?agg=avg&field=v").status_code == 404
    empty = client.get("/history?id=nobody&agg=avg,count&field=v").json()
    assert empty["variables"] == [{"variable": "nobody", "buckets": []}]


def test_variables_under_a_prefix(client: httpx.Client) -> None:
    body = [{"id": f"p/{k}", "ts": T0 + n, "v": k} for k in range(3) for n in range(5)]
    body.append({"id": "q/0", "ts": T0, "v": 100})
    client.post("/ingest", content=orjson.dumps(body))
    answer = client.get(
        "/history", params={"prefix": "p/", "agg": "sum,count", "field": "v"}
    ).json()
    assert [v["variable"] for v in answer["variables"]] == ["p/0", "p/1", "p/2"]
    assert [v["buckets"][0]["values"]["v"] for v in answer["variables"]] == [
        {"sum": 5.0 * k, "count": 5} for k in range(3)
    ]
    both = client.get("/history", params={"prefix": "p/", "id": "q/0", "agg": "sum", "field": "v"})
    assert both.status_code == 400


def test_a_token_reads_aggregates_only_under_its_prefixes(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> None:
    tokens = write_tokens(tmp_path / "tokens.toml")
    server = http_server(settings, amqp_url=None, tokens_file=str(tokens))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        body = [{"id": "a/1", "ts": T0, "v": 1}, {"id": "b/1", "ts": T0, "v": 2}]
        http.post("/ingest", content=orjson.dumps(body), headers=bearer("both"))
        query = {"agg": "sum", "field": "v"}
        assert http.get("/history/a%2F1", params=query, headers=bearer("reader")).status_code == 200
        for refused in (
            http.get("/history/b%2F1", params=query, headers=bearer("reader")),
            http.get("/history", params={**query, "id": ["a/1", "b/1"]}, headers=bearer("reader")),
            http.get("/history", params={**query, "prefix": ""}, headers=bearer("reader")),
            http.get("/history/b%2F1", params={"at": T0, "field": "v"}, headers=bearer("reader")),
        ):
            assert refused.status_code == 403, refused.text
        under = http.get("/history", params={**query, "prefix": "a/"}, headers=bearer("reader"))
        assert [v["variable"] for v in under.json()["variables"]] == ["a/1"]
