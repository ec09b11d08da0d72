"""History reads across every tier against pyarrow reading the objects directly, in one run.

One variable gets ``--entries`` entries (~150-byte JSON documents, one per second, a numeric
field ``value``) through the real write path (``Ingestor.write_batch`` → ``lua/write.lua``), laid
out the way a long-lived variable ends up:

* the first ``--merged-share`` of them offloaded in chunks (``Offloader.run_job``) and compacted
  by ``Merger.merge_variable`` into one merged object;
* the next ones in ``--transfers`` transfer objects, one ``Offloader.run_job`` each;
* the last ``--hot-share`` still in Redis.

Objects live in a moto S3 server this script starts on a free loopback port (``moto_server``,
a subprocess, stopped at the end); boto3 and pyarrow talk to it over real HTTP.

Three reads, each timed ``--repeat`` times (ours and the reference in turn; medians reported):

* full: ``HistoryStore.read`` of everything (what ``GET /history`` uses), against
  ``pq.read_table`` of every object through pyarrow's own S3 filesystem (objects only: the
  Redis share is not in the reference);
* window: a ``--window`` share of the time span starting at ``--window-at``, against
  ``pq.read_table(..., filters=...)`` (pyarrow prunes row groups by their statistics);
* downsampled: ``--points`` points of ``value`` through the function ``GET /history?field=value
  &points=N`` runs, against pyarrow reading ts and doc, sorting by ts, extracting the field with
  orjson and the same MinMaxLTTB downsampler.

Bytes fetched by ours are counted on the boto3 client of the object store with its event hooks
(``ContentLength`` of every GetObject answer), with the requests by operation. pyarrow's C++ S3
client cannot be hooked, so the reference shows no byte count.

Run (3 to 6 minutes with the defaults, most of it writing the data)::

    .venv/bin/python bench/history.py [--entries 1000000] [--transfers 10] [--repeat 5]

Uses Redis db 13 (``--redis-url``; flushed before and after: run one benchmark at a time). The
last lines printed are the ratios, each with its target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from common import free_port, server
from redis.asyncio import Redis
from tsdownsample import MinMaxLTTBDownsampler

from latest_server import keys
from latest_server.packets import Packet, PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores import segments
from latest_server.stores.history import ALL
from latest_server.stores.segments import Window
from latest_server.web.http.history import _series

REDIS_URL = "redis://127.0.0.1:6379/13"
VARIABLE_ID = "bench/history/sensor-1"
FIELD = "value"
START_US = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z
STEP_US = 1_000_000  # one entry per second
EDGE = 2**62
EVERYTHING = Window(-EDGE, EDGE)
BUCKET = "latest-bench"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's standalone S3 server as a subprocess on a free loopback port; its endpoint URL."""
    command = Path(sys.executable).with_name("moto_server")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [str(command), "-H", "127.0.0.1", "-p", str(port)]
    with server("moto_server", argv, dict(os.environ), f"{endpoint}/moto-api/"):
        yield endpoint


class S3Counter:
    """Requests (by operation) and GetObject body bytes of one boto3 client, from its events."""

    def __init__(self, client: Any) -> None:
        self.requests: Counter[str] = Counter()
        self.bytes = 0
        client.meta.events.register("before-call.s3", self._before)
        client.meta.events.register("after-call.s3.GetObject", self._after_get)

    def _before(self, model: Any, **_: Any) -> None:
        self.requests[model.name] += 1

    def _after_get(self, parsed: dict[str, Any], **_: Any) -> None:
        self.bytes += int(parsed.get("ContentLength") or 0)

    def reset(self) -> None:
        self.requests.clear()
        self.bytes = 0

    def describe(self) -> str:
        calls = ", ".join(f"{n} {name}" for name, n in sorted(self.requests.items()))
        return f"{self.bytes / 1e6:.2f} MB in {sum(self.requests.values())} requests ({calls})"


