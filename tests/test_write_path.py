"""The write path's rules across its edges, on the real Redis, RabbitMQ and uvicorn: one packet is
one history entry whatever its bytes, every edge versions on one scale, a packet too deep to
store is refused with a reason while everything around it is written, versions stay <= 2**53."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.packets import Packet, PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores import segments
from latest_server.stores.segments import Window
from tests.conftest import ServerThread

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
