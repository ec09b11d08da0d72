"""The AMQP consumer against the real RabbitMQ and Redis on this machine."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from latest_server import keys
from latest_server.consumer import ERROR_HEADER, Consumer
from latest_server.errors import REJECT_REASONS
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.conftest import AMQP_URL, REDIS_URL, drain_dead_letters, publish, wait_for


class Running:
    """A consumer running in this event loop until ``stop()``."""

    def __init__(self, settings: Settings, resources: Resources) -> None:
        self.consumer = Consumer(settings, resources.ingestor)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Running:
        await self.consumer.start()
        self.task = asyncio.create_task(self.consumer.run())
        return self

    async def stop(self) -> None:
        await self.consumer.stop()
        assert self.task is not None
        await self.task
        await self.consumer.close()


@pytest.fixture
async def consumer(settings: Settings, resources: Resources) -> AsyncIterator[Callable[..., Any]]:
    running: list[Running] = []

    async def start(**overrides: Any) -> Running:
        runner = Running(dataclasses.replace(settings, **overrides), resources)
        running.append(await runner.start())
        return runner

    yield start
    for runner in reversed(running):
        if runner.task is not None and not runner.task.done():
            await runner.stop()


async def history_docs(redis: Redis, variable: str) -> list[bytes]:
    entries = await redis.xrange(keys.history(keys.key_for(variable)))
    seqs = [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]
    assert seqs == list(range(1, len(entries) + 1)), "seqs must be contiguous from 1"
    return [fields[b"d"] for _, fields in entries]


# --- the property: latest, history and stale counts for any order, duplicates and ties ---

packet_strategy = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["a", "b", "c"]),
        "ts": st.integers(1_700_000_000, 1_700_000_004),
        "n": st.integers(0, 2),
    }
)


@st.composite
def publications(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Packets in publish order (shuffled, with repeats) and their grouping into messages."""
    distinct = draw(st.lists(packet_strategy, min_size=1, max_size=25))
    repeats = draw(st.lists(st.sampled_from(distinct), max_size=10))
    order = draw(st.permutations(distinct + repeats))
    messages: list[list[dict[str, Any]]] = []
    i = 0
    while i < len(order):
        size = draw(st.integers(1, 4))
        messages.append(order[i : i + size])
        i += size
    return order, messages


def model(
    order: list[dict[str, Any]], gte: bool
) -> tuple[dict[str, bytes], dict[str, set[bytes]], int]:
    """What the store must hold, applied in delivery order: the semantics of docs/architecture.md
    ("Identity, time and versions")."""
    latest: dict[str, tuple[int, bytes]] = {}
    history: dict[str, set[bytes]] = {}
    identities: dict[str, set[bytes]] = {}
    stale = 0
    for packet in order:
        raw = orjson.dumps(packet)
        # one packet whatever its key order: its identity is its canonical form
        identity = orjson.dumps(packet, option=orjson.OPT_SORT_KEYS)
        seen = identities.setdefault(packet["id"], set())
        if identity in seen:
            stale += 1  # a redelivery: neither history nor latest changes
            continue
        seen.add(identity)
        history.setdefault(packet["id"], set()).add(raw)
        current = latest.get(packet["id"])
        if current is None or packet["ts"] > current[0] or (gte and packet["ts"] == current[0]):
            latest[packet["id"]] = (packet["ts"], raw)
        else:
            stale += 1
    return {k: v[1] for k, v in latest.items()}, history, stale


@pytest.mark.parametrize("version_type", ["external", "external_gte"])
@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=publications())
def test_any_order_with_duplicates_and_ties(
    settings: Settings,
    version_type: str,
    data: tuple[list[dict[str, Any]], list[list[dict[str, Any]]]],
) -> None:
    order, messages = data
    settings = dataclasses.replace(settings, version_type=version_type)
    asyncio.run(_run_property(settings, order, messages))


async def _run_property(
    settings: Settings, order: list[dict[str, Any]], messages: list[list[dict[str, Any]]]
) -> None:
    async with Redis.from_url(REDIS_URL) as redis:
        await redis.flushdb()
        resources = await Resources.open(settings)
        connection = await aio_pika.connect(AMQP_URL)
        runner = Running(settings, resources)
        try:
            await runner.start()
            channel = await connection.channel()
            bodies = [orjson.dumps(group[0] if len(group) == 1 else group) for group in messages]
            await publish(channel, settings.exchange, bodies)
            await wait_for(lambda: runner.consumer.processed == len(bodies))
            await runner.stop()

            latest, history, stale = model(order, settings.version_type == "external_gte")
            for variable, raw in latest.items():
                stored = await redis.hget(keys.latest(keys.key_for(variable)), "doc")
                assert stored == raw, variable
                docs = await history_docs(redis, variable)
                assert sorted(docs) == sorted(history[variable])
            assert resources.ingestor.totals.stale == stale
            assert resources.ingestor.totals.accepted == len(order) - stale
        finally:
            channel = await connection.channel()
            await channel.queue_delete(settings.queue)
            await channel.queue_delete(settings.dead_letter_queue)
            await connection.close()
            await resources.close()
            await redis.flushdb()


# --- dead letters ---

