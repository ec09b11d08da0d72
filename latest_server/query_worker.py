"""``latest-server query-worker``: runs the parts of other servers' large aggregations (see
stores/agg_remote.py). It consumes the durable queue ``LATEST_QUERY_QUEUE`` on ``AMQP_URL``,
decodes each part (data only, stores/agg_wire.py), runs it with the code of the server's own
pool (stores/agg_parts.py) on its object store (``OBJECTS_URL``), and replies to the part's
``reply_to`` with the partial, or with an ``error`` header; then acknowledges it. It needs no
Redis. A part naming another object store is refused; a part the worker dies on is redelivered
to another (the server has long run it itself by then, and drops the late reply)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aio_pika

from latest_server.errors import LatestError
from latest_server.resources import objects_url
from latest_server.settings import Settings
from latest_server.stores import agg_parts, agg_wire, open_object_store

log = logging.getLogger(__name__)


class QueryWorker:
    def __init__(self, settings: Settings) -> None:
        if not settings.amqp_url:
            raise LatestError("'query-worker' needs AMQP_URL (or --amqp-url)")
        self.settings = settings
        self.objects_url = objects_url(settings)
        self.store = open_object_store(self.objects_url, settings)
        workers = settings.query_workers
        self.threads = max(1, min(4, os.cpu_count() or 1) if workers is None else workers)
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="query-worker")
        self.done = 0  # parts answered with a partial
        self.refused = 0  # parts answered with an error
        self._replies: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        assert self.settings.amqp_url
        connection = await aio_pika.connect_robust(self.settings.amqp_url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.threads)
            self._replies = channel.default_exchange
            queue = await channel.declare_queue(self.settings.query_queue, durable=True)
            await queue.consume(self._one)
            log.info(
                "query worker: consuming %s with %d threads",
                self.settings.query_queue,
                self.threads,
            )
            await stop.wait()
        finally:
            await connection.close()
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def _one(self, message: Any) -> None:
        headers: dict[str, Any] = {}
        body = b""
        try:
            task = agg_wire.decode_task(message.body, self.settings)
            if task.objects_url != self.objects_url:
                raise agg_wire.WireError("the part names another object store")
            loop = asyncio.get_running_loop()
            partial = await loop.run_in_executor(self.executor, agg_parts.run, task, self.store)
            body = agg_wire.encode_partial(partial)
        except agg_wire.WireError as exc:
            headers["error"] = str(exc)[:200]
        except Exception as exc:  # an object gone (a merge), S3 out of reach: the server retries
            headers["error"] = f"{type(exc).__name__}: {exc}"[:200]
        if headers:
            self.refused += 1
            log.warning("query worker: refused a part: %s", headers["error"])
        else:
            self.done += 1
            log.info("query worker: ran part %d", self.done)
        if message.reply_to:
            await self._replies.publish(
                aio_pika.Message(body, correlation_id=message.correlation_id, headers=headers),
                routing_key=message.reply_to,
            )
        await message.ack()


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM."""
    worker = QueryWorker(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.run(stop)
