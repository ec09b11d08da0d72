"""Under LATEST_BACKEND=redisjson the write script keeps the latest hash, history and the feed
exactly as the default backend does: the same randomized packets (out of order, redelivered,
tied, some with an Elasticsearch version or create-only, deletes between them) are written by
both, and everything either leaves in Redis is compared. Both run on fakeredis' TCP server
(Lua and JSON), one server each: the JSON module cannot run here, and one implementation of
Redis under both keeps the comparison to the scripts. The default backend also runs on the
suite's real redis-server, and leaves the same there: fakeredis runs write.lua as Redis does.
The RedisJSON members are checked against the latest hash."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.packets import Packet
from latest_server.redis_client import connect
from latest_server.settings import Settings
from latest_server.stores import open_latest_store
from latest_server.stores.base import LatestStore
from latest_server.stores.latest_redisjson import RedisJsonLatestStore
from tests.conftest import PARSER, REDIS_URL
from tests.iudx.fakejson import fake_redis_server

GROUPS = ("iisc.ac.in/89a3/rs.example.com/flood", "iisc.ac.in/89a3/rs.example.com/itms")
VARIABLES = [f"{group}/item-{n}" for group in GROUPS for n in range(3)]


def scenario(seed: int) -> list[list[Packet] | tuple[str, str]]:
    """Batches of packets, and ("delete", variable) steps, from ``seed``."""
    rng = random.Random(seed)
    sent: list[Packet] = []
    steps: list[list[Packet] | tuple[str, str]] = []
    for _ in range(12):
        if rng.random() < 0.15:
            steps.append(("delete", rng.choice(VARIABLES)))
            continue
        batch: list[Packet] = []
        for _ in range(rng.randint(1, 60)):
            if sent and rng.random() < 0.2:  # a redelivery, as it was sent
                batch.append(rng.choice(sent))
                continue
            variable = rng.choice(VARIABLES)
            second = rng.randint(0, 40)  # ties and late packets among few times
            document = {"id": variable, "ts": 1_700_000_000 + second, "v": rng.randint(0, 3)}
            item = PARSER.parse_document(0, document)
            assert isinstance(item, Packet)
            roll = rng.random()
            if roll < 0.1:  # an Elasticsearch write with its own version
                item = dataclasses.replace(item, version=item.ts_us + rng.randint(-5, 5) * 10**6)
            elif roll < 0.15:
                item = dataclasses.replace(item, version_type="create")
            elif roll < 0.2:
                item = dataclasses.replace(item, version_type="external_gte")
            batch.append(item)
            sent.append(item)
        steps.append(batch)
    return steps


async def run(url: str, backend: str, steps: list[Any]) -> dict[str, Any]:
    """Write ``steps`` with ``backend`` on the Redis at ``url``; what Redis then holds."""
    redis = connect(url)
    settings = Settings(redis_url=url, backend=backend)
    store: LatestStore = await open_latest_store(url, redis=redis, settings=settings)
    subscriber = Redis.from_url(url)
    pubsub = subscriber.pubsub()
    await pubsub.ssubscribe(*(keys.feed(keys.key_for(v)) for v in VARIABLES))
    confirmed = 0  # every subscription in place before the first write
    while confirmed < len(VARIABLES):
        reply = await pubsub.get_message(timeout=1)
        confirmed += reply is not None and reply["type"] == "ssubscribe"
    outcomes: list[tuple[Any, ...]] = []
    deletes: list[tuple[str, int | None]] = []
    for step in steps:
        if isinstance(step, tuple):
            variable = step[1]
            done = await store.delete(variable, keys.key_for(variable), None, "external")
            deletes.append((done.result, done.current))
            continue
        for o in await store.write_batch(step):
            outcomes.append((o.applied, o.seq, o.current, o.existed, o.entry))
    published = sum(1 for o in outcomes if o[1] > 0)
    feed: dict[bytes, list[bytes]] = {}  # in order per channel (a variable's feed)
    received = 0
    deadline = time.monotonic() + 30
    while received < published and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:  # "<epoch> <seq> <ts> <doc>": the epoch is this run's clock
            feed.setdefault(message["channel"], []).append(message["data"].split(b" ", 1)[1])
            received += 1
    held: dict[str, Any] = {"outcomes": outcomes, "deletes": deletes, "feed": feed}
    for variable in VARIABLES:
        k = keys.key_for(variable)
        meta = await redis.hgetall(keys.meta(k))
        meta.pop(b"e", None)
        held[variable] = {
            "latest": await redis.hgetall(keys.latest(k)),
            "history": await redis.xrange(keys.history(k)),
            "index": await redis.zrange(keys.history_index(k), 0, -1, withscores=True),
            "meta": meta,
        }
    if isinstance(store, RedisJsonLatestStore):
        held["json"] = {
            group: orjson.loads(await redis.execute_command("JSON.GET", f"iudx:{group}", "."))
            for group in GROUPS
        }
    await pubsub.aclose()
    await subscriber.aclose()
    await store.close()
    return held


@pytest.mark.parametrize("seed", range(6))
async def test_redisjson_writes_what_the_default_backend_writes(seed: int, redis: Redis) -> None:
    steps = scenario(seed)
    with fake_redis_server() as plain_url, fake_redis_server() as json_url:
        plain, with_json, real = await asyncio.gather(
            run(plain_url, "redis", steps),
            run(json_url, "redisjson", steps),
            run(REDIS_URL, "redis", steps),  # the suite's own redis-server, flushed
        )
    members = with_json.pop("json")
    assert with_json == plain
    assert real == plain
    published = sum(len(messages) for messages in plain["feed"].values())
    assert published == sum(1 for o in plain["outcomes"] if o[1] > 0) > 0
    assert any(not o[0] for o in plain["outcomes"]), "no stale packet: the scenario is too tame"
    # Each resource's member is its latest document; a deleted one has none.
    for variable in VARIABLES:
        group = variable.rsplit("/", 1)[0]
        member = members[group].get(f"_{keys.digest(variable)}")
        doc = plain[variable]["latest"].get(b"doc")
        assert member == (orjson.loads(doc) if doc is not None else None), variable