def document(n: int, rng: random.Random) -> dict[str, Any]:
    """Entry ``n``: a slow wave with noise and now and then a spike (downsampling keeps them)."""
    value = 20 + 5 * math.sin(n / 5_000) + rng.gauss(0, 0.3)
    if rng.random() < 0.0005:
        value += rng.choice((-1, 1)) * rng.uniform(10, 30)
    return {
        "id": VARIABLE_ID,
        "ts": START_US + n * STEP_US,
        "n": n,
        FIELD: round(value, 4),
        "humidity": round(rng.uniform(30, 90), 2),
        "battery": round(3.3 + rng.random() / 2, 3),
        "status": "ok",
        "location": {"type": "Point", "coordinates": [77.5946, 12.9716]},
    }


def packets(parser: PacketParser, first: int, count: int, rng: random.Random) -> list[Packet]:
    made = []
    for n in range(first, first + count):
        made.append(parser.packet(document(n, rng)))
    return made


@dataclass
class Layout:
    merged: int  # entries in the merged object
    transfers: list[int]  # entries of each transfer object
    hot: int  # entries left in Redis

    @classmethod
    def of(cls, entries: int, merged_share: float, transfers: int, hot_share: float) -> Layout:
        merged = round(entries * merged_share)
        hot = round(entries * hot_share)
        moved = entries - merged - hot
        base, extra = divmod(moved, transfers)
        return cls(merged, [base + (i < extra) for i in range(transfers)], hot)


async def write(resources: Resources, first: int, count: int, batch: int, rng: Any) -> float:
    """Write entries ``first .. first + count - 1`` through the Ingestor; seconds it took."""
    parser = resources.parser
    started = time.perf_counter()
    for start in range(first, first + count, batch):
        size = min(batch, first + count - start)
        result = await resources.ingestor.write_batch(packets(parser, start, size, rng))
        if any(o.seq == 0 for o in result.outcomes):
            raise RuntimeError("an entry was taken for a redelivery: is the database shared?")
    return time.perf_counter() - started


async def build(resources: Resources, layout: Layout, args: argparse.Namespace) -> None:
    rng = random.Random(1)
    n = 0
    started = time.perf_counter()
    for start in range(0, layout.merged, args.chunk):
        size = min(args.chunk, layout.merged - start)
        await write(resources, n, size, args.batch, rng)
        n += size
        await offload(resources, size)
        print(f"  {n:>9} entries written and offloaded ({time.perf_counter() - started:.0f} s)")
    if layout.merged:
        began = time.perf_counter()
        report = await resources.merger.merge_variable(VARIABLE_ID)
        print(
            f"  merged {report.inputs} transfer objects into one of {report.entries} entries "
            f"in {time.perf_counter() - began:.1f} s"
        )
    for size in layout.transfers:
        await write(resources, n, size, args.batch, rng)
        n += size
        await offload(resources, size)
    print(
        f"  {n:>9} entries: + {len(layout.transfers)} transfer objects "
        f"({time.perf_counter() - started:.0f} s)"
    )
    await write(resources, n, layout.hot, args.batch, rng)
    n += layout.hot
    print(f"  {n:>9} entries: + {layout.hot} left in Redis ({time.perf_counter() - started:.0f} s)")


async def offload(resources: Resources, expected: int) -> None:
    report = await resources.offloader.run_job(everything=True)
    if report is None or report.entries != expected:
        raise RuntimeError(f"offload moved {report and report.entries} entries, not {expected}")


@dataclass
class Read:
    name: str
    seconds: list[float] = field(default_factory=list)
    ref_seconds: list[float] = field(default_factory=list)
    rows: int = 0
    ref_rows: int = 0
    fetched: str = ""
    bytes: int = 0
    parts: dict[str, list[float]] = field(default_factory=dict)  # timed pieces of ours

    @property
    def ours(self) -> float:
        return statistics.median(self.seconds)

    @property
    def reference(self) -> float:
        return statistics.median(self.ref_seconds)

    def report(self, unit: str) -> None:
        print(f"{self.name:<12} ours {self.ours:8.3f} s ({self.rows} {unit}; {self.fetched})")
        for part, seconds in self.parts.items():
            print(f"{'':<12}   {part}: {statistics.median(seconds):.3f} s")
        print(f"{'':<12} ref  {self.reference:8.3f} s ({self.ref_rows} {unit}; pyarrow S3)")


