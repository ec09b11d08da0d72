"""Aggregation parts sent to query workers (``latest-server query-worker``) over AMQP, RPC
style: each part is published to the durable queue ``LATEST_QUERY_QUEUE`` with this process's
exclusive reply queue and a correlation id; ``run`` returns the worker's partial, or None when
none came within ``LATEST_QUERY_REMOTE_TIMEOUT`` (or the broker is out of reach, or the reply is
an error or does not decode), and the caller then runs the part itself. A late reply is dropped;
a part nobody took expires in the queue after the same timeout."""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import Executor
from typing import Any

import aio_pika

from latest_server.redact import redact
from latest_server.stores import agg_parts, agg_wire
from latest_server.stores.agg_parts import Task
from latest_server.stores.partials import Partial

log = logging.getLogger(__name__)
DOWN_SECONDS = 10.0  # after the broker failed us, parts run here this long without asking


class RemoteParts:
    def __init__(self, amqp_url: str, queue: str, timeout: float) -> None:
        self.amqp_url = amqp_url
        self.queue = queue
        self.timeout = timeout
        self._connection: Any = None
        self._channel: Any = None
        self._replies: Any = None
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._lock = asyncio.Lock()
        self._down_until = 0.0  # loop time
        self.sent = 0  # parts published
        self.answered = 0  # partials received in time

    async def _ready(self) -> Any:
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                if self._connection is None:
                    self._connection = await aio_pika.connect_robust(self.amqp_url)
                channel = await self._connection.channel()
                self._replies = await channel.declare_queue(exclusive=True, auto_delete=True)
                await self._replies.consume(self._reply, no_ack=True)
                self._channel = channel
            return self._channel

    async def _reply(self, message: Any) -> None:
        waiter = self._waiting.pop(message.correlation_id or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    async def run(self, task: Task) -> Partial | None:
        """The worker's partial of ``task``, or None (run it here)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._down_until:
            return None
        correlation = uuid.uuid4().hex
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiting[correlation] = waiter
        try:
            async with asyncio.timeout(self.timeout):
                channel = await self._ready()
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        agg_wire.encode_task(task),
                        correlation_id=correlation,
                        reply_to=self._replies.name,
                        expiration=self.timeout,
                        content_type="application/json",
                    ),
                    routing_key=self.queue,
                )
                self.sent += 1
                message = await waiter
        except TimeoutError:
            if self._channel is None:  # the broker did not answer in time
                self._down_until = loop.time() + DOWN_SECONDS
            log.warning("a query part had no reply in %ss: running it here", self.timeout)
            return None
        except (aio_pika.exceptions.AMQPError, OSError) as exc:
            self._down_until = loop.time() + DOWN_SECONDS
            log.warning("query workers out of reach (%s): running the part here", redact(str(exc)))
            return None
        finally:
            self._waiting.pop(correlation, None)
        error = (message.headers or {}).get("error")
        if error is not None:
            log.warning("a query worker refused a part (%s): running it here", error)
            return None
        try:
            partial = agg_wire.decode_partial(message.body, task.spec.fields)
        except agg_wire.WireError as exc:
            log.warning("a query worker's reply did not decode (%s): running it here", exc)
            return None
        self.answered += 1
        return partial

    async def run_or_here(self, task: Task, executor: Executor, store: Any) -> Partial:
        """A worker's partial of ``task``, or this process's (in ``executor``) if none came."""
        found = await self.run(task)
        if found is not None:
            return found
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, agg_parts.run, task, store)

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection, self._channel = self._connection, None, None
            await connection.close()
