"""Competing consumers: three real ``latest-server consume`` processes on one queue, one of them
SIGKILLed mid-run (its unacknowledged messages are redelivered to the others), over shuffled
packets with duplicates and late arrivals, must leave exactly what one consumer leaves: the same
latest documents and the same history, as sets (arrival order, hence seqs, may differ)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.settings import Settings
from tests.test_faults import (
    Child,
    Spawn,
    declare_topology,
    history_total,
    latest_server,
    publish_all,
    queue_state,
    server_env,
    spawn,
    until,
)

__all__ = ["spawn"]  # the fixture, used by name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

T0_MS = 1_700_000_000_000

# (latest hash without its seq, {(ts, doc)} of the stream, {(ts, digest)} of the index)
State = dict[str, tuple[dict[bytes, bytes], set[tuple[int, bytes]], set[tuple[int, bytes]]]]


def shuffled_messages(seed: int, variables: int = 12, per_variable: int = 800) -> list[bytes]:
    """Packets of ``variables`` variables at distinct times each, in random order (most arrive
    after a newer packet of their variable), an eighth of them published twice, grouped into
    messages of one to three packets (an array when more than one). Distinct times: which
    document is the latest does not depend on the order they are written in."""
    rng = random.Random(seed)
    packets: list[dict[str, Any]] = []
    for v in range(variables):
        for offset in rng.sample(range(86_400_000), per_variable):
            packets.append({"id": f"v{v}", "ts": T0_MS + offset, "x": rng.random()})
    rng.shuffle(packets)
    for packet in rng.sample(packets, len(packets) // 8):  # duplicates, later than the first copy
        packets.insert(rng.randrange(packets.index(packet) + 1, len(packets) + 1), packet)
    messages: list[bytes] = []
    i = 0
    while i < len(packets):
        group = packets[i : i + rng.randint(1, 3)]
        messages.append(orjson.dumps(group[0] if len(group) == 1 else group))
        i += len(group)
    return messages


def expected(messages: list[bytes]) -> tuple[int, dict[str, int]]:
    """(distinct packets, the latest ts in ms per variable) of a publication."""
    distinct: set[bytes] = set()
    latest: dict[str, int] = {}
    for body in messages:
        items = orjson.loads(body)
        for packet in items if isinstance(items, list) else [items]:
            distinct.add(orjson.dumps(packet))
            latest[packet["id"]] = max(latest.get(packet["id"], 0), packet["ts"])
    return len(distinct), latest


async def state(redis: Redis, variables: list[str]) -> State:
    found: State = {}
    for variable in variables:
        key = keys.key_for(variable)
        latest = await redis.hgetall(keys.latest(key))
        latest.pop(b"s", None)  # the seq of its entry: arrival order
        entries = await redis.xrange(keys.history(key))
        index = await redis.zrange(keys.history_index(key), 0, -1, withscores=True)
        found[variable] = (
            latest,
            {(int(fields[b"t"]), fields[b"d"]) for _, fields in entries},
            {(int(score), member[16:]) for member, score in index},
        )
        assert len(entries) == len(index) == len(found[variable][1]), "an entry stored twice"
    return found


async def run(
    spawn: Spawn,
    settings: Settings,
    redis: Redis,
    amqp: Any,
    messages: list[bytes],
    consumers: int,
    *,
    kill_one: bool,
) -> State:
    """``consumers`` processes drain ``messages``; with ``kill_one``, the first is SIGKILLed a
    third of the way and another started. Returns what Redis holds once all stopped."""
    distinct, latest = expected(messages)
    exchange = await declare_topology(amqp, settings)
    await publish_all(exchange, messages)  # all queued first: the consumers compete from the start
    # Small prefetch and batches: the consumers take turns, and a SIGKILL leaves much unacked.
    env = server_env(settings, LATEST_PREFETCH="40", LATEST_BATCH_SIZE="20")
    children: list[Child] = [
        latest_server(spawn, "consume", env, f"consumer{i}") for i in range(consumers)
    ]

    async def all_consuming() -> bool:
        return (await queue_state(amqp, settings.queue))[1] == len(children)

    if kill_one:
        # Every consumer on the queue first (a process may take a while to start on a busy
        # machine), then a third written: the one killed was competing with the others.
        await until("every consumer on the queue", all_consuming, 60, *children)
        await until("a third written", lambda: _more_than(redis, distinct // 3), 60, *children)
        ready, consuming = await queue_state(amqp, settings.queue)
        assert ready > 0 and consuming == consumers, "killed after the queue was drained"
        children[0].kill()
        children[0] = latest_server(spawn, "consume", env, "replacement")

    await until("every consumer on the queue", all_consuming, 60, *children)

    async def drained() -> bool:
        ready, _ = await queue_state(amqp, settings.queue)
        return ready == 0 and await history_total(redis) >= distinct

    await until("the queue drained", drained, 120, *children)
    for child in children:
        assert await child.terminate() == 0, child.describe()
    assert await queue_state(amqp, settings.queue) == (0, 0), "messages left unacknowledged"
    assert await history_total(redis) == distinct
    found = await state(redis, sorted(latest))
    for variable, ts_ms in latest.items():
        assert found[variable][0][b"v"] == str(ts_ms * 1000).encode(), variable
    return found


async def _more_than(redis: Redis, count: int) -> bool:
    return await history_total(redis) > count


async def test_three_consumers_store_what_one_stores(
    settings: Settings, redis: Redis, amqp: Any, spawn: Spawn
) -> None:
    messages = shuffled_messages(seed=24)
    one = await run(spawn, settings, redis, amqp, messages, 1, kill_one=False)
    await redis.flushdb()
    three = await run(spawn, settings, redis, amqp, messages, 3, kill_one=True)
    assert set(one) == set(three)
    for variable in one:
        assert three[variable] == one[variable], variable
