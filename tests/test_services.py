"""The suite's own services: it runs on a Redis and a vhost it created, never on the machine's."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import aio_pika
import pytest
from redis.asyncio import Redis

from tests import conftest

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("TEST_REDIS_URL") or os.environ.get("TEST_AMQP_URL")),
    reason="TEST_REDIS_URL/TEST_AMQP_URL name services given to the suite",
)


async def test_the_suite_runs_on_a_redis_it_started() -> None:
    async with Redis.from_url(conftest.REDIS_URL) as redis:
        directory = (await redis.config_get("dir"))["dir"]
        port = int((await redis.config_get("port"))["port"])
    assert port != 6379
    assert os.path.basename(directory).startswith("latest-test-redis-")


async def test_the_suite_runs_in_a_vhost_of_its_own() -> None:
    vhost = urlsplit(conftest.AMQP_URL).path.lstrip("/")
    assert vhost.startswith("latest-test-")
    connection = await aio_pika.connect(conftest.AMQP_URL)
    await connection.close()
