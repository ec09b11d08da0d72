"""The write path's rules across its edges, on the real Redis, RabbitMQ and uvicorn: one packet is
one history entry whatever its bytes, every edge versions on one scale, a packet too deep to
store is refused with a reason while everything around it is written, versions stay <= 2**53."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
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
from tests.conftest import ServerThread, drain_dead_letters, publish, sync_client, wait_for

pytestmark = pytest.mark.redis_both  # on one Redis and on a Redis Cluster

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
def http(
    settings: Settings, http_server: Callable[..., ServerThread], request: pytest.FixtureRequest
) -> Iterator[httpx.Client]:
    """The server's client; settings overridden by an indirect parameter, if any."""
    overrides = getattr(request, "param", {})
    server = http_server(settings, amqp_url=None, es_prefix="/es", **overrides)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def redis_sync(http: httpx.Client, redis_url: str) -> Iterator[Any]:
    """The test's Redis database (or cluster), for a look at what the server stored."""
    client = sync_client(redis_url)
    yield client
    client.close()


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


# --- a refused write never blocks a later one -----------------------------------------------------


def test_a_packet_refused_through_es_becomes_latest_when_sent_newer(http: httpx.Client) -> None:
    http.post("/ingest", json={"id": "r/1", "ts": 1_714_550_405, "n": 0})
    packet = {"id": "r/1", "ts": 1_714_550_409, "n": 1}
    refused = http.put(  # its version older than the latest: refused, and kept in history
        "/es/latest/_doc/r%2F1",
        params={"version": 1_714_550_401_000, "version_type": "external"},
        json=packet,
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["reason"].endswith(
        "current version [1714550405000] is higher or equal to the one provided [1714550401000]"
    )
    # the same packet unversioned: its own time is newer than the latest, so it wins
    again = http.put("/es/latest/_doc/r%2F1", json=packet)
    assert again.status_code == 200, again.text
    assert again.json()["_version"] == 1_714_550_409_000_000
    assert http.get("/latest/r%2F1").json() == packet
    assert http.post("/ingest", json=packet).json()["duplicates"] == 1
    history = http.get("/history/r%2F1", params={"from": 0}).json()["entries"]
    assert [entry["doc"]["n"] for entry in history] == [0, 1]


# --- one version scale on every path -------------------------------------------------------------

T0_MS = 1_714_550_400_000  # 2024-05-01T08:00:00Z


def stream(variables: int, per_variable: int, seed: int) -> list[dict[str, Any]]:
    """Packets with distinct times per variable (ms precision, as Logstash versions them),
    their time as ISO-8601 or epoch ms, shuffled."""
    rng = random.Random(seed)
    packets = []
    for v in range(variables):
        for n in range(per_variable):
            ms = T0_MS + n * 1_000 + rng.randint(0, 999)
            moment: Any = ms
            if rng.random() < 0.5:
                moment = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
            packets.append({"id": f"mixed/{v}", "observationDateTime": moment, "n": n, "ms": ms})
    rng.shuffle(packets)
    return packets


def bulk_body(packets: list[dict[str, Any]]) -> bytes:
    """As the logstash/ pipelines send them: _id = sha1(id), version = the packet time in ms."""
    lines = []
    for p in packets:
        digest = hashlib.sha1(p["id"].encode()).hexdigest()
        meta = {"_index": "latest", "_id": digest, "version": p["ms"], "version_type": "external"}
        lines += [orjson.dumps({"index": meta}), orjson.dumps(p)]
    return b"\n".join(lines) + b"\n"


async def test_one_stream_split_across_amqp_ingest_and_bulk_gives_what_one_path_gives(
    settings: Settings,
    amqp: Any,
    resources: Resources,
    redis: Redis,
    http_server: Callable[..., ServerThread],
) -> None:
    packets = stream(variables=6, per_variable=40, seed=21)
    rng = random.Random(7)
    paths: dict[str, list[dict[str, Any]]] = {"amqp": [], "ingest": [], "bulk": []}
    for p in packets:
        chosen = rng.sample(list(paths), 2 if rng.random() < 0.1 else 1)  # some sent twice
        for path in chosen:
            paths[path].append(p)
    server = http_server(settings, amqp_url=None, es_prefix="/es")
    consumer = Consumer(settings, resources.ingestor)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            bodies = [orjson.dumps(p) for p in paths["amqp"]]
            publishing = asyncio.create_task(publish(amqp, settings.exchange, bodies))
            for start in range(0, max(map(len, paths.values())), 10):
                ingest = paths["ingest"][start : start + 10]
                bulk = paths["bulk"][start : start + 10]
                if ingest:
                    answer = await http.post("/ingest", content=orjson.dumps(ingest))
                    assert answer.status_code == 200 and not answer.json()["rejected"]
                if bulk:
                    answer = await http.post(
                        "/es/_bulk",
                        content=bulk_body(bulk),
                        headers={"content-type": "application/x-ndjson"},
                    )
                    items = [item["index"] for item in answer.json()["items"]]
                    assert {item["status"] for item in items} <= {200, 201, 409}, items
            await publishing
            await wait_for(lambda: consumer.processed == len(bodies))

            for v in range(6):
                variable = f"mixed/{v}"
                mine = [p for p in packets if p["id"] == variable]
                newest = max(mine, key=lambda p: p["ms"])
                latest = await http.get(f"/latest/{variable.replace('/', '%2F')}")
                assert latest.json() == newest, variable
                assert latest.headers["etag"] == f'"{newest["ms"] * 1000}"'
                history = await http.get(
                    f"/history/{variable.replace('/', '%2F')}", params={"from": 0, "limit": 1000}
                )
                entries = [entry["doc"] for entry in history.json()["entries"]]
                assert sorted(entries, key=lambda p: p["ms"]) == sorted(mine, key=lambda p: p["ms"])

            # an older packet through the ES API: a 409 that names both versions in ms
            newest = max((p for p in packets if p["id"] == "mixed/0"), key=lambda p: p["ms"])
            older = dict(newest, ms=newest["ms"] - 5_000, observationDateTime=newest["ms"] - 5_000)
            answer = await http.post(
                "/es/_bulk",
                content=bulk_body([older]),
                headers={"content-type": "application/x-ndjson"},
            )
            [item] = answer.json()["items"]
            assert item["index"]["status"] == 409
            assert item["index"]["error"]["reason"].endswith(
                f"current version [{newest['ms']}] is higher or equal to the one provided "
                f"[{older['ms']}]"
            )
    finally:
        await consumer.stop()
        await task
        await consumer.close()


def test_es_clients_see_versions_in_their_own_scale(http: httpx.Client) -> None:
    doc = {"id": "scale/1", "observationDateTime": "2024-05-01T08:00:00.250Z", "v": 1}
    put = http.put(
        "/es/latest/_doc/scale%2F1",
        params={"version": 1714550400250, "version_type": "external"},
        json=doc,
    )
    assert (put.status_code, put.json()["_version"]) == (201, 1714550400250)
    got = http.get("/es/latest/_doc/scale%2F1").json()
    assert got["_version"] == 1714550400250  # as written, though compared in µs
    assert http.get("/latest/scale%2F1").headers["etag"] == '"1714550400250000"'
    # /ingest, 1 µs later, wins; the ES read then shows its version, in µs
    later = dict(doc, observationDateTime="2024-05-01T08:00:00.250001Z", v=2)
    assert http.post("/ingest", json=later).json()["accepted"] == 1
    assert http.get("/es/latest/_doc/scale%2F1").json()["_version"] == 1714550400250001
    # an ES write at the same ms is older: the conflict reads true in ms (external_gte too)
    for version_type, relation in [
        ("external", "higher or equal to"),
        ("external_gte", "higher than"),
    ]:
        stale = http.put(
            "/es/latest/_doc/scale%2F1",
            params={"version": 1714550400250, "version_type": version_type},
            json=doc,
        )
        assert stale.status_code == 409
        reason = stale.json()["error"]["reason"]
        current = 1714550400250 if version_type == "external" else 1714550400251
        assert reason.endswith(
            f"current version [{current}] is {relation} the one provided [1714550400250]"
        )
    # seconds, and nanoseconds, are read by magnitude as time fields are
    newer = http.put(
        "/es/latest/_doc/scale%2F1",
        params={"version": 1714550401, "version_type": "external"},
        json=dict(doc, v=3),
    )
    assert (newer.status_code, newer.json()["_version"]) == (200, 1714550401)
    ns = http.put(
        "/es/latest/_doc/scale%2F1",
        params={"version": 1714550401000000999, "version_type": "external"},
        json=dict(doc, v=4),
    )
    assert ns.status_code == 409  # the same µs as the one before
    assert "current version [1714550401000000999]" in ns.json()["error"]["reason"]
    # a delete's version is on the same scale
    deleted = http.delete(
        "/es/latest/_doc/scale%2F1", params={"version": 1714550402000, "version_type": "external"}
    )
    assert (deleted.status_code, deleted.json()["_version"]) == (200, 1714550402000)
    assert (
        http.post("/ingest", json=dict(doc, observationDateTime="2024-05-01T08:00:01.5Z")).json()[
            "stale"
        ]
        == 1
    )


def test_raw_scale_compares_versions_as_given(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> None:
    server = http_server(settings, amqp_url=None, es_prefix="/es", es_version_scale="raw")
    with httpx.Client(base_url=server.url + "/es", timeout=10) as es:
        for version, status in [(5, 201), (4, 409), (6, 200), (2**53, 200), (2**53 + 1, 400)]:
            answer = es.put(
                "/latest/_doc/counter",
                params={"version": version, "version_type": "external"},
                json={"id": "counter", "v": version},
            )
            assert answer.status_code == status, (version, answer.text)
        assert es.get("/latest/_doc/counter").json()["_version"] == 2**53


# --- versions stay <= 2**53 ----------------------------------------------------------------------


@pytest.mark.parametrize("http", [{"max_future": 0.0}], indirect=True)
def test_versions_stay_at_most_2_53_on_every_path(http: httpx.Client, redis_sync: Any) -> None:
    """With no bound ahead of the clock (LATEST_MAX_FUTURE=0; tests/test_future_time.py has it
    on), the bound left is 2**53."""
    top = 2**53

    def stored(variable: str) -> int:
        return int(redis_sync.hget(keys.latest(keys.key_for(variable)), "v"))  # type: ignore[arg-type]

    put = http.put(
        "/es/latest/_doc/top", params={"version": top, "version_type": "external"}, json={"x": 0}
    )
    assert (put.status_code, put.json()["_version"]) == (201, top)
    for n in (1, 2):  # an update takes the next version, but none past 2**53
        update = http.post("/es/latest/_update/top", json={"doc": {"x": n}})
        assert update.status_code == 200, update.text
        assert update.json()["result"] == "updated"
        assert update.json()["_version"] == top
        assert stored("top") == top
    assert http.get("/es/latest/_doc/top").json()["_source"] == {"x": 2}
    # one µs past it, in any unit, is a 400: a single write, a _bulk item, a delete
    for version in (top + 1, (top + 1) * 1000):
        too_far = http.put(
            "/es/latest/_doc/far", params={"version": version, "version_type": "external"}, json={}
        )
        assert too_far.status_code == 400, version
        gone = http.delete(
            "/es/latest/_doc/top", params={"version": version, "version_type": "external"}
        )
        assert gone.status_code == 400, version
    assert (
        http.put(  # epoch ns within the bound
            "/es/latest/_doc/ns",
            params={"version": top * 1000 + 999, "version_type": "external"},
            json={},
        ).status_code
        == 201
    )
    assert stored("ns") == top
    action = {
        "index": {"_index": "latest", "_id": "far", "version": top + 1, "version_type": "external"}
    }
    answer = http.post(
        "/es/_bulk",
        content=orjson.dumps(action) + b"\n{}\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert answer.json()["items"][0]["index"]["status"] == 400
    # a delete without a version leaves a tombstone no higher
    assert http.delete("/es/latest/_doc/top").status_code == 200
    assert stored("top") == top
    # and no packet time reaches it
    assert (
        http.post("/ingest", json={"id": "t", "ts": top}).json()["rejected"][0]["error"]
        == "bad_time"
    )


@pytest.mark.parametrize("version", ["--5", "-", "", "\u00b2", "\u0663", "9" * 5000, "1.5"])
def test_versions_that_are_no_long_fail_their_item(http: httpx.Client, version: str) -> None:
    action = {
        "index": {"_index": "latest", "_id": "x", "version": version, "version_type": "external"}
    }
    answer = http.post(
        "/es/_bulk",
        content=orjson.dumps(action) + b"\n" + good("x") + b"\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert answer.status_code == 200
    [item] = answer.json()["items"]
    assert item["index"]["status"] == 400
    assert "Failed to parse long parameter [version]" in item["index"]["error"]["reason"]
    single = http.put(
        "/es/latest/_doc/x", params={"version": version, "version_type": "external"}, json={}
    )
    assert single.status_code == 400