BAD = {
    "not_json": b"{this is not json",
    "not_object": b'"just a string"',
    "missing_id": b'{"observationDateTime": "2024-01-01T00:00:00Z"}',
    "bad_id": b'{"id": ["x"], "observationDateTime": "2024-01-01T00:00:00Z"}',
    "missing_time": b'{"id": "x"}',
    "bad_time": b'{"id": "x", "observationDateTime": "the day after tomorrow"}',
    "future_time": b'{"id": "x", "ts": 4102444800}',  # 2100-01-01, past LATEST_MAX_FUTURE
    "too_large": b'{"id": "x", "ts": 1700000000, "blob": "' + b"z" * 3000 + b'"}',
    "too_deep": b'{"id": "x", "ts": 1700000000, "deep": ' + b"[" * 300 + b"]" * 300 + b"}",
    "bad_session": b'{"id": "run", "ts": 1700000000, "@session": {"state": "dancing"}}',
    # one message: the session closes, then asks to open again (the second packet is refused)
    "bad_transition": b'[{"id": "run2", "ts": 1700000000, "@session": {"state": "closed"}},'
    b' {"id": "run2", "ts": 1700000001, "@session": {"state": "open"}}]',
}


async def test_every_rejection_goes_to_the_dead_letter_queue_with_its_reason(
    settings: Settings, amqp: Any, consumer: Any, redis: Redis
) -> None:
    # forbidden: outside a token's prefixes, which AMQP has none of (RabbitMQ's own users are its
    # access control)
    assert set(BAD) == set(REJECT_REASONS) - {"forbidden"}
    running = await consumer(max_packet_bytes=2048)
    good = [orjson.dumps({"id": f"ok{i}", "ts": 1_700_000_000 + i}) for i in range(6)]
    mixed = b'[{"id": "ok-in-array", "ts": 1700000000}, 17]'
    bodies = [good[0], *BAD.values(), good[1], mixed, *good[2:]]
    await publish(amqp, settings.exchange, bodies)
    await wait_for(lambda: running.consumer.processed == len(bodies))

    dead = await drain_dead_letters(amqp, settings.dead_letter_queue, len(BAD) + 1)
    reasons = sorted(m.headers[ERROR_HEADER] for m in dead)
    assert reasons == sorted([*BAD, "not_object"])
    by_reason = {m.headers[ERROR_HEADER]: m for m in dead if m.headers.get("x-latest-index") == 0}
    assert by_reason["not_json"].body == BAD["not_json"]
    assert all(m.headers["x-latest-detail"] for m in dead)
    for variable in [f"ok{i}" for i in range(6)] + ["ok-in-array"]:
        assert await redis.hexists(keys.latest(keys.key_for(variable)), "doc"), variable
    # the consumer is still running and still consuming
    await publish(amqp, settings.exchange, [orjson.dumps({"id": "after", "ts": 1_700_000_009})])
    await wait_for(lambda: redis.hexists(keys.latest(keys.key_for("after")), "doc"))


# --- graceful stop ---


async def test_stop_finishes_the_batch_in_hand_and_leaves_the_rest_queued(
    settings: Settings, amqp: Any, consumer: Any, redis: Redis
) -> None:
    first = await consumer(batch_size=50, prefetch=50)  # declares the topology
    await first.stop()
    bodies = [orjson.dumps({"id": f"v{i % 7}", "ts": 1_700_000_000 + i}) for i in range(300)]
    await publish(amqp, settings.exchange, bodies)
    # Hold writes for a moment so that stop() arrives while a batch is in hand.
    await redis.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    running = await consumer(batch_size=50, prefetch=50)
    await wait_for(lambda: running.consumer.in_hand > 0)
    in_hand = running.consumer.in_hand
    await running.stop()
    written = sum([await redis.xlen(keys.history(keys.key_for(f"v{i}"))) for i in range(7)])
    assert written == running.consumer.processed == in_hand > 0
    queue = await amqp.declare_queue(settings.queue, passive=True)
    assert queue.declaration_result.message_count == 300 - written


# --- a channel that dies under the consumer ---


async def test_consumes_again_after_the_broker_closes_its_channel(
    settings: Settings, amqp: Any, consumer: Any, redis: Redis
) -> None:
    """A channel error closes the consumer's channel on the broker side; the robust channel
    reopens and the consumer registers itself again: everything published before and after
    is written exactly once."""
    running = await consumer()
    first = [orjson.dumps({"id": f"r{i % 5}", "ts": 1_700_000_000 + i}) for i in range(200)]
    await publish(amqp, settings.exchange, first)
    await wait_for(lambda: running.consumer.processed == 200)
    underlay = running.consumer.underlay
    # an ack of a delivery tag the broker never sent: 406 PRECONDITION_FAILED closes the channel
    await underlay.basic_ack(10**9)
    await wait_for(lambda: running.consumer.underlay is not underlay, within=30)
    second = [orjson.dumps({"id": f"r{i % 5}", "ts": 1_700_001_000 + i}) for i in range(200)]
    await publish(amqp, settings.exchange, second)

    async def all_written() -> bool:
        lengths = [await redis.xlen(keys.history(keys.key_for(f"r{i}"))) for i in range(5)]
        return sum(lengths) == 400

    await wait_for(all_written, within=30)
    for i in range(5):
        await history_docs(redis, f"r{i}")  # contiguous seqs, no duplicate
