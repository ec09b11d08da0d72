"""Fixtures of the client's tests: a RabbitMQ exchange bound to a queue of this test's own, and
relays (tests/client/relay.py) between the client and the real RabbitMQ or HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import orjson
import pytest

from tests.conftest import AMQP_URL, settled
from tests.servers import Relay


@pytest.fixture
async def amqp_target(names: dict[str, str]) -> AsyncIterator[tuple[str, Any]]:
    """An exchange bound to a queue; yields (exchange name, queue)."""
    connection = await aio_pika.connect(AMQP_URL)
    ch = await connection.channel()
    exchange = await ch.declare_exchange(
        names["exchange"], aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await ch.declare_queue(names["queue"], durable=True)
    await queue.bind(exchange, "#")
    yield names["exchange"], queue
    await queue.delete(if_unused=False, if_empty=False)
    await ch.exchange_delete(names["exchange"])
    await connection.close()


async def read_all(queue: Any, settle: float = 0.5) -> list[dict[str, Any]]:
    found = await settled(queue, settle, 0.02)
    return [doc for message in found for doc in orjson.loads(message.body)]


@pytest.fixture
def amqp_relay() -> Iterator[Relay]:
    """A relay to the test broker; the client connects to ``relayed_amqp_url(relay)``."""
    port = int(AMQP_URL.rsplit(":", 1)[1].split("/")[0])
    relay = Relay(port)
    yield relay
    relay.close()


def relayed_amqp_url(relay: Relay) -> str:
    head, _, tail = AMQP_URL.rpartition(":")
    vhost = tail.partition("/")[2]
    return f"{head}:{relay.port}/{vhost}"
