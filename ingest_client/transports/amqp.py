"""amqp(s)://: publish to a RabbitMQ exchange with publisher confirms and ``mandatory`` (an
unroutable message — no queue bound yet — is an error to retry, not a silent loss).

Every call is bounded by ``timeout``: connecting, opening the channel, publishing and waiting for
the confirm are one deadline, so a broker that stops answering (a half-open connection, a
network partition) is a ``TransportError`` after ``timeout`` seconds, never a hang. A connection
that failed or timed out is dropped, and the next publish connects afresh.

Both transports run on aio-pika (a plain connection: reconnecting is the batcher's retry loop).
The sync one drives the async one on an event loop thread of its own: pika's blocking
connection, used before, waits for a publisher confirm with no timeout at all."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange
from aio_pika.connection import make_url
from aiormq.exceptions import ChannelInvalidStateError

from ingest_client.errors import TransportError
from ingest_client.transports.base import DEFAULT_EXCHANGE, DEFAULT_ROUTING_KEY, DEFAULT_TIMEOUT

FAILURES = (
    aio_pika.exceptions.AMQPError,
    ChannelInvalidStateError,  # the channel closed under us
    ConnectionError,
    OSError,
    TimeoutError,
)
CLOSE_TIMEOUT = 2.0  # for the polite goodbye to a broker that may be gone


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
        self.connection: AbstractConnection | None = None
        self.exchange: AbstractExchange | None = None

    async def _open(self) -> AbstractExchange:
        if self.exchange is None:
            # Not aio_pika.connect(): it drops a connection that failed to open without
            # closing it (a "never awaited" warning from its __del__); _drop closes it here.
            self.connection = aio_pika.Connection(make_url(self.url))
            await self.connection.connect(timeout=self.timeout)
            channel = await self.connection.channel(publisher_confirms=True)
            self.exchange = await channel.get_exchange(self.exchange_name, ensure=False)
        return self.exchange

    async def publish(self, message: bytes) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                exchange = await self._open()
                await exchange.publish(
                    aio_pika.Message(
                        message,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=self.routing_key,
                    mandatory=True,
                )
        except aio_pika.exceptions.DeliveryError as exc:  # unroutable, or nacked
            raise TransportError(f"RabbitMQ did not take the message: {exc!r}") from exc
        except FAILURES as exc:
            await self._drop()
            if isinstance(exc, TimeoutError):
                raise TransportError(
                    f"RabbitMQ did not confirm within {self.timeout}s (timeout=)"
                ) from exc
            raise TransportError(f"publishing to RabbitMQ failed: {exc!r}") from exc

    async def _drop(self) -> None:
        connection, self.connection, self.exchange = self.connection, None, None
        if connection is not None:
            # It is being thrown away: a broker that does not answer its close gets no more time.
            with contextlib.suppress(*FAILURES):
                async with asyncio.timeout(min(self.timeout, CLOSE_TIMEOUT)):
                    await connection.close()

    async def close(self) -> None:
        await self._drop()


class AmqpTransport:
    """The sync face of ``AsyncAmqpTransport``: each call runs on the transport's own event loop
    thread (started at the first publish) and is waited for with a bound."""

    def __init__(self, url: str, **options: Any) -> None:
        self.inner = AsyncAmqpTransport(url, **options)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def _run(self, call: Any, bound: float, what: str) -> None:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(
                target=self.loop.run_forever, name="ingest-client-amqp", daemon=True
            )
            self.thread.start()
        future = asyncio.run_coroutine_threadsafe(call, self.loop)
        try:
            future.result(bound + 1.0)  # the coroutine bounds itself; this is the backstop
        except FutureTimeout:
            future.cancel()
            raise TransportError(f"{what} did not finish within {bound}s") from None

    def publish(self, message: bytes) -> None:
        self._run(self.inner.publish(message), self.inner.timeout, "publishing to RabbitMQ")

    def close(self) -> None:
        loop, thread = self.loop, self.thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(TransportError):
            self._run(self.inner.close(), CLOSE_TIMEOUT, "closing the RabbitMQ connection")
        self.loop = self.thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_TIMEOUT)
        if not thread.is_alive():
            loop.close()
