"""amqp(s)://: publish to a RabbitMQ exchange with publisher confirms and ``mandatory`` (an
unroutable message — no queue bound yet — is an error to retry, not a silent loss).

Every call is bounded by ``timeout``: connecting, opening the channel, publishing and waiting for
the confirm are one deadline, so a broker that stops answering (a half-open connection, a
network partition) is a ``TransportError`` after ``timeout`` seconds, never a hang. A connection
that failed or timed out is dropped, and the next publish connects afresh (reconnecting is the
batcher's retry loop).

The sync transport uses pika's BlockingConnection, from one thread only (the session's flusher);
the async one uses aio-pika. pika bounds connecting itself (``socket_timeout``, ``stack_timeout``,
one attempt), but its blocking waits (channel, confirm mode, the publisher confirm, close) have no
timeout of their own, and timers of ``BlockingConnection.call_later`` are only dispatched by
``process_data_events``, never inside those waits. So the deadline is a timer on the connection's
I/O loop, which runs inside every wait: when it fires, it tears the connection down the way pika's
own heartbeat and blocked-connection timeouts do (``_terminate_stream``: the socket is closed with
no goodbye), and the wait ends with that error."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import aio_pika
import pika
import pika.exceptions
from aio_pika.abc import AbstractConnection, AbstractExchange
from aio_pika.connection import make_url
from aiormq.exceptions import ChannelInvalidStateError
from pika.adapters.utils.connection_workflow import AMQPConnectorException

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


class DeadlinePassed(Exception):
    """What a blocking wait of pika raises when the publish's deadline tore the connection down."""


PIKA_FAILURES = (
    pika.exceptions.AMQPError,
    AMQPConnectorException,  # connecting failed, or its stack_timeout passed
    OSError,
)


class _AmqpTarget:
    """Where both AMQP transports publish, and the deadline of one publish; the connection's
    own state is each transport's (``_init_connection``)."""

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
        self._init_connection()

    def _init_connection(self) -> None:
        raise NotImplementedError


class AsyncAmqpTransport(_AmqpTarget):
    def _init_connection(self) -> None:
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


class AmqpTransport(_AmqpTarget):
    """The sync transport: pika's BlockingConnection with a confirming channel, every wait
    bounded by one deadline per call (see the module's docstring)."""

    def _init_connection(self) -> None:
        self.parameters = pika.URLParameters(self.url)
        self.parameters.connection_attempts = 1  # retrying is the batcher's job
        self.parameters.blocked_connection_timeout = self.timeout
        self.properties = pika.BasicProperties(
            content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent
        )
        self.connection: Any = None
        self.channel: Any = None

    def _connect(self, deadline: float) -> Any:
        """A new connection, or pika's error once the time left is spent (TCP connect, TLS and
        the AMQP handshake are one stack_timeout; name resolution is the resolver's own)."""
        left = max(deadline - time.monotonic(), 0.001)
        self.parameters.socket_timeout = left
        self.parameters.stack_timeout = left
        return pika.BlockingConnection(self.parameters)

    @contextlib.contextmanager
    def _bounded(self, connection: Any, deadline: float) -> Iterator[None]:
        """Every blocking wait of ``connection`` inside ends by ``deadline``: a timer on its I/O
        loop (which runs inside the waits) tears it down, and the wait raises DeadlinePassed."""
        impl = connection._impl  # the SelectConnection under BlockingConnection: its I/O loop
        late = DeadlinePassed(f"RabbitMQ did not confirm within {self.timeout}s (timeout=)")
        timer = impl.ioloop.call_later(
            max(deadline - time.monotonic(), 0.0), lambda: impl._terminate_stream(late)
        )
        try:
            yield
        finally:
            if connection.is_open:  # a closed connection took its I/O loop and timers with it
                impl.ioloop.remove_timeout(timer)

    def _publish(self, message: bytes, deadline: float) -> None:
        connection = self.connection
        if connection is not None and connection.is_open:
            try:
                # Reads what arrived while the producer was idle (heartbeats, or the broker's
                # goodbye: a connection it closed is replaced now, not on a failed publish).
                with self._bounded(connection, deadline):
                    connection.process_data_events()
            except DeadlinePassed:
                raise
            except PIKA_FAILURES:
                self._drop()
        if self.connection is None or not self.connection.is_open:
            self._drop()
            self.connection = self._connect(deadline)
        with self._bounded(self.connection, deadline):
            if self.channel is None or not self.channel.is_open:
                self.channel = self.connection.channel()
                self.channel.confirm_delivery()
            self.channel.basic_publish(
                self.exchange_name, self.routing_key, message, self.properties, mandatory=True
            )

    def publish(self, message: bytes) -> None:
        try:
            self._publish(message, time.monotonic() + self.timeout)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            raise TransportError(f"RabbitMQ did not take the message: {exc!r}") from exc
        except DeadlinePassed as exc:
            self._drop()
            raise TransportError(str(exc.args[0])) from exc
        except PIKA_FAILURES as exc:
            self._drop()
            raise TransportError(f"publishing to RabbitMQ failed: {exc!r}") from exc

    def _drop(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            # It is being thrown away: a broker that does not answer its close gets no more
            # time, and the publish error is what matters.
            deadline = time.monotonic() + min(self.timeout, CLOSE_TIMEOUT)
            with (
                contextlib.suppress(DeadlinePassed, *PIKA_FAILURES),
                self._bounded(connection, deadline),
            ):
                connection.close()

    def close(self) -> None:
        self._drop()
