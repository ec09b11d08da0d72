"""amqp(s)://: publish to a RabbitMQ exchange with publisher confirms and ``mandatory`` (an
unroutable message — no queue bound yet — is an error to retry, not a silent loss).

The sync transport uses pika's BlockingConnection (used from one thread only: the session's
flusher); the async one uses aio-pika's robust connection."""

from __future__ import annotations

import contextlib
from typing import Any

import aio_pika
import pika
import pika.exceptions
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import ChannelInvalidStateError

from ingest_client.errors import TransportError
from ingest_client.transports.base import DEFAULT_EXCHANGE, DEFAULT_ROUTING_KEY, DEFAULT_TIMEOUT

PIKA_FAILURES = (pika.exceptions.AMQPError, OSError)


class AmqpTransport:
    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        routing_key: str = DEFAULT_ROUTING_KEY,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> None:
        self.parameters = pika.URLParameters(url)
        self.parameters.blocked_connection_timeout = timeout
        self.parameters.socket_timeout = timeout
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = pika.BasicProperties(
            content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent
        )
        self.connection: Any = None
        self.channel: Any = None

    def _open(self) -> Any:
        if self.channel is None or not self.channel.is_open:
            self._drop()
            self.connection = pika.BlockingConnection(self.parameters)
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
        return self.channel

    def _drop(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            # It is being thrown away; the publish error is what matters.
            with contextlib.suppress(*PIKA_FAILURES):
                connection.close()

    def publish(self, message: bytes) -> None:
        try:
            self._open().basic_publish(
                self.exchange, self.routing_key, message, self.properties, mandatory=True
            )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            raise TransportError(f"RabbitMQ did not take the message: {exc!r}") from exc
        except PIKA_FAILURES as exc:
            self._drop()
            raise TransportError(f"publishing to RabbitMQ failed: {exc!r}") from exc

    def close(self) -> None:
        self._drop()


class AsyncAmqpTransport:
    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        routing_key: str = DEFAULT_ROUTING_KEY,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> None:
        self.url = url
        self.exchange_name = exchange
        self.routing_key = routing_key
        self.timeout = timeout
        self.connection: AbstractRobustConnection | None = None
        self.exchange: AbstractExchange | None = None

    async def _open(self) -> AbstractExchange:
        if self.exchange is None:
            self.connection = await aio_pika.connect_robust(self.url, timeout=self.timeout)
            channel = await self.connection.channel(publisher_confirms=True)
            self.exchange = await channel.get_exchange(self.exchange_name, ensure=False)
        return self.exchange

    async def publish(self, message: bytes) -> None:
        try:
            exchange = await self._open()
            await exchange.publish(
                aio_pika.Message(
                    message,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=self.routing_key,
                mandatory=True,
                timeout=self.timeout,
            )
        except (
            aio_pika.exceptions.AMQPError,
            ChannelInvalidStateError,  # the channel closed under us; the robust one reopens
            ConnectionError,
            OSError,
            TimeoutError,
        ) as exc:
            raise TransportError(f"publishing to RabbitMQ failed: {exc!r}") from exc

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
