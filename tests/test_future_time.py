"""LATEST_MAX_FUTURE: a packet time, or an Elasticsearch version on the epoch scale, further
ahead of the server clock than the bound is refused with ``future_time`` on every path, and
nothing of it is stored. (AMQP: tests/test_consumer.py, its dead letters by reason.)

Without the bound, one packet dated 2255 (or a delete at version 2**53) is the latest value for
ever: every later packet is older. The paths are driven by real clients against uvicorn: httpx
for the REST API, the official Elasticsearch client for the Elasticsearch-compatible one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from elasticsearch import BadRequestError, Elasticsearch
from redis import Redis

from latest_server import keys
from latest_server.packets import Packet, PacketParser, Rejection
from latest_server.settings import Settings
from tests.conftest import REDIS_URL, ServerThread

DAY = 86_400
HOUR = 3_600


def now_s() -> int:
    return int(time.time())


@pytest.fixture
def server(settings: Settings, http_server: Callable[..., ServerThread]) -> ServerThread:
    """The REST API with the Elasticsearch-compatible API under /es, LATEST_MAX_FUTURE at 1 day
    (its default)."""
    assert Settings().max_future == DAY
    return http_server(settings, amqp_url=None, es_prefix="/es")


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def es(server: ServerThread) -> Iterator[Elasticsearch]:
    client = Elasticsearch(server.url + "/es", max_retries=0, request_timeout=10)
    yield client
    client.close()


@pytest.fixture
def db(redis: object) -> Iterator[Redis]:
    """The test's Redis database (flushed by conftest's ``redis``), for a look at what is stored."""
    client = Redis.from_url(REDIS_URL)
    yield client
    client.close()


def stored(db: Redis, variable: str) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = db.hgetall(keys.latest(keys.key_for(variable)))  # type: ignore[assignment]
    return found


# --- the parser ------------------------------------------------------------------------------


def test_the_bound_is_a_setting_and_zero_turns_it_off() -> None:
    ahead = orjson.dumps({"id": "x", "ts": now_s() + 2 * DAY})
    close = orjson.dumps({"id": "x", "ts": now_s() + HOUR})
    [refused] = PacketParser(Settings()).parse_message(ahead)
    assert isinstance(refused, Rejection)
    assert refused.reason == "future_time"
    assert "LATEST_MAX_FUTURE" in refused.detail
    [accepted] = PacketParser(Settings()).parse_message(close)
    assert isinstance(accepted, Packet)
    [unbounded] = PacketParser(Settings(max_future=0.0)).parse_message(ahead)
    assert isinstance(unbounded, Packet)
    [tight] = PacketParser(Settings.from_env({"LATEST_MAX_FUTURE": "30m"})).parse_message(close)
    assert isinstance(tight, Rejection) and tight.reason == "future_time"


def test_an_old_reading_of_the_clock_never_refuses_a_time_within_the_bound() -> None:
    """The parser reads the clock only for a time past its last bound (check_future)."""
    parser = PacketParser(Settings())
    [first] = parser.parse_message(orjson.dumps({"id": "x", "ts": now_s()}))
    assert isinstance(first, Packet)
    parser.horizon_us -= 10 * DAY * 1_000_000  # as if the clock was read ten days ago
    [later] = parser.parse_message(orjson.dumps({"id": "x", "ts": now_s() + HOUR}))
    assert isinstance(later, Packet)
    assert parser.horizon_us >= (now_s() + DAY - 5) * 1_000_000  # read again, moved on
    [far] = parser.parse_message(orjson.dumps({"id": "x", "ts": now_s() + 2 * DAY}))
    assert isinstance(far, Rejection) and far.reason == "future_time"


def test_durations_read_as_seconds_or_with_a_unit() -> None:
    read = {
        text: Settings.from_env({"LATEST_MAX_FUTURE": text}).max_future
        for text in ("1d", "6h", "15m", "300s", "300", "0", "1.5h")
    }
    assert read == {
        "1d": DAY,
        "6h": 6 * HOUR,
        "15m": 900,
        "300s": 300,
        "300": 300,
        "0": 0,
        "1.5h": 5400,
    }
    from latest_server.errors import ConfigError

    for bad in ("-1d", "tomorrow", "1w", "inf", ""):
        with pytest.raises(ConfigError, match="LATEST_MAX_FUTURE"):
            Settings.from_env({"LATEST_MAX_FUTURE": bad})


# --- POST /ingest ----------------------------------------------------------------------------


def test_ingest_refuses_a_time_past_the_bound_and_stores_nothing_of_it(
    http: httpx.Client, db: Redis
) -> None:
    now = now_s()
    body = [
        {"id": "soon", "ts": now + HOUR, "v": 1},  # within the bound: written
        {"id": "poison", "ts": now + 2 * DAY, "v": 2},
        {"id": "poison", "observationDateTime": "2255-01-01T00:00:00Z", "v": 3},
        # a session document whose end is years ahead
        {"id": "run", "ts": now, "@session": {"state": "open", "end": now + 400 * DAY}},
    ]
    answer = http.post("/ingest", json=body)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["accepted"] == 1
    assert [(r["index"], r["error"]) for r in found["rejected"]] == [
        (1, "future_time"),
        (2, "future_time"),
        (3, "future_time"),
    ]
    assert all("LATEST_MAX_FUTURE" in r["detail"] for r in found["rejected"])
    assert stored(db, "poison") == {}
    assert db.exists(keys.history(keys.key_for("poison"))) == 0
    # the variable is not pinned: a packet of now is its latest value
    assert http.post("/ingest", json={"id": "poison", "ts": now, "v": 4}).json()["accepted"] == 1
    assert http.get("/latest/poison").json()["v"] == 4
    # a body of nothing but such packets is a 400 naming the reason
    alone = http.post("/ingest", json={"id": "poison", "ts": (now + 3 * DAY) * 1000})
    assert alone.status_code == 400
    assert alone.json()["error"]["type"] == "future_time"


def test_history_windows_may_reach_past_the_bound(http: httpx.Client) -> None:
    """The bound is on what is written, not on what is asked: ``to`` far ahead is a window."""
    now = now_s()
    assert http.post("/ingest", json={"id": "w", "ts": now}).json()["accepted"] == 1
    page = http.get("/history/w", params={"to": "2200-01-01T00:00:00Z"})
    assert page.status_code == 200, page.text
    assert len(page.json()["entries"]) == 1


# --- the Elasticsearch-compatible API --------------------------------------------------------


def test_es_doc_with_a_version_past_the_bound_is_a_400_naming_future_time(
    es: Elasticsearch, db: Redis
) -> None:
    ahead_ms = (now_s() + 2 * DAY) * 1000
    with pytest.raises(BadRequestError) as refused:
        es.index(
            index="latest", id="v1", document={"x": 1}, version=ahead_ms, version_type="external"
        )
    error = refused.value.body["error"]
    assert refused.value.status_code == 400
    assert error["type"] == "illegal_argument_exception"
    assert "future_time" in error["reason"] and "LATEST_MAX_FUTURE" in error["reason"]
    assert stored(db, "v1") == {}
    # a version of now is written
    now_ms = now_s() * 1000
    written = es.index(
        index="latest", id="v1", document={"x": 2}, version=now_ms, version_type="external"
    )
    assert written["_version"] == now_ms


def test_es_doc_with_a_document_time_past_the_bound_is_refused(
    es: Elasticsearch, db: Redis
) -> None:
    ahead = now_s() + 2 * DAY
    with pytest.raises(BadRequestError) as refused:
        es.index(index="latest", id="t1", document={"id": "t1", "ts": ahead})
    assert refused.value.body["error"]["type"] == "illegal_argument_exception"
    assert "future_time" in refused.value.body["error"]["reason"]
    assert stored(db, "t1") == {}


def test_a_delete_at_2_53_leaves_no_tombstone(es: Elasticsearch, db: Redis) -> None:
    """The poisoning of issue 23: a versioned delete at 2**53 left a tombstone no later write
    could pass. Refused, the document stays and later writes apply."""
    now_ms = now_s() * 1000
    es.index(index="latest", id="d1", document={"x": 1}, version=now_ms, version_type="external")
    with pytest.raises(BadRequestError) as refused:
        es.delete(index="latest", id="d1", version=2**53, version_type="external")
    assert refused.value.body["error"]["type"] == "illegal_argument_exception"
    assert "future_time" in refused.value.body["error"]["reason"]
    assert (stored(db, "d1"))[b"doc"] == b'{"x":1}'
    later = es.index(
        index="latest", id="d1", document={"x": 2}, version=now_ms + 1, version_type="external"
    )
    assert later["result"] == "updated"
    assert es.get(index="latest", id="d1")["_source"] == {"x": 2}


def test_bulk_items_past_the_bound_fail_alone(es: Elasticsearch, db: Redis) -> None:
    now = now_s()
    operations: list[dict[str, Any]] = [
        {"index": {"_index": "latest", "_id": "b-ok"}},
        {"id": "b-ok", "ts": now},
        {"index": {"_index": "latest", "_id": "b-time"}},
        {"id": "b-time", "ts": now + 2 * DAY},
        {
            "index": {
                "_index": "latest",
                "_id": "b-version",
                "version": (now + 2 * DAY) * 1000,
                "version_type": "external",
            }
        },
        {"x": 1},
        {
            "delete": {
                "_index": "latest",
                "_id": "b-ok",
                "version": 2**53,
                "version_type": "external",
            }
        },
    ]
    answer = es.bulk(operations=operations)
    assert answer["errors"] is True
    items = [next(iter(item.values())) for item in answer["items"]]
    assert [item["status"] for item in items] == [201, 400, 400, 400]
    for item in items[1:]:
        assert item["error"]["type"] == "illegal_argument_exception"
        assert "future_time" in item["error"]["reason"]
    assert (stored(db, "b-ok"))[b"doc"] == orjson.dumps({"id": "b-ok", "ts": now})
    assert stored(db, "b-time") == {}
    assert stored(db, "b-version") == {}


def test_raw_scale_versions_are_counters_not_times(
    settings: Settings, http_server: Callable[..., ServerThread], db: Redis
) -> None:
    """LATEST_ES_VERSION_SCALE=raw: a version is a counter, never a time, so the bound does not
    apply to it (2**53 is still the largest kept)."""
    server = http_server(settings, amqp_url=None, es_prefix="/es", es_version_scale="raw")
    with Elasticsearch(server.url + "/es", max_retries=0) as client:
        big = client.index(
            index="latest", id="c", document={"x": 1}, version=2**52, version_type="external"
        )
        assert big["_version"] == 2**52
    # its history time is the arrival time, not the counter read as a time years ahead
    entries = db.xrange(keys.history(keys.key_for("c")))
    [(_, fields)] = entries
    assert abs(int(fields[b"t"]) - time.time() * 1e6) < 60e6
