"""Quorum queues (LATEST_QUEUE_TYPE=quorum) on the real broker: a message that makes processing
fail (here: a variable whose history index in Redis is a string, left by something else, so the
write script fails with WRONGTYPE) is returned to the queue until the broker dead-letters it past
LATEST_DELIVERY_LIMIT; the messages around it are written; the consumer goes on. A quorum queue
cannot be declared over a classic one: the error names both settings."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from typing import Any

import aio_pika
import orjson
import pytest
from aiormq.exceptions import ChannelPreconditionFailed
from redis.asyncio import Redis

from latest_server import keys
from latest_server.consumer import queue_arguments
from latest_server.errors import ConfigError
from latest_server.settings import Settings
from tests.conftest import AMQP_URL, drain_dead_letters, publish, wait_for
from tests.test_consumer import consumer
from tests.test_faults import server_env

__all__ = ["consumer"]  # the fixture, used by name


def test_classic_queues_keep_their_arguments() -> None:
    assert queue_arguments(Settings()) is None
    quorum = queue_arguments(Settings(queue_type="quorum", delivery_limit=3))
    assert quorum is not None and quorum["x-delivery-limit"] == 3


async def test_a_poison_message_is_dead_lettered_by_the_broker_at_the_delivery_limit(
    settings: Settings, amqp: Any, consumer: Any, redis: Redis
) -> None:
    running = await consumer(queue_type="quorum", delivery_limit=2)
    async with await aio_pika.connect(AMQP_URL) as connection:  # declared as a quorum queue:
        with pytest.raises(ChannelPreconditionFailed, match="inequivalent arg"):
            channel = await connection.channel()
            await channel.declare_queue(
                settings.queue, durable=True, arguments={"x-queue-type": "classic"}
            )
    await redis.set(keys.history_index(keys.key_for("poison")), "not a sorted set")
    good = [orjson.dumps({"id": f"ok{i}", "ts": 1_700_000_000 + i}) for i in range(4)]
    poison = orjson.dumps({"id": "poison", "ts": 1_700_000_000})
    mixed = orjson.dumps([{"id": "ok-mixed", "ts": 1_700_000_000}, {"id": "poison", "ts": 1}])
    await publish(amqp, settings.exchange, [good[0], poison, good[1], mixed, *good[2:]])

    dead = await drain_dead_letters(amqp, settings.dead_letter_queue, 2)
    assert sorted(m.body for m in dead) == sorted([poison, mixed])
    for message in dead:
        death = message.headers["x-death"][0]
        assert death["reason"] == "delivery_limit", death
        assert death["queue"] == settings.queue
    for variable in [f"ok{i}" for i in range(4)]:
        assert await redis.hexists(keys.latest(keys.key_for(variable)), "doc"), variable
    # each good message was acknowledged once; the consumer is still consuming
    assert running.consumer.processed == 4
    await publish(amqp, settings.exchange, [orjson.dumps({"id": "after", "ts": 1_700_000_009})])
    await wait_for(lambda: redis.hexists(keys.latest(keys.key_for("after")), "doc"))
    state = await amqp.declare_queue(settings.queue, passive=True)
    assert state.declaration_result.message_count == 0


async def test_a_quorum_queue_over_a_classic_one_is_a_clear_error(
    settings: Settings, amqp: Any, consumer: Any
) -> None:
    first = await consumer()  # declares the classic queue
    await first.stop()
    with pytest.raises(ConfigError) as refused:
        await consumer(queue_type="quorum")
    message = str(refused.value)
    assert "LATEST_QUEUE_TYPE=quorum" in message and "LATEST_QUEUE" in message
    assert settings.queue in message


async def test_the_command_line_names_both_settings_and_exits_1(
    settings: Settings, amqp: Any, consumer: Any
) -> None:
    first = await consumer()  # declares the classic queue
    await first.stop()
    env = server_env(dataclasses.replace(settings, queue_type="quorum"))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "latest_server", "consume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("latest-server: error: ")
    assert "LATEST_QUEUE_TYPE=quorum" in last and "LATEST_QUEUE" in last, last
