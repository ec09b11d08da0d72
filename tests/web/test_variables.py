"""Many variables: GET /variables and GET /latest?prefix= (real uvicorn, httpx, Redis and
RabbitMQ), from the index the write path keeps (stores/variables.py), and its repairs."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.conftest import REDIS_URL, ServerThread, packet, publish, wait_for
from tests.test_consumer import Running

T0 = 1_700_000_000  # s


def us(seconds: int) -> int:
    return seconds * 1_000_000


def listing(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every page of GET /variables with ``params``, each id once, checked in order."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = http.get("/variables", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        found += body["variables"]
        cursor = body["next"]
        if cursor is None:
            return found


@pytest.fixture
def http(settings: Settings, http_server: Callable[..., ServerThread]) -> Iterator[httpx.Client]:
    server = http_server(settings, amqp_url=None)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def test_variables_by_prefix_with_latest_version_and_entries(http: httpx.Client) -> None:
    counts = {"plant/a/1": 3, "plant/a/2": 1, "plant/b/é": 2, "plant/b/z": 4, "other/x": 2}
    batch = [
        {"id": variable, "ts": T0 + n, "n": n}
        for variable, count in counts.items()
        for n in range(count)
    ]
    batch.append({"id": "plant/a/1", "ts": T0 - 5, "n": -1})  # late: history, not the latest
    batch.append({"id": "plant/a/2", "ts": T0, "n": 0})  # a redelivery: no entry
    assert http.post("/ingest", content=orjson.dumps(batch)).status_code == 200
    counts["plant/a/1"] += 1

    found = listing(http, prefix="plant/")
    # byte order of the UTF-8: "é" (0xc3 0xa9) sorts after "z"
    assert [v["id"] for v in found] == ["plant/a/1", "plant/a/2", "plant/b/z", "plant/b/é"]
    for item in found:
        newest = {"plant/a/1": 2, "plant/a/2": 0, "plant/b/z": 3, "plant/b/é": 1}[item["id"]]
        assert item == {
            "id": item["id"],
            "version": us(T0 + newest),
            "entries": counts[item["id"]],
            "deleted": False,
        }
    assert [v["id"] for v in listing(http)] == sorted(counts, key=str.encode)
    assert [v["id"] for v in listing(http, prefix="plant/b/")] == ["plant/b/z", "plant/b/é"]
    assert listing(http, prefix="plant/c") == []
    assert [v["id"] for v in listing(http, prefix="other/x")] == ["other/x"]


def test_paging_by_cursor_gives_every_id_exactly_once(http: httpx.Client) -> None:
    ids = [f"p/{n:03d}" for n in range(0, 250)] + ["p", "q/0", "o/9"]
    for start in range(0, len(ids), 60):
        body = [{"id": i, "ts": T0} for i in ids[start : start + 60]]
        assert http.post("/ingest", content=orjson.dumps(body)).status_code == 200
    under = sorted(i for i in ids if i.startswith("p"))
    for limit in (1, 7, 50, 251, 10_000):
        pages = []
        cursor = None
        while True:
            query: dict[str, Any] = {"prefix": "p", "limit": limit}
            if cursor:
                query["cursor"] = cursor
            body = http.get("/variables", params=query).json()
            pages.append([v["id"] for v in body["variables"]])
            cursor = body["next"]
            if cursor is None:
                break
        assert [i for page in pages for i in page] == under, limit
        assert all(len(page) == limit for page in pages[:-1])
        assert 0 < len(pages[-1]) <= limit  # no empty last page
    default = http.get("/variables").json()
    assert len(default["variables"]) == len(ids) and default["next"] is None


def test_latest_by_prefix_is_paged(http: httpx.Client) -> None:
    docs = [{"id": f"room/{n:02d}", "ts": T0 + n, "t": n} for n in range(23)]
    docs.append({"id": "roomy", "ts": T0, "t": -1})
    assert http.post("/ingest", content=orjson.dumps(docs)).status_code == 200
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query: dict[str, Any] = {"prefix": "room/", "limit": 10}
        if cursor:
            query["cursor"] = cursor
        response = http.get("/latest", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["docs"]) <= 10
        seen += body["docs"]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [
        {"id": d["id"], "found": True, "version": us(d["ts"]), "doc": d} for d in docs[:23]
    ]
    # ids still work alone
    many = http.get("/latest", params=[("id", "roomy"), ("id", "nothing")]).json()
    assert many == {
        "docs": [
            {"id": "roomy", "found": True, "version": us(T0), "doc": docs[-1]},
            {"id": "nothing", "found": False},
        ]
    }


def cursor_of(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "params", "reason", "words"),
    [
        ("/latest", [("prefix", "a"), ("id", "b")], "bad_parameter", "not both"),
        ("/latest", [("id", "b"), ("limit", "3")], "bad_parameter", "not both"),
        ("/latest", [("prefix", "a"), ("limit", "0")], "bad_request", "limit"),
        ("/latest", [("prefix", "a"), ("limit", "10001")], "bad_request", "limit"),
        ("/variables", [("limit", "0")], "bad_request", "limit"),
        ("/variables", [("limit", "10001")], "bad_request", "limit"),
        ("/variables", [("limit", "ten")], "bad_request", "limit"),
        ("/variables", [("limit", "-5")], "bad_request", "limit"),
        ("/variables", [("cursor", "%%%")], "bad_request", "cursor"),
        ("/variables", [("cursor", cursor_of(b"\xff\xfe"))], "bad_request", "cursor"),
        ("/variables", [("prefix", "b"), ("cursor", cursor_of(b"a/1"))], "bad_request", "cursor"),
        ("/variables", [("id", "a")], "bad_parameter", "unknown parameter"),
        ("/variables", [("prefx", "a")], "bad_parameter", "did you mean [prefix]"),
    ],
)
def test_bad_listing_parameters_are_400s(
    http: httpx.Client, path: str, params: list[tuple[str, str]], reason: str, words: str
) -> None:
    response = http.get(path, params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == reason
    assert words in error["reason"]


async def test_variables_ingested_over_amqp_are_listed(
    settings: Settings, http_server: Callable[..., ServerThread], amqp: Any
) -> None:
    server = http_server(settings, amqp_url=None)
    resources = await Resources.open(settings)
    consumer = await Running(settings, resources).start()
    try:
        bodies = [orjson.dumps({"id": f"amqp/{n % 5}", "ts": T0 + n}) for n in range(20)]
        bodies.append(orjson.dumps([{"id": "amqp/9", "ts": T0}, {"id": "amqp/0", "ts": T0 - 1}]))
        await publish(amqp, settings.exchange, bodies)
        await wait_for(lambda: consumer.consumer.processed == len(bodies))
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = (await client.get("/variables", params={"prefix": "amqp/"})).json()
        assert body["variables"] == [
            {
                "id": f"amqp/{n}",
                "version": us(T0 + 15 + n),
                "entries": 4 + (n == 0),
                "deleted": False,
            }
            for n in range(5)
        ] + [{"id": "amqp/9", "version": us(T0), "entries": 1, "deleted": False}]
    finally:
        await consumer.stop()
        await resources.close()


async def test_reindex_repairs_a_missing_index(resources: Resources, redis: Redis) -> None:
    ids = [f"r/{n}" for n in range(2_500)]  # more than a SCAN step and a ZADD chunk
    await resources.ingestor.write_batch(packet(i, 1) for i in ids)
    await resources.ingestor.delete("r/7", keys.key_for("r/7"))
    assert await redis.zcard(keys.VARIABLES) == len(ids)
    await redis.delete(keys.VARIABLES)
    index = resources.variables
    assert await index.ids("r/") == ([], None)

    # the command line job
    env = {**os.environ, "REDIS_URL": REDIS_URL}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "latest_server", "reindex"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"indexed {len(ids)} variables"
    page, after = await index.ids("r/", limit=10_000)
    assert page == sorted(ids) and after is None  # the deleted one too: it has a history

    # at start-up, when the key is missing and variables exist
    await redis.delete(keys.VARIABLES)
    reopened = await Resources.open(resources.settings)
    try:
        assert reopened.reindexing is not None
        await reopened.reindexing
        assert (await index.ids("r/", limit=10_000))[0] == sorted(ids)
    finally:
        await reopened.close()


async def test_deleted_variables_stay_listed(resources: Resources) -> None:
    await resources.ingestor.write_batch([packet("d/1", 1), packet("d/2", 2)])
    result = await resources.ingestor.delete("d/1", keys.key_for("d/1"))
    assert result.result == "deleted"
    ids, _ = await resources.variables.ids("d/")
    assert ids == ["d/1", "d/2"]
    docs = await resources.latest.read_keys([keys.key_for(i) for i in ids])
    assert docs[0] is None and docs[1] is not None
    assert await resources.variables.entries(ids) == [1, 1]


async def test_a_redis_that_lost_its_data_is_indexed_again(
    resources: Resources, redis: Redis
) -> None:
    """The process remembers what it indexed; a first history entry of a variable it knows
    means Redis lost the index with the data, and every id is sent again."""
    await resources.ingestor.write_batch([packet("lost/1", 1), packet("lost/2", 1)])
    assert (await resources.variables.ids("lost/"))[0] == ["lost/1", "lost/2"]
    await redis.flushdb()
    await resources.ingestor.write_batch([packet("lost/2", 2)])
    await resources.ingestor.write_batch([packet("lost/1", 2)])
    assert (await resources.variables.ids("lost/"))[0] == ["lost/1", "lost/2"]


async def test_other_namespaces_are_not_listed(resources: Resources) -> None:
    """A packet of another Elasticsearch index (a namespace) has a key of its own: its id is
    not one of the main namespace's variables."""
    main = packet("ns/1", 1)
    other = packet("ns/2", 1)
    other.key = keys.key_for("ns/2", "another-index")
    await resources.ingestor.write_batch([main, other])
    assert (await resources.variables.ids("ns/"))[0] == ["ns/1"]
