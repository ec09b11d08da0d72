"""Parts of large aggregations run by a real ``latest-server query-worker`` subprocess over the
suite's own RabbitMQ vhost, on file objects: the answer equals the server's own exactly, and the
worker's log counts the parts it ran; with the worker stopped the same query answers after the
(small) timeout, every part run here. The wire format refuses what is not a part or a partial."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import numpy as np
import pytest

from latest_server import keys
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores import agg_parts, agg_plan, agg_wire, buckets, partials, segments
from latest_server.stores.aggregate import AggQuery, Aggregator
from tests.conftest import AMQP_URL, unique, wait_for
from tests.services import free_port, stop
from tests.stores.test_aggregate import AGGS, FIELDS, START_MS, make_packet


@pytest.fixture
def objects_url(tmp_path: Path) -> str:
    """File objects only here: the worker reads them as the server does."""
    return (tmp_path / "objects").as_uri()


def start_worker(queue: str, objects: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, AMQP_URL=AMQP_URL, OBJECTS_URL=objects, LATEST_QUERY_QUEUE=queue)
    env.update(LATEST_QUERY_WORKERS="2", LATEST_LOG_LEVEL="info")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "latest_server", "query-worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while b"consuming" not in log.read_bytes():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return process


def ran(log: Path) -> int:
    return log.read_text().count("query worker: ran part")


async def refused(queue: str, objects_url: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The worker's replies to a body that is not a part, and to a part of another store."""
    spec = agg_parts.Spec(0, 10, ("x",), None)
    task = agg_parts.Task(objects_url + "-elsewhere", Settings(), ("h/a/transfer/1",), spec)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        for correlation, body in (
            ("junk", b"import os"),
            ("elsewhere", agg_wire.encode_task(task)),
        ):
            message = aio_pika.Message(body, correlation_id=correlation, reply_to=replies.name)
            await channel.default_exchange.publish(message, routing_key=queue)
        found: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def two() -> bool:
            got = await replies.get(fail=False, no_ack=True)
            if got is not None:
                found.append(got)
            return len(found) == 2

        await wait_for(two, within=10)
        return sorted(found, key=lambda m: m.correlation_id != "junk")
    finally:
        await connection.close()


async def written(stores: Resources, monkeypatch: pytest.MonkeyPatch) -> AggQuery:
    """Three objects of one variable in row groups of 32 rows, parts of 40 rows, and a few
    entries in Redis (redelivered) inside the last object's span; the query of them all."""
    monkeypatch.setattr(segments, "ROW_GROUP_ROWS", 32)
    monkeypatch.setattr(agg_plan, "ROWS_PER_TASK", 40)
    rng = random.Random(7)
    for step in range(3):
        base = START_MS + step * 86_400_000 * 3
        made = [make_packet("a", base + n * 600_000, rng, False) for n in range(200)]
        await stores.ingestor.write_batch(made + made[:3])
        await stores.offloader.run_job(everything=True)
    await stores.ingestor.write_batch(made[-10:])  # redelivered after they left Redis
    return AggQuery((keys.key_for("a"),), FIELDS, AGGS, interval=buckets.parse_interval("1d"))


