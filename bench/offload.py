"""Offload throughput (Redis → S3) against reading the same keys and putting the same bytes raw.

``--entries`` entries (~150-byte JSON documents) over ``--variables`` variables are written
through the real write path (``Ingestor.write_batch`` → ``lua/write.lua``). Then, per round:

* reference, part 1: ``XRANGE`` of every variable's live stream in chunks of
  ``offload.READ_CHUNK`` (the offloader's chunk), with the same redis-py client's ``xrange``,
  nothing else. Shown too, not counted in the target: the same XRANGEs read off a pooled
  connection without redis-py's reply callback (which builds a dict per entry), the way the
  offloader reads them: a stricter reference;
* ours: ``Offloader.run_job(everything=True)``, the whole job: lock, RENAME of each stream,
  XRANGE of the job copy, Arrow table, Parquet encoding, create-only put, delete of the copy;
* reference, part 2: ``put_object`` of the very bytes ours wrote (fetched back, untimed) with a
  plain boto3 client, under another prefix.

Rate = entries / seconds; the reference's seconds are its two parts added. Objects go to a moto
S3 server this script starts on a free loopback port (``moto_server``, a subprocess, stopped at
the end), over real HTTP. With ``--rounds`` above 1 the data is written again for each round and
medians are reported.

Run (1 to 3 minutes with the defaults, most of it writing the data)::

    .venv/bin/python bench/offload.py [--entries 200000] [--variables 10] [--rounds 3]

Uses Redis db 13 (``--redis-url``; flushed before, between rounds and after: run one benchmark at
a time). The last line printed is ``ratio ours/raw entries/s: X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from redis.asyncio import Redis

from latest_server import keys
from latest_server.offload import READ_CHUNK
from latest_server.packets import PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from history import BUCKET, S3_ENV, moto_server

REDIS_URL = "redis://127.0.0.1:6379/13"
START_US = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z
STEP_US = 1_000_000


def variable_ids(count: int) -> list[str]:
    return [f"bench/offload/sensor-{v:03d}" for v in range(count)]


def document(variable_id: str, n: int, rng: random.Random) -> dict[str, Any]:
    return {
        "id": variable_id,
        "ts": START_US + n * STEP_US,
        "n": n,
        "value": round(20 + 5 * math.sin(n / 5_000) + rng.gauss(0, 0.3), 4),
        "humidity": round(rng.uniform(30, 90), 2),
        "battery": round(3.3 + rng.random() / 2, 3),
        "status": "ok",
        "location": {"type": "Point", "coordinates": [77.5946, 12.9716]},
    }


async def write(resources: Resources, ids: list[str], entries: int, batch: int) -> float:
    """``entries`` entries, round-robin over ``ids``, through the Ingestor; seconds it took."""
    parser = PacketParser(resources.settings)
    rng = random.Random(1)
    started = time.perf_counter()
    for start in range(0, entries, batch):
        made = [
            parser.packet(document(ids[n % len(ids)], n // len(ids), rng))
            for n in range(start, min(entries, start + batch))
        ]
        result = await resources.ingestor.write_batch(made)
        if any(o.seq == 0 for o in result.outcomes):
            raise RuntimeError("an entry was taken for a redelivery: is the database shared?")
    return time.perf_counter() - started


async def raw_xrange(redis: Redis, ids: list[str], unparsed: bool = False) -> tuple[float, int]:
    """XRANGE of every live stream in chunks of the offloader's size, with redis-py's
    ``xrange`` (its reply callback makes a dict per entry) or, ``unparsed``, reading the reply
    off a pooled connection as Redis sent it (what the offloader does)."""
    started = time.perf_counter()
    count = 0
    for variable_id in ids:
        stream = keys.history(keys.key_for(variable_id))
        low = "-"
        for _chunk in range(10**9):
            if unparsed:
                chunk = await xrange_unparsed(redis, stream, low)
            else:
                chunk = await redis.xrange(stream, min=low, max="+", count=READ_CHUNK)
            count += len(chunk)
            if len(chunk) < READ_CHUNK:
                break
            low = f"({chunk[-1][0].decode()}"
    return time.perf_counter() - started, count


async def xrange_unparsed(redis: Redis, stream: str, low: str) -> list[Any]:
    pool = redis.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_command("XRANGE", stream, low, "+", "COUNT", READ_CHUNK)
        reply: list[Any] = await connection.read_response()
        return reply
    finally:
        await pool.release(connection)


def raw_put(client: Any, prefix: str, objects: dict[str, bytes]) -> float:
    started = time.perf_counter()
    for name, data in objects.items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=data)
    return time.perf_counter() - started


@dataclass
class Round:
    ours: float
    xrange: float
    unparsed: float  # XRANGE read without redis-py's reply callback
    put: float
    megabytes: float

    @property
    def raw(self) -> float:
        return self.xrange + self.put

    @property
    def raw_unparsed(self) -> float:
        return self.unparsed + self.put


async def one_round(
    resources: Resources, client: Any, ids: list[str], args: argparse.Namespace, number: int
) -> Round:
    await resources.redis.flushdb()
    seconds = await write(resources, ids, args.entries, args.batch)
    print(f"round {number}: wrote {args.entries} entries in {seconds:.1f} s", flush=True)
    xrange_seconds, read = await raw_xrange(resources.redis, ids)
    unparsed_seconds, read_unparsed = await raw_xrange(resources.redis, ids, unparsed=True)
    if read != args.entries or read_unparsed != args.entries:
        raise RuntimeError(f"XRANGE read {read} and {read_unparsed} entries, not {args.entries}")

    started = time.perf_counter()
    report = await resources.offloader.run_job(everything=True)
    ours = time.perf_counter() - started
    if report is None or report.entries != args.entries or report.variables != len(ids):
        raise RuntimeError(f"the offload job moved {report and report.entries} entries")

    objects = {name: resources.objects.get(name) for name in report.objects}
    put_seconds = raw_put(client, f"raw-{uuid.uuid4().hex[:8]}-{number}", objects)
    megabytes = sum(map(len, objects.values())) / 1e6
    print(
        f"  ours {ours:.2f} s; raw XRANGE {xrange_seconds:.2f} s (unparsed "
        f"{unparsed_seconds:.2f} s) + put {put_seconds:.2f} s "
        f"({len(objects)} objects, {megabytes:.2f} MB)",
        flush=True,
    )
    return Round(ours, xrange_seconds, unparsed_seconds, put_seconds, megabytes)


async def main_async(args: argparse.Namespace) -> None:
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    ids = variable_ids(args.variables)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            redis_url=args.redis_url,
            data_dir=data_dir,
            objects_url=f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}",
        )
        redis = Redis.from_url(args.redis_url)
        await redis.flushdb()
        resources = await Resources.open(settings)
        try:
            await resources.trigger.close()  # the start-up recovery job: nothing to do here
            rounds = [
                await one_round(resources, client, ids, args, number)
                for number in range(1, args.rounds + 1)
            ]
        finally:
            await resources.close()
            await redis.flushdb()
            await redis.aclose()

    def rate(seconds: float) -> str:
        return f"{args.entries / seconds:10,.0f} entries/s"

    ours = statistics.median(r.ours for r in rounds)
    raw = statistics.median(r.raw for r in rounds)
    raw_unparsed = statistics.median(r.raw_unparsed for r in rounds)
    xrange_seconds = statistics.median(r.xrange for r in rounds)
    unparsed_seconds = statistics.median(r.unparsed for r in rounds)
    put_seconds = statistics.median(r.put for r in rounds)
    print(
        f"{args.entries} entries over {args.variables} variables, "
        f"{rounds[0].megabytes:.2f} MB of objects; medians of {args.rounds} rounds"
    )
    print(f"ours (Offloader.run_job):  {rate(ours)} ({ours:.2f} s)")
    print(
        f"raw (XRANGE + put_object): {rate(raw)} ({raw:.2f} s = XRANGE {xrange_seconds:.2f} s "
        f"+ put {put_seconds:.2f} s)"
    )
    print(
        f"raw, XRANGE unparsed:      {rate(raw_unparsed)} ({raw_unparsed:.2f} s = XRANGE "
        f"{unparsed_seconds:.2f} s + put {put_seconds:.2f} s)"
    )
    strict = raw_unparsed / ours
    print(f"ratio ours/raw-unparsed entries/s: {strict:.2f} (the stricter reference)")
    ratio = raw / ours
    verdict = "met" if ratio >= 0.7 else "NOT met"
    print(f"ratio ours/raw entries/s: {ratio:.2f} (target >= 0.7: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--variables", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1_000, help="packets per write_batch")
    parser.add_argument("--rounds", type=int, default=3, help="write + measure, medians kept")
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database this run may flush")
    args = parser.parse_args()
    if args.variables < 1 or args.entries < args.variables or args.rounds < 1:
        parser.error("need --entries >= --variables >= 1 and --rounds >= 1")
    with moto_server() as endpoint:
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL_S3=endpoint)
        print(f"moto S3 server at {endpoint}")
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
