"""Per-sample CPU overhead of ``Session.sample`` next to a bare aio-pika publish of the same
samples, batched the same way (the same samples per message), in the same run.

    python bench/client.py [--samples N] [--amqp-url URL]

Needs RabbitMQ. Each run publishes to a private exchange bound to an exclusive queue (deleted at
the end). CPU time is the process's (every thread: the sync Session's flusher and pika included).
The last line is the ratio Session.sample / bare publish (target: at most 1.3).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest_client import AsyncSession, Session

INTERVAL = 0.05  # LATEST_MIN_INTERVAL for the run: many flushes, so batching is exercised


async def setup(url: str) -> tuple[Any, str, Any]:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    name = f"bench.client.{uuid.uuid4().hex[:8]}"
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "#")
    return connection, name, queue


def run_session(url: str, exchange: str, n: int) -> tuple[float, int]:
    cpu = time.process_time()
    with Session(url=url, exchange=exchange, min_interval=INTERVAL) as session:
        sample = session.sample
        for i in range(n):
            sample("bench/speed", i)
    return time.process_time() - cpu, session.batcher.messages_sent


async def run_async_session(url: str, exchange: str, n: int) -> tuple[float, int]:
    cpu = time.process_time()
    async with AsyncSession(url=url, exchange=exchange, min_interval=INTERVAL) as session:
        sample = session.sample
        for i in range(n):
            await sample("bench/speed", i)
            if i % 1000 == 0:
                await asyncio.sleep(0)  # let the flusher run, as a real producer would
    return time.process_time() - cpu, session.batcher.messages_sent


async def run_bare(url: str, exchange_name: str, n: int, per_message: int) -> float:
    """The same samples (same fields, same session tag), per_message to a JSON array, published
    with publisher confirms through aio-pika: what a producer would write by hand."""
    cpu = time.process_time()
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(exchange_name, ensure=False)
    session_id = uuid.uuid4().hex
    batch: list[dict[str, Any]] = []
    now = time.time
    for i in range(n):
        batch.append({"id": "bench/speed", "ts": now(), "value": i, "@session": session_id})
        if len(batch) >= per_message:
            await exchange.publish(
                aio_pika.Message(
                    orjson.dumps(batch), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key="bench",
            )
            batch = []
    if batch:
        await exchange.publish(aio_pika.Message(orjson.dumps(batch)), routing_key="bench")
    await connection.close()
    return time.process_time() - cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300_000)
    parser.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    args = parser.parse_args()
    n = args.samples
    connection, exchange, queue = await setup(args.amqp_url)
    try:
        session_cpu, messages = await asyncio.to_thread(run_session, args.amqp_url, exchange, n)
        async_cpu, async_messages = await run_async_session(args.amqp_url, exchange, n)
        # Batched the same way: as many samples per message as the sync Session sent.
        per_message = max(1, n // max(1, messages - 1))  # less the opening document's message
        bare_cpu = await run_bare(args.amqp_url, exchange, n, per_message)
        await queue.purge()
    finally:
        await connection.close()
    us = 1e6 / n
    print(f"samples: {n}, samples per message: ~{per_message} (interval {INTERVAL}s)")
    print(f"bare aio-pika publish:  {bare_cpu * us:6.2f} µs CPU per sample")
    print(
        f"AsyncSession.sample:    {async_cpu * us:6.2f} µs CPU per sample "
        f"({async_messages} messages)"
    )
    print(
        f"Session.sample:         {session_cpu * us:6.2f} µs CPU per sample ({messages} messages)"
    )
    print(f"AsyncSession / bare: {async_cpu / bare_cpu:.2f}")
    print(f"Session.sample / bare: {session_cpu / bare_cpu:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
