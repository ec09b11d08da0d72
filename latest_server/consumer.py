"""AMQP in: consume packets from RabbitMQ, write them in batches, ack only what Redis confirmed.

The connection and channel are aio-pika's robust ones (they reconnect by themselves). Deliveries
are taken from the channel underneath (aiormq) as they arrive, without building an aio-pika
message and a second task per delivery: on the ingest hot path that was a quarter of the
consumer's time. The consumer registers itself again whenever the robust channel reopens.

A batch is acknowledged with one ``multiple=True`` ack after Redis answered. While Redis is
unreachable, or refuses writes (out of memory, a read-only replica, ...), nothing is acknowledged;
the batch is retried with backoff and RabbitMQ keeps the messages. A batch that fails for any
other reason (a bug, or a message that meets one) is logged, never acknowledged, never the end of
the consumer: on a classic queue it is retried in place; on a quorum queue
(``LATEST_QUEUE_TYPE=quorum``) each of its messages is processed alone, and one that fails again
is nacked back to the queue, which dead-letters it after ``LATEST_DELIVERY_LIMIT`` deliveries.

Any number of consumers may share one queue: a packet's effect does not depend on which
consumer writes it or in which order (the write script's compare-and-set and dedup). Rejected
packets are published to the dead-letter exchange (with publisher confirms) with an
``x-latest-error`` header before the batch is acknowledged, so nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.abc import AbstractChannel as UnderlayChannel
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError, ChannelPreconditionFailed
from pamqp.common import FieldTable

from latest_server.errors import ConfigError, StoreUnavailable
from latest_server.ingestor import BatchResult, Ingestor, Origins
from latest_server.packets import Packet, PacketParser, Rejection
from latest_server.settings import Settings

log = logging.getLogger(__name__)

ERROR_HEADER = "x-latest-error"
BACKOFF_START = 0.1
BACKOFF_MAX = 5.0
LINGER_POLL = 0.001
# What a lost connection or channel raises; the messages concerned are redelivered.
AMQP_FAILURES = (AMQPError, ChannelInvalidStateError, ConnectionError, asyncio.TimeoutError)


class Consumer:
    def __init__(self, settings: Settings, ingestor: Ingestor, *, stop_grace: float = 30.0) -> None:
        if not settings.amqp_url:
            raise ValueError("Consumer needs AMQP_URL")
        self.settings = settings
        self.ingestor = ingestor
        self.parser = PacketParser(settings)
        self.stop_grace = stop_grace
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None
        self.dead_letters: AbstractExchange | None = None
        self.consumer_tag: str | None = None
        # None is the stop signal
        self.inbox: asyncio.Queue[DeliveredMessage | None] = asyncio.Queue()
        self.underlay: UnderlayChannel | None = None
        self.stopping = asyncio.Event()
        self.processed = 0  # messages acknowledged
        self.dead_lettered = 0  # packets published to the dead-letter exchange
        self.in_hand = 0  # messages of the batch being processed

    @property
    def connected(self) -> bool:
        return (
            self.connection is not None
            and not self.connection.is_closed
            and self.channel is not None
            and not self.channel.is_closed
        )

    async def start(self) -> None:
        """Connect (robustly: it reconnects by itself), declare the topology, start consuming."""
        s = self.settings
        assert s.amqp_url
        self.connection = await aio_pika.connect_robust(s.amqp_url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.set_qos(prefetch_count=s.prefetch)
        if s.declare:
            exchange = await self.channel.declare_exchange(
                s.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self.dead_letters = await self.channel.declare_exchange(
                s.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            dlq = await self.channel.declare_queue(s.dead_letter_queue, durable=True)
            await dlq.bind(self.dead_letters, "#")
            self.queue = await self._declare_queue()
            for binding in s.binding_keys:
                await self.queue.bind(exchange, binding)
        else:
            self.dead_letters = await self.channel.get_exchange(s.dead_letter_exchange)
            self.queue = await self.channel.get_queue(s.queue)
        await self._consume()
        reopen = getattr(self.channel, "reopen_callbacks", None)
        if reopen is not None:  # a robust channel: consume again on the new channel
            reopen.add(self._on_reopen)
        log.info("consuming from queue %r (prefetch %d)", s.queue, s.prefetch)

    async def _declare_queue(self) -> AbstractQueue:
        """The queue of LATEST_QUEUE_TYPE. A quorum queue dead-letters, through the broker, a
        message delivered more than LATEST_DELIVERY_LIMIT times without an ack (at least once:
        the broker keeps it until the dead-letter queue confirmed it). A queue of the other type
        already there is a clear error, not a channel error."""
        s = self.settings
        assert self.connection is not None and self.channel is not None
        arguments = queue_arguments(s)
        try:
            return await self.channel.declare_queue(s.queue, durable=True, arguments=arguments)
        except ChannelPreconditionFailed as exc:
            await self.close()  # the consumer never starts: nothing of it stays open
            raise ConfigError(
                f"the queue {s.queue!r} (LATEST_QUEUE) exists with other arguments than "
                f"LATEST_QUEUE_TYPE={s.queue_type} declares ({exc}): set LATEST_QUEUE_TYPE to "
                "the type it has, or LATEST_QUEUE to a new queue (a queue's type cannot change)"
            ) from exc

    async def _consume(self) -> None:
        assert self.channel is not None and self.queue is not None
        underlay = await self.channel.get_underlay_channel()
        ok = await underlay.basic_consume(self.queue.name, self._deliver, no_ack=False)
        self.underlay = underlay
        self.consumer_tag = ok.consumer_tag

    async def _on_reopen(self, *_: object) -> None:
        if not self.stopping.is_set():
            await self._consume()
            log.info("consuming again after the channel reopened")

    async def _deliver(self, message: DeliveredMessage) -> None:
        self.inbox.put_nowait(message)

    async def run(self) -> None:
        """Process batches until ``stop()``; the batch in hand is always finished.

        A batch is what the inbox holds, topped up for at most LATEST_BATCH_LINGER seconds
        while it is smaller than LATEST_BATCH_SIZE: bigger batches cost fewer round trips and
        acks per message."""
        inbox = self.inbox
        size = self.settings.batch_size
        linger = self.settings.batch_linger
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            first = await inbox.get()
            if first is None:
                break
            batch = [first]
            deadline = loop.time() + linger
            while len(batch) < size:
                if not inbox.empty():
                    item = inbox.get_nowait()
                    if item is None:
                        break
                    batch.append(item)
                    continue
                left = deadline - loop.time()
                if left <= 0 or self.stopping.is_set():
                    break
                await asyncio.sleep(min(left, LINGER_POLL))
            self.in_hand = len(batch)
            try:
                await self.process(batch)
            finally:
                self.in_hand = 0

    async def stop(self) -> None:
        """Stop taking deliveries, let ``run()`` finish its batch, then close the connection."""
        if self.underlay is not None and self.consumer_tag is not None and self.connected:
            try:
                await self.underlay.basic_cancel(self.consumer_tag)
            except AMQP_FAILURES:
                log.warning("could not cancel the consumer cleanly", exc_info=True)
        self.stopping.set()
        self.inbox.put_nowait(None)  # wakes run() if it waits for a first message

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def process(self, batch: list[DeliveredMessage]) -> None:
        # Messages delivered on a channel that has since closed will be redelivered on the new
        # one; acking them is impossible, and processing them now would only be repeated.
        live = [m for m in batch if _channel_open(m)]
        if not live:
            return
        if self.settings.queue_type != "quorum":
            await self._settle(live, retry_failures=True)  # a failure is retried in place
            return
        try:
            await self._settle(live, retry_failures=False)
        except Exception as exc:  # not Redis being unavailable (waited out): a bug, or poison
            log.error(
                "a batch of %d messages failed (%s: %s); settling each message alone",
                len(live),
                type(exc).__name__,
                exc,
                exc_info=True,
            )
            await self._isolate(live)

    async def _isolate(self, messages: list[DeliveredMessage]) -> None:
        """Each message of a failed batch processed alone: those that succeed are acked, one
        that fails again goes back to the quorum queue (a nack with requeue counts as a
        delivery), which dead-letters it past LATEST_DELIVERY_LIMIT."""
        for message in messages:
            try:
                await self._settle([message], retry_failures=False, multiple=False)
            except Exception as exc:  # the consumer outlives every error
                log.error(
                    "a message failed (%s: %s); returned to the queue (delivery count %s, "
                    "dead-lettered past %d)",
                    type(exc).__name__,
                    exc,
                    (message.header.properties.headers or {}).get("x-delivery-count", 0),
                    self.settings.delivery_limit,
                )
                try:
                    await message.channel.basic_nack(_tag(message), multiple=False, requeue=True)
                except AMQP_FAILURES:
                    log.warning("nack failed (connection lost); it will be redelivered")

    async def _settle(
        self, live: list[DeliveredMessage], *, retry_failures: bool, multiple: bool = True
    ) -> None:
        """Parse, write, dead-letter what was rejected, and ack ``live`` (the last one's tag
        with ``multiple``). ``retry_failures``: a write failing for any reason but Redis'
        unavailability is retried in place, else it raises."""
        origins: Origins[tuple[DeliveredMessage, int]] = Origins()  # message, index in it
        rejections: list[tuple[DeliveredMessage, Rejection]] = []
        for message in live:
            for index, item in enumerate(self.parser.parse_message(message.body)):
                if isinstance(item, Packet):
                    origins.add((message, index), item)
                else:
                    rejections.append((message, item))
        if origins.packets:
            written = await self._write(origins.packets, retry_failures)
            if written is None:
                return  # stopping while Redis is down: nothing acked, RabbitMQ redelivers
            # Session documents refused at write time: dead-lettered like a parse rejection.
            for (message, index), packet, refusal in origins.refused(written):
                rejections.append(
                    (message, Rejection(index, refusal.reason, refusal.detail, packet.raw))
                )
        if rejections:
            try:
                await asyncio.gather(*(self._dead_letter(m, r) for m, r in rejections))
            except AMQP_FAILURES:
                log.warning("dead-lettering failed; the batch will be redelivered", exc_info=True)
                return
            self.dead_lettered += len(rejections)
        try:
            last = live[-1]
            await last.channel.basic_ack(_tag(last), multiple=multiple)
        except AMQP_FAILURES:
            log.warning(
                "ack failed (connection lost); the batch will be redelivered", exc_info=True
            )
            return
        self.processed += len(live)

    async def _write(self, packets: list[Packet], retry_failures: bool) -> BatchResult | None:
        """The batch written, retried with backoff for as long as it fails; None when stopping
        gave up on it (nothing acknowledged: RabbitMQ redelivers it).

        Redis unavailable, or refusing writes for now (out of memory, read-only, ...: the
        condition is logged once, where it enters the error tree), is waited out. Any other
        error (a script error, WRONGTYPE: a bug, or a message that meets one) raises unless
        ``retry_failures``; retried, it is logged with its traceback once, then one line per
        attempt: it must not end the consumer, and it must not spin either."""
        backoff = BACKOFF_START
        give_up_at: float | None = None
        failures = 0
        while True:
            try:
                written = await self.ingestor.write_batch(packets)
            except Exception as exc:  # the consumer outlives every error; see above
                failures += 1
                unavailable = isinstance(exc, StoreUnavailable)
                if not unavailable and not retry_failures:
                    raise
                if self.stopping.is_set():
                    give_up_at = give_up_at or time.monotonic() + self.stop_grace
                    if time.monotonic() > give_up_at:
                        log.error(
                            "stopping with a batch not written (%s); %d packets left unacked",
                            exc,
                            len(packets),
                        )
                        return None
                if unavailable:
                    # Once per outage: the condition itself is logged where it is detected.
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(
                        level,
                        "Redis unavailable (%s); retrying in %.1fs, nothing acked",
                        exc,
                        backoff,
                    )
                else:
                    log.error(
                        "a batch of %d packets failed to write (%s: %s); nothing acked, "
                        "attempt %d, retrying in %.1fs",
                        len(packets),
                        type(exc).__name__,
                        exc,
                        failures,
                        backoff,
                        exc_info=failures == 1,
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if failures:
                log.info(
                    "batch of %d packets written after %d failed attempts", len(packets), failures
                )
            return written

    async def _dead_letter(self, message: DeliveredMessage, rejection: Rejection) -> None:
        assert self.dead_letters is not None
        headers: dict[str, object] = {
            ERROR_HEADER: rejection.reason,
            "x-latest-detail": rejection.detail[:512],
            "x-latest-index": rejection.index,
        }
        properties = message.header.properties
        if properties.headers:
            headers = {**properties.headers, **headers}
        await self.dead_letters.publish(
            aio_pika.Message(
                rejection.raw,
                headers=headers,  # type: ignore[arg-type]
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=properties.message_id,
            ),
            routing_key=message.routing_key or "",
        )


def queue_arguments(settings: Settings) -> FieldTable | None:
    """The arguments of the queue LATEST_QUEUE_TYPE declares: none for a classic one (as it
    always was), the type, delivery limit and dead-letter exchange for a quorum one."""
    if settings.queue_type != "quorum":
        return None
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": settings.dead_letter_exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # what at-least-once dead-lettering requires
    }


def _channel_open(message: DeliveredMessage) -> bool:
    return not message.channel.is_closed


def _tag(message: DeliveredMessage) -> int:
    tag = message.delivery_tag
    assert tag is not None  # a Basic.Deliver always has one
    return tag