async def timed(function: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    started = time.perf_counter()
    rows = await function()
    return time.perf_counter() - started, rows


def reference_paths(s3: pafs.S3FileSystem, key: str, prefix: str) -> list[str]:
    """Every object of the variable, listed through pyarrow's S3 filesystem."""
    selector = pafs.FileSelector(f"{BUCKET}/{prefix}/{keys.history_prefix(key)}", recursive=True)
    return sorted(i.path for i in s3.get_file_info(selector) if i.type == pafs.FileType.File)


def reference_series(s3: pafs.S3FileSystem, paths: list[str], points: int) -> tuple[Any, Any]:
    """The same series read with pyarrow: from the objects' ``n:`` column of the field, as
    ours does (every object of the benchmark has one)."""
    column = segments.NUMBER_PREFIX + FIELD
    table = pq.read_table(paths, filesystem=s3, columns=["ts", column]).sort_by("ts")
    ts = table.column("ts").to_numpy()
    values = table.column(column).to_numpy()
    chosen = MinMaxLTTBDownsampler().downsample(ts, values, n_out=points)
    return ts[chosen], values[chosen]


async def measure(
    resources: Resources, s3: pafs.S3FileSystem, counter: S3Counter, prefix: str, args: Any
) -> tuple[Read, Read, Read]:
    key = keys.key_for(VARIABLE_ID)
    history = resources.history
    span = args.entries * STEP_US
    lo = START_US + int(args.window_at * span) // STEP_US * STEP_US
    window = Window(lo, lo + max(1, int(args.window * args.entries)) * STEP_US)
    full, part, series = Read("full"), Read("window"), Read("downsampled")

    async def ours_full() -> int:
        return int((await history.read(key, EVERYTHING)).entries.num_rows)

    async def ours_hot() -> int:
        return int((await history.read_hot(key, EVERYTHING, ALL)).num_rows)

    async def ref_full() -> int:
        paths = reference_paths(s3, key, prefix)
        # the entries' columns, as ours reads them (not the n: columns)
        return int(pq.read_table(paths, filesystem=s3, columns=segments.SCHEMA.names).num_rows)

    async def ours_window() -> int:
        return int((await history.read(key, window)).entries.num_rows)

    async def ref_window() -> int:
        paths = reference_paths(s3, key, prefix)
        filters = [("ts", ">=", window.lo), ("ts", "<", window.hi)]
        columns = segments.SCHEMA.names
        return int(pq.read_table(paths, filesystem=s3, filters=filters, columns=columns).num_rows)

    async def ours_series() -> int:
        query = {"field": FIELD, "points": str(args.points)}
        response = await _series(resources, VARIABLE_ID, key, EVERYTHING, FIELD, query, "json")
        return len(orjson.loads(response.body)["points"])

    async def ref_series() -> int:
        ts, _values = reference_series(s3, reference_paths(s3, key, prefix), args.points)
        return len(ts)

    # A warm-up of each, untimed: connections, imports, caches of the first call.
    for function in (ours_full, ref_full, ours_window, ref_window):
        await function()
    for read, ours, reference in (
        (full, ours_full, ref_full),
        (part, ours_window, ref_window),
        (series, ours_series, ref_series),
    ):
        for _round in range(args.repeat):
            counter.reset()
            seconds, read.rows = await timed(ours)
            read.seconds.append(seconds)
            read.fetched, read.bytes = counter.describe(), counter.bytes
            seconds, read.ref_rows = await timed(reference)
            read.ref_seconds.append(seconds)
        print(f"  {read.name} read timed {args.repeat} times")
    # The share of the full read that the reference has no counterpart for: the Redis tier.
    label = "of which the Redis tier alone (HistoryStore.read_hot, not in the reference)"
    for _round in range(args.repeat):
        full.parts.setdefault(label, []).append((await timed(ours_hot))[0])
    return full, part, series


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


async def main_async(args: argparse.Namespace, endpoint: str) -> None:
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            redis_url=args.redis_url, data_dir=data_dir, objects_url=f"s3://{BUCKET}/{prefix}"
        )
        redis = Redis.from_url(args.redis_url)
        await redis.flushdb()
        resources = await Resources.open(settings)
        try:
            await resources.trigger.close()  # the start-up recovery job: nothing to do here
            layout = Layout.of(args.entries, args.merged_share, args.transfers, args.hot_share)
            print(
                f"building {args.entries} entries of {VARIABLE_ID!r}: merged object "
                f"{layout.merged}, {len(layout.transfers)} transfer objects of "
                f"~{layout.transfers[0] if layout.transfers else 0}, Redis {layout.hot}"
            )
            await build(resources, layout, args)
            objects = resources.objects.list(keys.history_prefix(keys.key_for(VARIABLE_ID)))
            total = sum(o.size for o in objects)
            print(f"objects: {len(objects)}, {total / 1e6:.2f} MB in all")
            counter = S3Counter(resources.objects.client)  # type: ignore[attr-defined]
            host, port = endpoint.removeprefix("http://").split(":")
            s3 = pafs.S3FileSystem(
                access_key=S3_ENV["AWS_ACCESS_KEY_ID"],
                secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                region=S3_ENV["AWS_DEFAULT_REGION"],
                scheme="http",
                endpoint_override=f"{host}:{port}",
            )
            full, part, series = await measure(resources, s3, counter, prefix, args)
        finally:
            await resources.close()
            await redis.flushdb()
            await redis.aclose()

    if full.rows != args.entries or full.ref_rows != args.entries - layout.hot:
        raise RuntimeError(f"full reads returned {full.rows} and {full.ref_rows} entries")
    if part.rows != part.ref_rows or series.rows != args.points:
        raise RuntimeError(f"window {part.rows}/{part.ref_rows}, {series.rows} points")
    print(f"medians of {args.repeat} (ours: HistoryStore.read; ref: pyarrow on the objects alone)")
    full.report("entries")
    part.report("entries")
    series.report("points")
    full_ratio = full.ours / full.reference
    bytes_ratio = part.bytes / full.bytes
    time_ratio = part.ours / full.ours
    series_ratio = series.ours / full.ours
    print(
        f"ratio full ours/reference: {full_ratio:.2f} (target <= 1.5: {verdict(full_ratio <= 1.5)})"
    )
    print(
        f"ratio window/full bytes fetched: {bytes_ratio:.4f} "
        f"(target < 0.10: {verdict(bytes_ratio < 0.1)})"
    )
    print(f"ratio window/full time: {time_ratio:.4f} (target < 0.10: {verdict(time_ratio < 0.1)})")
    print(
        f"ratio downsampled/full time: {series_ratio:.2f} "
        f"(target <= 1.2: {verdict(series_ratio <= 1.2)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--transfers", type=int, default=10, help="transfer objects")
    parser.add_argument("--merged-share", type=float, default=0.5, help="of the entries")
    parser.add_argument("--hot-share", type=float, default=0.05, help="left in Redis")
    parser.add_argument("--chunk", type=int, default=100_000, help="entries per offload")
    parser.add_argument("--batch", type=int, default=1_000, help="packets per write_batch")
    parser.add_argument("--window", type=float, default=0.01, help="share of the time span")
    parser.add_argument("--window-at", type=float, default=0.25, help="window start, 0..1")
    parser.add_argument("--points", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each read")
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database this run may flush")
    args = parser.parse_args()
    if args.entries < 1000 or args.transfers < 1 or args.repeat < 1:
        parser.error("need --entries >= 1000, --transfers >= 1, --repeat >= 1")
    if min(args.merged_share, args.hot_share) < 0 or args.merged_share + args.hot_share >= 1:
        parser.error("need shares >= 0 with --merged-share + --hot-share < 1")
    if not 0 <= args.window_at < 1 or not 0 < args.window <= 1 - args.window_at:
        parser.error("the window must lie inside the time span")
    with moto_server() as endpoint:
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL_S3=endpoint)
        print(f"moto S3 server at {endpoint}")
        asyncio.run(main_async(args, endpoint))


if __name__ == "__main__":
    main()
