"""A history that goes back: what a failover does when the promoted replica had not got the last
entries its primary published (replication is asynchronous). The test makes the single Redis
forget its last entries as such a replica would (stream, index and counter), then the feed
reconnects, as it does after a failover. Subscribers must get a ``reset`` naming the seqs that
are gone, then the entries that take those seqs again: never a silent gap."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ingest_client import Reset
from latest_server import keys
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.conftest import ServerThread, ws_url
from tests.web.test_ws_faults import (
    Client,
    Producer,
    cancel,
    kill_feed_connections,
    wait_until_complete,
)


async def forget_after(redis: Redis, variable: str, seq: int) -> None:
    """Redis as a replica that never got the entries after ``seq``."""
    key = keys.key_for(variable)
    kept = await redis.xrange(keys.history(key), max=f"{seq}-0")
    await redis.delete(keys.history(key))  # its last id too, as the replica never saw them
    for entry_id, fields in kept:
        await redis.xadd(keys.history(key), fields, id=entry_id)
    for member in await redis.zrange(keys.history_index(key), 0, -1):
        if int(member[:16]) > seq:
            await redis.zrem(keys.history_index(key), member)
    await redis.hset(keys.meta(key), "s", seq)


@pytest.mark.redis_both
async def test_subscribers_get_a_reset_when_history_goes_back_then_the_new_entries(
    settings: Settings, redis: Redis, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> None:
    config = dataclasses.replace(settings, objects_url=(tmp_path / "objects").as_uri())
    stores = await Resources.open(config)
    try:
        url = ws_url(http_server(config, ws_probe_interval=30.0))
        producer = Producer(stores, ["h/a"])
        await producer.write(10)
        live = Client("live", [url], ["h/a"])
        task = asyncio.create_task(live.run(random.Random(1), None, asyncio.Event()))
        await wait_until_complete([live], producer, within=20)
        epoch = live.positions["h/a"][0]

        await forget_after(redis, "h/a", 8)  # 9 and 10 were sent, and are gone
        for seq in (9, 10):
            del producer.seqs["h/a"][seq]
        assert await kill_feed_connections(redis) >= 1  # the feed moves, as after a failover
        # a client that got 10 before and resumes now
        resumed = Client("resumed", [url], ["h/a"], since={"h/a": (epoch, 10)})
        resumed_task = asyncio.create_task(resumed.run(random.Random(2), None, asyncio.Event()))
        await asyncio.sleep(0.5)
        await producer.write(3)  # they take seqs 9, 10 and 11
        await wait_until_complete([live, resumed], producer, within=20)
        await asyncio.sleep(0.3)  # nothing more may come
        await cancel(task, resumed_task)
    finally:
        await stores.close()

    new_ts = [producer.seqs["h/a"][s] for s in (9, 10, 11)]
    assert live.resets == [Reset("h/a", epoch, (9, 10))]
    assert live.got["h/a"] == [*range(1, 11), 9, 10, 11]
    assert live.ts["h/a"][-3:] == new_ts  # the new entries, not the lost ones again
    assert resumed.resets == [Reset("h/a", epoch, (9, 10))]
    assert resumed.got["h/a"] == [9, 10, 11]
    assert resumed.ts["h/a"] == new_ts


@pytest.mark.redis_both
async def test_sent_entries_replaced_by_new_ones_are_named_lost_when_the_feed_resubscribes(
    settings: Settings, redis: Redis, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> None:
    """The new entries took the forgotten seqs before the subscriber looked: the top is back
    above what it was sent, so only the entries' times tell. The feed's resubscription (a
    failover always ends the old primary's connection) makes it compare."""
    config = dataclasses.replace(settings, objects_url=(tmp_path / "objects").as_uri())
    stores = await Resources.open(config)
    try:
        url = ws_url(http_server(config, ws_probe_interval=30.0))
        producer = Producer(stores, ["h/b"])
        await producer.write(10)
        live = Client("live", [url], ["h/b"])
        task = asyncio.create_task(live.run(random.Random(1), None, asyncio.Event()))
        await wait_until_complete([live], producer, within=20)
        epoch = live.positions["h/b"][0]
        await forget_after(redis, "h/b", 8)
        for seq in (9, 10):
            del producer.seqs["h/b"][seq]
        await producer.write(3)  # seqs 9, 10 (taken for the first time, as the client sees it), 11
        await wait_until_complete([live], producer, within=20)
        assert live.got["h/b"] == [*range(1, 12)]  # 9 and 10 are the old ones: not what is stored
        assert await kill_feed_connections(redis) >= 1
        deadline = asyncio.get_running_loop().time() + 20
        while not live.resets:
            assert asyncio.get_running_loop().time() < deadline, "no reset"
            await asyncio.sleep(0.05)
        await wait_until_complete([live], producer, within=20)
        await asyncio.sleep(0.3)
        await cancel(task)
    finally:
        await stores.close()

    assert live.resets == [Reset("h/b", epoch, (9, 11))]
    assert live.got["h/b"] == [*range(1, 12), 9, 10, 11]
    assert live.ts["h/b"][-3:] == [producer.seqs["h/b"][s] for s in (9, 10, 11)]
