"""Redis answering with an error reply rather than going away, on redis-servers the tests start
themselves: out of memory (maxmemory with noeviction), a read-only replica, a script running.
These are unavailability: 503 with Retry-After over HTTP and on the Elasticsearch API, the batch
waited out on AMQP (nothing acknowledged is lost, the consumer never ends), logged once. An
error reply that is a bug (WRONGTYPE) stays an error, but the consumer survives it too. And a
server whose Redis reaches maxmemory recovers by itself: the offload job still runs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from latest_server import keys
from latest_server.consumer import Consumer
from latest_server.packets import Packet, PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.conftest import ServerThread, publish, wait_for
from tests.services import private_redis

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def own_redis() -> Iterator[str]:
    with private_redis() as url:
        yield url


@pytest.fixture
async def own_redis_client(own_redis: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis)
    yield client
    await client.aclose()


def sync(url: str) -> SyncRedis:
    return SyncRedis.from_url(url)


def packet(variable: str, second: int, **extra: object) -> bytes:
    return orjson.dumps({"id": variable, "ts": 1_715_940_000 + second, "n": second, **extra})


def ingest(http: httpx.Client, bodies: list[bytes]) -> httpx.Response:
    return http.post(
        "/ingest", content=b"\n".join(bodies), headers={"content-type": "application/x-ndjson"}
    )


def out_of_memory(url: str) -> None:
    """Redis at maxmemory: the limit set just below what it uses now (noeviction)."""
    with sync(url) as redis:
        redis.config_set("maxmemory-policy", "noeviction")
        used = int(redis.info("memory")["used_memory"])
        redis.config_set("maxmemory", max(used - 64 * 1024, 1024 * 1024))
        with contextlib.suppress(ResponseError):
            for n in range(10_000):  # whatever is left up to the limit
                redis.set(f"padding:{n}", b"x" * 16_384)
        with pytest.raises(ResponseError, match="maxmemory"):
            redis.set("probe", b"x" * 16_384)


def assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"


def assert_es_unavailable(answer: httpx.Response) -> None:
    """As Elasticsearch says it (Logstash and the ES clients retry a 503 or a 429)."""
    assert answer.status_code in (429, 503), answer.text
    assert answer.json()["error"]["type"], answer.text


def es_bulk(http: httpx.Client, variable: str) -> httpx.Response:
    action = orjson.dumps({"index": {"_index": "latest", "_id": variable}})
    body = action + b"\n" + packet(variable, 9) + b"\n"
    return http.post("/es/_bulk", content=body, headers={"content-type": "application/x-ndjson"})


def test_out_of_memory_is_503_on_ingest_and_the_es_api_and_logged_once(
    own_redis: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    own = dataclasses.replace(settings, redis_url=own_redis, amqp_url=None, es_prefix="/es")
    with ServerThread(own) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        assert ingest(http, [packet("urn:oom:a", 0)]).status_code == 200
        out_of_memory(own_redis)
        with caplog.at_level(logging.WARNING, logger="latest_server"):
            for n in range(5):
                assert_unavailable(ingest(http, [packet("urn:oom:a", 1 + n)]))
            assert_es_unavailable(es_bulk(http, "urn:oom:a"))
            put = http.put(
                "/es/latest/_doc/urn:oom:b",
                content=packet("urn:oom:b", 1),
                headers={"content-type": "application/json"},
            )
            assert_es_unavailable(put)
        warnings = [r for r in caplog.records if "out of memory" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert not any(r.exc_info for r in caplog.records)
        # Reads still work, and so does everything once memory is back.
        assert http.get("/latest/urn:oom:a").json()["n"] == 0
        with sync(own_redis) as redis:
            redis.config_set("maxmemory", 0)
        assert ingest(http, [packet("urn:oom:a", 9)]).json()["accepted"] == 1


def test_a_read_only_replica_is_503(own_redis: str, settings: Settings) -> None:
    with private_redis() as replica_url:
        with sync(replica_url) as replica:
            primary = sync(own_redis).connection_pool.connection_kwargs
            replica.replicaof(primary["host"], primary["port"])
        own = dataclasses.replace(settings, redis_url=replica_url, amqp_url=None, es_prefix="/es")
        with ServerThread(own) as server, httpx.Client(base_url=server.url, timeout=10) as http:
            assert_unavailable(ingest(http, [packet("urn:ro:a", 0)]))
            assert_es_unavailable(es_bulk(http, "urn:ro:a"))
            assert http.get("/latest/urn:ro:a").status_code == 404  # reads go on


def test_a_busy_script_is_503_on_reads_and_writes(own_redis: str, settings: Settings) -> None:
    with sync(own_redis) as redis:
        redis.config_set("busy-reply-threshold", 50)  # ms
    own = dataclasses.replace(settings, redis_url=own_redis, amqp_url=None, es_prefix="/es")
    with ServerThread(own) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        assert ingest(http, [packet("urn:busy:a", 0)]).status_code == 200
        spinner = threading.Thread(target=_spin, args=(own_redis,), daemon=True)
        spinner.start()
        try:
            with sync(own_redis) as probe:
                deadline = 100
                while deadline:
                    try:
                        probe.ping()
                    except ResponseError:
                        break
                    deadline -= 1
            assert_unavailable(ingest(http, [packet("urn:busy:a", 1)]))
            assert_unavailable(http.get("/latest/urn:busy:a"))
        finally:
            with sync(own_redis) as killer:
                killer.script_kill()
            spinner.join(10)
        assert ingest(http, [packet("urn:busy:a", 2)]).json()["accepted"] == 1


def _spin(url: str) -> None:
    with sync(url) as redis, contextlib.suppress(ResponseError):
        redis.eval("while true do end", 0)


# --- AMQP: the consumer waits, and a Redis at maxmemory recovers by offloading ---


@pytest.fixture
async def own_resources(
    own_redis: str, settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Settings, Resources]]:
    own = dataclasses.replace(
        settings,
        redis_url=own_redis,
        objects_url=f"file://{tmp_path / 'objects'}",
        offload_check_interval=0.2,
        offload_ratio=0.9,
        offload_target_ratio=0.5,
    )
    resources = await Resources.open(own)
    yield own, resources
    await resources.close()


@contextlib.asynccontextmanager
async def running(settings: Settings, resources: Resources) -> AsyncIterator[Consumer]:
    consumer = Consumer(settings, resources.ingestor)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        assert not task.done(), task  # the consumer never ended by itself
        await consumer.stop()
        await task
        await consumer.close()


async def test_a_redis_at_maxmemory_recovers_by_offloading_and_loses_nothing(
    own_resources: tuple[Settings, Resources], amqp: object, own_redis_client: Redis
) -> None:
    settings, resources = own_resources
    redis = own_redis_client
    variables = [f"urn:full:{n}" for n in range(20)]
    big = "x" * 2_000
    async with running(settings, resources) as consumer:
        first = [packet(v, s, pad=big) for s in range(20) for v in variables]
        await publish(amqp, settings.exchange, first)
        await wait_for(lambda: consumer.processed == len(first))
        # Redis reaches maxmemory: history is what fills it, and only offload frees it.
        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory", used)
        jobs_before = resources.trigger.jobs_run
        second = [packet(v, 100 + s, pad=big) for s in range(10) for v in variables]
        await publish(amqp, settings.exchange, second)
        await wait_for(lambda: consumer.processed == len(first) + len(second), within=60)
        assert resources.trigger.jobs_run > jobs_before
    reader = dataclasses.replace(settings, amqp_url=None)
    with ServerThread(reader) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for v in variables:
                answer = await http.get(f"/history/{v}", params={"limit": 1000})
                entries = answer.json()["entries"]
                assert [e["doc"]["n"] for e in entries] == [*range(20), *range(100, 110)], v
                assert (await http.get(f"/latest/{v}")).json()["n"] == 109
    assert settings.objects_url
    objects = Path(settings.objects_url.removeprefix("file://"))
    assert await asyncio.to_thread(lambda: any(objects.rglob("*.parquet")))  # offloaded


async def test_a_poison_batch_is_retried_with_backoff_and_never_ends_the_consumer(
    own_resources: tuple[Settings, Resources], amqp: object, own_redis_client: Redis
) -> None:
    settings, resources = own_resources
    redis = own_redis_client
    # A key of the wrong type where the history stream goes: write.lua fails with WRONGTYPE.
    await redis.set(keys.history(keys.key_for("urn:poison:a")), b"not a stream")
    calls = 0
    write_batch = resources.ingestor.write_batch

    async def counted(packets: object, **options: object) -> object:
        nonlocal calls
        calls += 1
        return await write_batch(packets, **options)  # type: ignore[arg-type]

    resources.ingestor.write_batch = counted  # type: ignore[method-assign,assignment]
    async with running(settings, resources) as consumer:
        await publish(amqp, settings.exchange, [packet("urn:poison:a", 0)])
        await asyncio.sleep(2.0)
        assert consumer.processed == 0  # not acknowledged
        assert 2 <= calls <= 8, calls  # retried, with backoff: not hot
        await redis.delete(keys.history(keys.key_for("urn:poison:a")))
        await wait_for(lambda: consumer.processed == 1, within=15)


async def test_an_offload_job_runs_while_redis_refuses_writes_for_memory(
    own_resources: tuple[Settings, Resources], own_redis: str
) -> None:
    """Taking the job lock (SET NX, INCR) and handing history over (SADD) are writes that Redis
    refuses at maxmemory; without them the job that frees memory could never start."""
    settings, resources = own_resources
    body = b"\n".join(packet("urn:job:a", s) for s in range(50))
    parsed = PacketParser(settings).parse_message(body, ndjson=True)
    await resources.ingestor.write_batch([p for p in parsed if isinstance(p, Packet)])
    await asyncio.to_thread(out_of_memory, own_redis)
    report = await resources.offloader.run_job(everything=True)
    assert report is not None and report.entries == 50, report