async def test_a_query_worker_runs_the_parts_and_a_dead_one_only_slows_queries(
    stores: Resources, objects_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = await written(stores, monkeypatch)
    base_settings = dataclasses.replace(
        stores.settings, query_workers=0, query_parallel_rows=1, query_cache_bytes=0
    )
    here = Aggregator(stores.history, objects_url, base_settings)
    local = await here.aggregate(query)
    here.close()

    queue = unique("query")
    log = tmp_path / "worker.log"
    worker = start_worker(queue, objects_url, log)
    remote_settings = dataclasses.replace(
        base_settings, query_remote=True, query_queue=queue, query_remote_timeout=15.0
    )
    engine = Aggregator(stores.history, objects_url, remote_settings)
    try:
        answer = await engine.aggregate(query)
        assert engine.remote is not None
        sent = engine.remote.sent
        # every object part went to the worker; the cluster with Redis' entries ran here
        assert sent >= 6 and engine.remote.answered == sent and answer.tasks == sent + 1
        assert answer.series == local.series and answer.entries == local.entries == 600
        await wait_for(lambda: ran(log) >= sent, within=10)  # its stderr, read as it comes
        assert ran(log) == sent
        refusals = await refused(queue, objects_url)
        assert [m.correlation_id for m in refusals] == ["junk", "elsewhere"]
        assert all(m.headers.get("error") and not m.body for m in refusals)
        assert "another object store" in str(refusals[1].headers["error"])
        assert ran(log) == sent and log.read_text().count("refused a part") == 2
    finally:
        stop(worker)
    try:
        engine.remote.timeout = 0.5  # nobody consumes now
        started = time.monotonic()
        alone = await engine.aggregate(query)
        assert time.monotonic() - started >= 0.5
        assert alone.series == local.series and engine.remote.answered == sent
        assert engine.remote.sent == 2 * sent
    finally:
        await engine.aclose()
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await connection.close()


async def test_a_broker_out_of_reach_runs_every_part_here(
    stores: Resources, objects_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = await written(stores, monkeypatch)
    settings = dataclasses.replace(
        stores.settings, query_workers=0, query_parallel_rows=1, query_cache_bytes=0
    )
    here = Aggregator(stores.history, objects_url, settings)
    local = await here.aggregate(query)
    here.close()
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    settings = dataclasses.replace(
        settings, amqp_url=closed, query_remote=True, query_remote_timeout=30.0
    )
    engine = Aggregator(stores.history, objects_url, settings)
    try:
        started = time.monotonic()
        answer = await engine.aggregate(query)
        again = await engine.aggregate(query)  # within DOWN_SECONDS: not even tried
        assert time.monotonic() - started < 20  # refused at once, not after the 30 s timeout
        assert answer.series == again.series == local.series
        assert engine.remote is not None and engine.remote.sent == engine.remote.answered == 0
    finally:
        await engine.aclose()


def test_the_wire_carries_data_only() -> None:
    rng = np.random.default_rng(3)
    ts = np.sort(rng.integers(0, 10**9, 500))
    seq = np.arange(500)
    numbers = {"x": np.where(rng.random(500) < 0.2, np.nan, rng.normal(size=500))}
    made = partials.from_rows(ts // 10**8 * 10**8, ts, seq, numbers, values=True)
    back = agg_wire.decode_partial(agg_wire.encode_partial(made), ("x",))
    assert np.array_equal(back.starts, made.starts) and np.array_equal(back.docs, made.docs)
    for name in ("count", "sum", "sumsq", "min", "max", "first", "last"):
        assert np.array_equal(
            getattr(back.fields["x"], name), getattr(made.fields["x"], name), equal_nan=True
        )
    assert back.fields["x"].values is not None and made.fields["x"].values is not None
    assert all(
        np.array_equal(a, b)
        for a, b in zip(back.fields["x"].values, made.fields["x"].values, strict=True)
    )
    with pytest.raises(agg_wire.WireError):
        agg_wire.decode_partial(agg_wire.encode_partial(made), ("y",))  # other fields
    with pytest.raises(agg_wire.WireError):
        agg_wire.decode_partial(b"\x80\x04not an npz", ("x",))
    spec = agg_parts.Spec(0, 10, ("x",), buckets.parse_interval("1d"), "Europe/Paris", True)
    task = agg_parts.Task("file:///o", Settings(), ("h/a/merged/1",), spec, (1, 3), whole=True)
    assert agg_wire.decode_task(agg_wire.encode_task(task), Settings()) == task
    for bad in (
        b"[]",
        b'{"names": "x"}',
        b"\x00",
        agg_wire.encode_task(task).replace(b"Europe", b"Mars"),
    ):
        with pytest.raises(agg_wire.WireError):
            agg_wire.decode_task(bad, Settings())
    with pytest.raises(agg_wire.WireError):
        agg_wire.encode_task(dataclasses.replace(task, hot=agg_parts.empty_rows(("x",))))
