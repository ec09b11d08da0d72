"""Aggregation over every tier (``Aggregator.aggregate``, what ``GET /history?agg=`` runs) against
DuckDB running the same aggregation over the same Parquet objects, in one run.

One variable gets ``--entries`` entries (~150-byte documents, one per second, a numeric field
``value``): the last ``--hot-share`` through the real write path (``Ingestor.write_batch``) into
a private Redis, the rest as one merged object (half) and ``--transfers`` transfer objects,
encoded by the offload's own encoder (``segments.encode``) and put on a moto S3 server (a
subprocess on a free loopback port, over real HTTP) under the names offload and merge give them
-- the write path would take minutes for a million entries, and reads cannot tell.

Timed (medians of ``--repeat``):

* ``avg,max`` of ``value`` in ``--buckets`` fixed buckets over the whole span: ours reading the
  objects from S3 (row groups by ranged GETs, parts in the query pool) plus Redis, with
  de-duplication; DuckDB (``read_parquet`` + ``GROUP BY``) over the same objects' bytes
  downloaded to local files first (DuckDB's httpfs extension cannot be installed here: no
  network), so DuckDB reads a local disk (the page cache) where ours reads S3 over HTTP; the
  download is shown beside it. Speed is entries per second (DuckDB's exclude Redis' share);
* the same query from the result cache, against its first run;
* ``avg,max`` in 1-minute buckets over a variable of 10 000 entries (half in a transfer
  object, half in Redis), uncached: its median latency.

Run (about a minute and a half with ``--quick``)::

    .venv/bin/python bench/aggregate.py [--quick] [--entries 1000000] [--redis-url URL]

Without ``--redis-url`` it starts its own ``redis-server`` on a free port (stopped at the end);
a given one must be a database this run may flush. The last lines are the ratios and targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import free_port
from history import moto_server

from latest_server import keys
from latest_server.canonical import stored_digest
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores import buckets, open_object_store, segments
from latest_server.stores.aggregate import AggQuery, Aggregator
from latest_server.stores.history import ALL, HistoryStore
from latest_server.stores.segments import Window

BUCKET = "latest-bench"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_US = 1_700_000_000 * 1_000_000
STEP_US = 1_000_000
BIG = "bench/aggregate"
COLD_ONLY = "bench/objects-only"
EDGE = 2**62
SMALL = "bench/small"
SMALL_COLD = "bench/small-in-an-object"
SMALL_HOT = "bench/small-in-redis"


@contextlib.contextmanager
def private_redis(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout
            != b"PONG\n"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def document(variable: str, n: int, rng: random.Random) -> dict[str, Any]:
    return {
        "id": variable,
        "ts": START_US + n * STEP_US,
        "n": n,
        "value": round(20 + 5 * math.sin(n / 5_000) + rng.gauss(0, 0.3), 4),
        "humidity": round(rng.uniform(30, 90), 2),
        "battery": round(3.3 + rng.random() / 2, 3),
        "status": "ok",
        "location": {"type": "Point", "coordinates": [77.5946, 12.9716]},
    }


def encode(
    variable: str, first: int, count: int, seq0: int, rng: random.Random
) -> tuple[bytes, int, int]:
    docs = [orjson.dumps(document(variable, n, rng)) for n in range(first, first + count)]
    ts = [START_US + n * STEP_US for n in range(first, first + count)]
    table = segments.from_columns(
        ts, list(range(seq0, seq0 + count)), [stored_digest(d) for d in docs], docs
    )
    return segments.encode(table), ts[0], ts[-1]


async def build(resources: Resources, args: argparse.Namespace) -> list[str]:
    """The big variable: Redis first (seqs 1..hot), then the objects (the seqs after)."""
    rng = random.Random(1)
    # the small variable, all through the write path, half offloaded (before the big one's
    # Redis share is written: an offload job moves every variable)
    # (and one of 10 000 entries in one object, one in Redis only)
    small = [resources.parser.packet(document(SMALL, n, rng)) for n in range(10_000)]
    cold = [resources.parser.packet(document(SMALL_COLD, n, rng)) for n in range(10_000)]
    warm = [resources.parser.packet(document(SMALL_HOT, n, rng)) for n in range(10_000)]
    await resources.ingestor.write_batch(small[:5_000] + cold)
    await resources.offloader.run_job(everything=True)
    await resources.ingestor.write_batch(small[5_000:] + warm)
    hot = round(args.entries * args.hot_share)
    cold = args.entries - hot
    started = time.perf_counter()
    for start in range(cold, args.entries, 1_000):
        size = min(1_000, args.entries - start)
        packets = [
            resources.parser.packet(document(BIG, n, rng)) for n in range(start, start + size)
        ]
        await resources.ingestor.write_batch(packets)
    print(f"  {hot} entries written to Redis ({time.perf_counter() - started:.1f} s)")
    key = keys.key_for(BIG)
    merged = cold // 2
    sizes = [merged] + [
        len(part) for part in np.array_split(np.arange(cold - merged), args.transfers)
    ]
    names = []
    first, seq = 0, hot + 1
    for i, size in enumerate(sizes):
        data, lo, hi = encode(BIG, first, size, seq, rng)
        if i == 0:
            name = keys.merged_object(key, 1, seq, seq + size - 1, lo, hi)
        else:
            name = keys.transfer_object(key, 1, seq, seq + size - 1, lo, hi)
        resources.objects.put(name, data)
        names.append(name)
        first, seq = first + size, seq + size
    print(f"  {cold} entries in {len(names)} objects on S3 ({time.perf_counter() - started:.1f} s)")
    return names


def stage(data_dir: str, names: list[str], resources: Resources) -> tuple[list[str], Path, float]:
    """The objects' bytes, downloaded: flat files for DuckDB (and the seconds it took), and
    the same under the names of a variable with no Redis share, for ours over files."""
    local = Path(data_dir, "duck")
    local.mkdir()
    started = time.perf_counter()

    def download(name: str) -> str:
        path = local / name.replace("/", "_")
        path.write_bytes(resources.objects.get(name))
        return str(path)

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(download, names))
    fetch = time.perf_counter() - started
    files = Path(data_dir, "files")
    for name, path in zip(names, paths, strict=True):
        target = Path(files, name.replace(keys.key_for(BIG), keys.key_for(COLD_ONLY)))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return paths, files, fetch


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


async def median_of(repeat: int, run: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def duckdb_query(paths: list[str], width: int) -> tuple[float, int]:
    import duckdb

    connection = duckdb.connect()
    files = ", ".join(f"'{p}'" for p in paths)
    sql = (
        f'SELECT ts // {width} AS bucket, avg("n:value"), max("n:value"), count(*) '
        f"FROM read_parquet([{files}]) GROUP BY bucket ORDER BY bucket"
    )
    started = time.perf_counter()
    rows = connection.execute(sql).fetchall()
    seconds = time.perf_counter() - started
    connection.close()
    return seconds, len(rows)


async def main_async(args: argparse.Namespace, redis_url: str) -> None:
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            redis_url=redis_url,
            data_dir=data_dir,
            objects_url=f"s3://{BUCKET}/{prefix}",
            query_cache_bytes=0,
        )
        resources = await Resources.open(settings)
        await resources.redis.flushdb()
        try:
            await resources.trigger.close()
            print(f"building {args.entries} entries of {BIG!r}")
            names = await build(resources, args)
            width = args.entries * STEP_US // args.buckets
            query = AggQuery(
                (keys.key_for(BIG),),
                ("value",),
                ("avg", "max"),
                interval=buckets.Interval(fixed=width),
            )
            engine = resources.aggregates
            assert engine is not None
            await engine.aggregate(query)  # the pool's processes start
            hot = round(args.entries * args.hot_share)
            cpu = time.process_time()
            ours, result = await median_of(args.repeat, lambda: engine.aggregate(query))
            cpu = (time.process_time() - cpu) / args.repeat
            hot_alone, _ = await median_of(
                args.repeat,
                lambda: resources.history.read_hot(keys.key_for(BIG), Window(-EDGE, EDGE), ALL),
            )
            series = result.series[0].buckets
            assert sum(b.docs for b in series) == args.entries, sum(b.docs for b in series)
            print(
                f"ours   {ours:.3f} s: {len(series)} buckets, {result.entries} entries, "
                f"{result.tasks} tasks; server CPU {cpu:.3f} s a query; of which reading Redis' "
                f"{hot} entries {hot_alone:.3f} s"
            )

            paths, files, fetch = await asyncio.to_thread(stage, data_dir, names, resources)
            duck_times = [duckdb_query(paths, width) for _ in range(args.repeat)]
            duck = statistics.median(t for t, _ in duck_times)
            print(
                f"duckdb {duck:.3f} s: {duck_times[0][1]} buckets over local copies "
                f"(+ {fetch:.3f} s to download them)"
            )

            # ours over the same local copies, objects only (no Redis share): the engine alone
            on_files = Aggregator(
                HistoryStore(resources.redis, resources.scripts, open_object_store(files.as_uri())),
                files.as_uri(),
                dataclasses.replace(settings, objects_url=files.as_uri(), query_workers=0),
            )
            try:
                cold_only = dataclasses.replace(query, keys=(keys.key_for(COLD_ONLY),))
                local, local_result = await median_of(
                    args.repeat, lambda: on_files.aggregate(cold_only)
                )
                assert local_result.entries == args.entries - hot
            finally:
                on_files.close()
            print(f"ours   {local:.3f} s over the same local copies, objects only")

            cached = Aggregator(
                resources.history,
                engine.objects_url,
                dataclasses.replace(settings, query_cache_bytes=64 << 20),
            )
            try:
                await cached.aggregate(dataclasses.replace(query, aggs=("min",)))  # its pool starts
                started = time.perf_counter()
                await cached.aggregate(query)
                first = time.perf_counter() - started
                again, hit = await median_of(args.repeat, lambda: cached.aggregate(query))
                assert hit.cached
            finally:
                cached.close()
            print(f"cache  first {first:.3f} s, repeated {again * 1000:.3f} ms")

            latencies = {}
            for variable, where in (
                (SMALL, "half in an object, half in Redis"),
                (SMALL_COLD, "in one object"),
                (SMALL_HOT, "in Redis"),
            ):
                small = dataclasses.replace(
                    query, keys=(keys.key_for(variable),), interval=buckets.parse_interval("1m")
                )
                cpu = time.process_time()
                latency, points = await median_of(20, lambda q=small: engine.aggregate(q))
                small_cpu = (time.process_time() - cpu) / 20
                assert sum(b.docs for b in points.series[0].buckets) == 10_000
                latencies[variable] = latency
                print(
                    f"10k    {latency * 1000:.1f} ms median, {where} "
                    f"({len(points.series[0].buckets)} buckets; server CPU "
                    f"{small_cpu * 1000:.1f} ms a query)"
                )
            latency = latencies[SMALL]
        finally:
            await resources.redis.flushdb()
            await resources.close()
    ours_speed = args.entries / ours
    duck_speed = (args.entries - round(args.entries * args.hot_share)) / duck
    local_ratio = duck / local
    ratio = ours_speed / duck_speed
    with_fetch = ours_speed / (
        (args.entries - round(args.entries * args.hot_share)) / (duck + fetch)
    )
    download_speed = duck_speed * duck / (duck + fetch)
    print(
        f"entries/s ours {ours_speed:,.0f}, duckdb {duck_speed:,.0f} "
        f"(with its download {download_speed:,.0f})"
    )
    print(f"ratio ours/duckdb speed (duckdb with its download): {with_fetch:.2f}")
    print(f"ratio ours/duckdb speed over the same local files (objects only): {local_ratio:.2f}")
    print(f"ratio 10k points median latency: {latency * 1000:.1f} ms (target < 50 ms: ", end="")
    print(f"{verdict(latency < 0.05)})")
    print(f"ratio cache repeated/first speed: {first / again:.0f}x (target >= 20: ", end="")
    print(f"{verdict(first / again >= 20)})")
    print(f"ratio ours/duckdb speed: {ratio:.2f} (target >= 0.5: {verdict(ratio >= 0.5)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--buckets", type=int, default=1_000)
    parser.add_argument("--transfers", type=int, default=9)
    parser.add_argument("--hot-share", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 timed runs (about 90 s)")
    parser.add_argument(
        "--redis-url", help="a Redis database this run may flush (default: its own)"
    )
    args = parser.parse_args()
    if args.quick:
        args.repeat = 3
    if not shutil.which("redis-server") and not args.redis_url:
        parser.error("no redis-server on PATH: give --redis-url")
    with moto_server() as endpoint, private_redis(args.redis_url) as redis_url:
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL_S3=endpoint)
        asyncio.run(main_async(args, redis_url))


if __name__ == "__main__":
    main()
