"""Per-sample CPU overhead of ``Session.sample`` next to a bare aio-pika publish of the same
samples, batched the same way (the same samples per message), in the same run.

    python bench/client.py [--samples N] [--rounds R] [--amqp-url URL]

Needs RabbitMQ. Each run publishes to a private exchange bound to an exclusive queue (deleted at
the end). CPU time is the process's (every thread: the sync Session's flusher, which runs its
pika connection, included). A small warm-up round of each comes first (so the one-time import of
the sync transport and the first growth of the heap are charged to nobody), then R rounds, each
measuring the three in a rotating order; the medians are reported. The last line is the ratio of
the medians Session.sample / bare publish (target: at most 1.3).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest_client import AsyncSession, Session
from ingest_client.transports import amqp  # noqa: F401  (imported by Session on first use)

INTERVAL = 0.05  # LATEST_MIN_INTERVAL for the run: many flushes, so batching is exercised
# Each of the three goes first, middle and last in turn (the bare reference after the Session,
# whose batching it copies).
ORDERS = (("session", "async", "bare"), ("async", "session", "bare"), ("session", "bare", "async"))


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
    """The same samples (same fields, same clock, same session tag), per_message to a JSON
    array, each message published as ours are (persistent, JSON content type, mandatory, with
    publisher confirms) through aio-pika: what a producer would write by hand."""
    cpu = time.process_time()
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(exchange_name, ensure=False)
    session_id = uuid.uuid4().hex
    batch: list[dict[str, Any]] = []
    now = time.time

    async def publish(body: bytes) -> None:
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="bench",
            mandatory=True,
        )

    for i in range(n):
        batch.append({"id": "bench/speed", "ts": now(), "value": i, "@session": session_id})
        if len(batch) >= per_message:
            await publish(orjson.dumps(batch))
            batch = []
    if batch:
        await publish(orjson.dumps(batch))
    await connection.close()
    return time.process_time() - cpu


async def run_round(url: str, exchange: str, n: int, order: int) -> dict[str, Any]:
    """One measurement of each, in the order ``ORDERS[order]``; the bare reference batches as
    many samples per message as the sync Session did in the same round (its first message is
    the opening document alone)."""
    found: dict[str, Any] = {}
    for step in ORDERS[order % len(ORDERS)]:
        gc.collect()
        if step == "session":
            found["session"], found["messages"] = await asyncio.to_thread(
                run_session, url, exchange, n
            )
            found["per_message"] = max(1, n // max(1, found["messages"] - 1))
        elif step == "async":
            found["async"], found["async_messages"] = await run_async_session(url, exchange, n)
        else:
            found["bare"] = await run_bare(url, exchange, n, found["per_message"])
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    args = parser.parse_args()
    n = args.samples
    rounds: list[dict[str, Any]] = []
    connection, exchange, queue = await setup(args.amqp_url)
    try:
        await run_round(args.amqp_url, exchange, max(1, n // 10), 0)  # warm-up, not reported
        await queue.purge()
        for r in range(max(1, args.rounds)):
            rounds.append(await run_round(args.amqp_url, exchange, n, r))
            await queue.purge()
    finally:
        await connection.close()
    us = 1e6 / n
    for r, found in enumerate(rounds):
        print(
            f"round {r + 1}: µs CPU per sample: bare {found['bare'] * us:.2f}, "
            f"Session {found['session'] * us:.2f}, AsyncSession {found['async'] * us:.2f} "
            f"(Session / bare {found['session'] / found['bare']:.2f})"
        )

    def median(key: str) -> float:
        return statistics.median(found[key] for found in rounds)

    bare_cpu, session_cpu, async_cpu = median("bare"), median("session"), median("async")
    per_message = int(median("per_message"))
    print(
        f"samples: {n}, samples per message: ~{per_message} (interval {INTERVAL}s), "
        f"medians of {len(rounds)} rounds"
    )
    print(f"bare aio-pika publish:  {bare_cpu * us:6.2f} µs CPU per sample")
    print(
        f"AsyncSession.sample:    {async_cpu * us:6.2f} µs CPU per sample "
        f"({int(median('async_messages'))} messages)"
    )
    print(
        f"Session.sample:         {session_cpu * us:6.2f} µs CPU per sample "
        f"({int(median('messages'))} messages)"
    )
    print(f"AsyncSession / bare: {async_cpu / bare_cpu:.2f}")
    print(f"Session.sample / bare: {session_cpu / bare_cpu:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
