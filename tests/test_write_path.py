"""The write path's rules across its edges, on the real Redis, RabbitMQ and uvicorn: one packet is
one history entry whatever its bytes, every edge versions on one scale, a packet too deep to
store is refused with a reason while everything around it is written, versions stay <= 2**53."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.consumer import ERROR_HEADER, Consumer
from latest_server.packets import Packet, PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores import segments
from latest_server.stores.segments import Window
from tests.conftest import ServerThread, drain_dead_letters, publish, wait_for

EVERYTHING = Window(-(2**62), 2**62)
PARSER = PacketParser(Settings())
# One packet, serialised as three JSON pipelines might: other key order, 7.0 for 7, 1E2 for 100,
# an escaped character, other whitespace.
SAME = [
    b'{"id":"s/1","ts":1700000000,"pm25":7,"m":{"a":[1,100],"b":"x"}}',
    b'{"m":{"b":"x","a":[1.0,1E2]},"pm25":7.0,"ts":1700000000,"id":"s/1"}',
    b'{ "id" : "s\\u002f1",\n  "ts" : 1.7e9 , "pm25" : 7e0,'
    b' "m" : { "a" : [ 1, 100 ], "b" : "x" } }',
]


@pytest.fixture
def http(settings: Settings, http_server: Callable[..., ServerThread]) -> Iterator[httpx.Client]:
    server = http_server(settings, amqp_url=None, es_prefix="/es")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
async def stores(settings: Settings, objects_url: str, redis: Redis) -> AsyncIterator[Resources]:
    opened = await Resources.open(dataclasses.replace(settings, objects_url=objects_url))
    await opened.trigger.close()  # let the start-up recovery job finish first
    yield opened
    await opened.close()


def parsed(body: bytes) -> Packet:
    [item] = PARSER.parse_message(body)
    assert isinstance(item, Packet)
    return item


async def history_docs(stores: Resources, variable: str) -> list[Any]:
    page = await stores.history.read(keys.key_for(variable), EVERYTHING)
    return [orjson.loads(doc) for doc in page.entries.column("doc").to_pylist()]


# --- duplicates are semantic ---------------------------------------------------------------------


def test_one_packet_one_entry_whatever_its_bytes_over_ingest(http: httpx.Client) -> None:
    answers = [http.post("/ingest", content=body).json() for body in SAME]
    assert [(a["accepted"], a["duplicates"]) for a in answers] == [(1, 0), (0, 1), (0, 1)]
    history = http.get("/history/s%2F1", params={"from": 0}).json()["entries"]
    assert len(history) == 1
    # what is stored is the first copy as received (its key order), not the canonical form
    assert list(history[0]["doc"]) == ["id", "ts", "pm25", "m"]
    # the same packet through the Elasticsearch-compatible API is that entry again
    put = http.put("/es/latest/_doc/s%2F1", content=SAME[1])
    assert put.status_code == 409  # as old as the latest: stale, and no new entry
    assert len(http.get("/history/s%2F1", params={"from": 0}).json()["entries"]) == 1


async def test_a_redelivery_in_other_bytes_after_offload_is_one_entry(
    stores: Resources, redis: Redis
) -> None:
    first = parsed(SAME[0])
    await stores.ingestor.write_batch([first])
    await stores.offloader.run_job(everything=True)
    # sent again in other bytes after its first copy left Redis: a new seq in Redis, which
    # reads and merges remove as the same packet
    [outcome] = (await stores.ingestor.write_batch([parsed(SAME[1])])).outcomes
    assert outcome.seq == 2
    assert len(await history_docs(stores, "s/1")) == 1
    await stores.merger.merge_variable("s/1")
    assert await history_docs(stores, "s/1") == [orjson.loads(SAME[0])]


async def test_objects_hashed_before_the_canonical_form_dedup_with_new_entries(
    stores: Resources, redis: Redis
) -> None:
    """An object written before digests came from the canonical form holds sha1 of the bytes.
    Its entries and new copies of the same packets (canonical digests) are still one."""
    old = parsed(SAME[1])  # not canonical: its sha1 is not its digest
    assert hashlib.sha1(old.raw).hexdigest() != old.digest
    k = keys.key_for("s/1")
    table = segments.from_columns([old.ts_us], [1], [hashlib.sha1(old.raw).digest()], [old.raw])
    name = keys.transfer_object(k, 1, 1, 1, old.ts_us, old.ts_us)
    stores.objects.put(name, segments.encode(table, {"epoch": "1", "key": k}))
    await redis.hset(keys.meta(k), mapping={"e": 2, "s": 1, "b": 1})
    await stores.ingestor.write_batch([old])  # the same bytes again, now hashed canonically
    assert len(await history_docs(stores, "s/1")) == 1
    await stores.merger.merge_variable("s/1")
    assert len(await history_docs(stores, "s/1")) == 1


# --- a packet too deep to store is refused, everything around it is written ----------------------


def deep(variable: str, levels: int) -> bytes:
    """A packet nested ``levels`` deep in all (orjson reads up to 1024, writes up to 254)."""
    inner = levels - 1
    return b'{"id": "%s", "ts": 1700000000, "d": %s%s}' % (
        variable.encode(),
        b"[" * inner,
        b"]" * inner,
    )


def good(variable: str) -> bytes:
    return b'{"id": "%s", "ts": 1700000000, "v": 1}' % variable.encode()


async def test_deep_packets_over_amqp_are_dead_lettered_and_the_consumer_goes_on(
    settings: Settings, amqp: Any, resources: Resources, redis: Redis
) -> None:
    consumer = Consumer(settings, resources.ingestor)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        bodies = [
            good("g1"),
            deep("d300", 300),
            good("g2"),
            deep("d1000", 1000),
            b"[" + good("g3") + b", " + deep("d-in-array", 1020) + b"]",
            b"\n".join([good("g4"), deep("d-ndjson", 300)]),
            good("g5"),
        ]
        await publish(amqp, settings.exchange, bodies)
        await wait_for(lambda: consumer.processed == len(bodies))
        dead = await drain_dead_letters(amqp, settings.dead_letter_queue, 4)
        assert sorted(m.headers[ERROR_HEADER] for m in dead) == ["too_deep"] * 4
        assert {m.body for m in dead} >= {bodies[1], bodies[3], bodies[4]}
        for variable in ("g1", "g2", "g3", "g4", "g5"):
            assert await redis.hexists(keys.latest(keys.key_for(variable)), "doc"), variable
        assert not task.done()  # still consuming
        await publish(amqp, settings.exchange, [good("after")])
        await wait_for(lambda: redis.hexists(keys.latest(keys.key_for("after")), "doc"))
    finally:
        await consumer.stop()
        await task
        await consumer.close()


def test_deep_packets_over_ingest_are_rejected_with_a_reason(http: httpx.Client) -> None:
    body = b"[" + b", ".join([good("g1"), deep("d300", 300), good("g2"), deep("d", 1000)]) + b"]"
    response = http.post("/ingest", content=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["accepted"] == 2
    assert [(r["index"], r["error"]) for r in answer["rejected"]] == [
        (1, "too_deep"),
        (3, "too_deep"),
    ]
    ndjson = b"\n".join([deep("d1", 1000), good("g3"), deep("d2", 300)])
    response = http.post(
        "/ingest", content=ndjson, headers={"content-type": "application/x-ndjson"}
    )
    assert response.status_code == 200
    assert [r["error"] for r in response.json()["rejected"]] == ["too_deep", "too_deep"]
    alone = http.post("/ingest", content=deep("d3", 1000))
    assert alone.status_code == 400
    assert alone.json()["error"]["type"] == "too_deep"
    for variable in ("g1", "g2", "g3"):
        assert http.get(f"/latest/{variable}").status_code == 200


def test_deep_packets_over_bulk_are_failed_items(http: httpx.Client) -> None:
    lines = []
    for variable, source in [
        ("g1", good("g1")),
        ("d300", deep("d300", 300)),
        ("g2", good("g2")),
        ("d1000", deep("d1000", 1000)),
        ("g3", good("g3")),
    ]:
        lines += [orjson.dumps({"index": {"_index": "latest", "_id": variable}}), source]
    response = http.post(
        "/es/_bulk",
        content=b"\n".join(lines) + b"\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["errors"] is True
    items = [item["index"] for item in answer["items"]]
    assert [item["status"] for item in items] == [201, 400, 201, 400, 201]
    for item in (items[1], items[3]):
        assert item["error"]["type"] == "document_parsing_exception"
        assert "nested deeper than" in item["error"]["reason"]
    # a single-document write says the same as a 400
    put = http.put("/es/latest/_doc/d", content=deep("d", 1000))
    assert (put.status_code, put.json()["error"]["type"]) == (400, "document_parsing_exception")
    # _update merging a deep patch into a document
    update = http.post(
        "/es/latest/_update/g1", content=b'{"doc": {"x": ' + b"[" * 600 + b"]" * 600 + b"}}"
    )
    assert update.status_code == 400
    for variable in ("g1", "g2", "g3"):
        assert http.get(f"/latest/{variable}").json()["v"] == 1


def test_malformed_bulk_metadata_and_mget_bodies_are_400s_not_500s(http: httpx.Client) -> None:
    nested = b'{"a":' * 990 + b"1" + b"}" * 990
    for action in [
        b'{"index": {"_index": "latest", "_id": ' + nested + b"}}",
        b'{"index": {"_index": ' + nested + b', "_id": "x"}}',
    ]:
        response = http.post(
            "/es/_bulk",
            content=action + b"\n" + good("x") + b"\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert response.status_code == 400, response.text
        assert "expected a simple value" in response.json()["error"]["reason"]
    for meta in [
        b'"version": ' + nested + b', "version_type": "external"',
        b'"version": 5, "version_type": ' + nested,
        b'"version": "\xc2\xb2", "version_type": "external"',  # a superscript two
        b'"version": "' + b"9" * 5000 + b'", "version_type": "external"',
    ]:
        action = b'{"index": {"_index": "latest", "_id": "x", ' + meta + b"}}"
        response = http.post(
            "/es/_bulk",
            content=action + b"\n" + good("x") + b"\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert response.status_code == 200, response.text
        [item] = response.json()["items"]
        assert item["index"]["status"] == 400
    for body in [b'{"ids": [' + nested + b"]}", b'{"docs": [{"_id": "x", "_index": [1]}]}']:
        response = http.post("/es/latest/_mget", content=body)
        assert response.status_code == 400, response.text
