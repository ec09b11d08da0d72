"""Aggregation parts run by a ``latest-server query-worker`` over RabbitMQ against the same
query run in the server's own process pool, in one run.

One variable gets ``--entries`` entries (~150-byte documents, one a second, a numeric field
``value``) in ``--objects`` transfer objects on file objects (encoded by the offload's encoder),
nothing in Redis. Timed (medians of ``--repeat``): ``avg,max`` of ``value`` in 1 000 buckets,
uncached, by

* the reference: the server's pool of ``--processes`` processes (LATEST_QUERY_WORKERS);
* ours: LATEST_QUERY_REMOTE=true, every object part sent to one ``latest-server query-worker``
  subprocess (``--processes`` threads) on this machine and its partial sent back (so the cost
  the queue adds: encoding, the broker's round trips; a second machine is what it buys).

Both answers must be equal. Run (under a minute)::

    .venv/bin/python bench/query_worker.py [--entries 400000] [--amqp-url URL]

The broker (default: the local one) gets a queue of this run's own, deleted at the end. Without
``--redis-url`` it starts its own ``redis-server``. The last line is the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aggregate import STEP_US, encode, median_of, private_redis
from common import ours_command

from latest_server import keys
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores import buckets
from latest_server.stores.aggregate import AggQuery, Aggregator

VARIABLE = "bench/query-worker"


def start_worker(
    settings: Settings, queue: str, threads: int, log: Path
) -> subprocess.Popen[bytes]:
    assert settings.amqp_url and settings.objects_url
    env = dict(os.environ, AMQP_URL=settings.amqp_url, OBJECTS_URL=settings.objects_url)
    env.update(LATEST_QUERY_QUEUE=queue, LATEST_QUERY_WORKERS=str(threads))
    with log.open("wb") as out:
        process = subprocess.Popen(
            ours_command("query-worker"), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while b"consuming" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the query worker did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process


async def main_async(args: argparse.Namespace, redis_url: str) -> None:
    queue = f"bench.query.{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            redis_url=redis_url,
            amqp_url=args.amqp_url,
            data_dir=data_dir,
            objects_url=Path(data_dir, "objects").as_uri(),
            query_cache_bytes=0,
            query_workers=args.processes,
            query_parallel_rows=1,
        )
        resources = await Resources.open(settings)
        await resources.redis.flushdb()
        worker = None
        try:
            await resources.trigger.close()
            rng = random.Random(1)
            key = keys.key_for(VARIABLE)
            first, seq = 0, 1
            for size in np.array_split(np.arange(args.entries), args.objects):
                data, lo, hi = encode(VARIABLE, first, len(size), seq, rng)
                name = keys.transfer_object(key, 1, seq, seq + len(size) - 1, lo, hi)
                resources.objects.put(name, data)
                first, seq = first + len(size), seq + len(size)
            width = args.entries * STEP_US // 1_000
            query = AggQuery(
                (key,), ("value",), ("avg", "max"), interval=buckets.Interval(fixed=width)
            )
            local = resources.aggregates
            assert local is not None
            await local.aggregate(query)  # the pool's processes start
            reference, expected = await median_of(args.repeat, lambda: local.aggregate(query))
            print(
                f"reference (pool of {args.processes} processes) {reference:.3f} s: "
                f"{expected.entries} entries, {expected.tasks} parts"
            )
            worker = start_worker(settings, queue, args.processes, Path(data_dir, "worker.log"))
            remote = Aggregator(
                resources.history,
                settings.objects_url or "",
                dataclasses.replace(
                    settings, query_remote=True, query_queue=queue, query_remote_timeout=30.0
                ),
            )
            try:
                await remote.aggregate(query)  # the connection and the reply queue
                ours, found = await median_of(args.repeat, lambda: remote.aggregate(query))
                assert remote.remote is not None
                assert remote.remote.answered == remote.remote.sent, "a part ran in the server"
            finally:
                await remote.aclose()
            assert found.series == expected.series, "the answers differ"
            print(
                f"ours (1 query worker, {args.processes} threads) {ours:.3f} s: "
                f"{found.entries} entries, {remote.remote.sent // (args.repeat + 1)} parts "
                "over the queue a query; answers equal"
            )
            speed = args.entries / ours, args.entries / reference
            print(f"ours {speed[0]:,.0f} entries/s, reference {speed[1]:,.0f} entries/s")
            print(f"ratio ours/reference speed: {speed[0] / speed[1]:.2f}")
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(10)
            connection = await aio_pika.connect(args.amqp_url)
            channel = await connection.channel()
            await channel.queue_delete(queue)
            await connection.close()
            await resources.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=400_000)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument(
        "--redis-url", help="a Redis database this run may flush (default: its own)"
    )
    args = parser.parse_args()
    with private_redis(args.redis_url) as redis_url:
        asyncio.run(main_async(args, redis_url))


if __name__ == "__main__":
    main()
