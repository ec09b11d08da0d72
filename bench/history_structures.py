"""History layouts in Redis: memory per entry and pipelined append rate, ours against the others.

One variable receives ``--entries`` entries of ~200-byte JSON documents (times increasing), sent
in pipelines of ``--batch`` commands (the consumer's batch size), for each layout:

* ours: what ``latest-server`` writes, through ``RedisLatestStore.write_batch`` and the real
  ``lua/write.lua`` (a STREAM with ids ``<seq>-0`` and fields t, d; a ZSET index, score ts, member
  ``<seq, 16 digits><sha1 hex>``; plus the latest and meta hashes and a SPUBLISH per entry);
* stream: XADD with the same ids and fields, nothing else (the reference);
* list: RPUSH of the document;
* zset: ZADD, score ts, member the document.

Bytes per entry come from ``MEMORY USAGE <key> SAMPLES 0`` (exact, summed over the layout's keys)
and, as a cross-check, from the drop of ``used_memory`` when the big keys are unlinked (a window
of milliseconds, so other clients of the server hardly disturb it).
Appends/s are entries / wall time of the pipelines, client included; with ``--repeat`` above 1
the layouts run in turn that many times and the median is kept. The time of ``UNLINK`` of each
big key is printed, and for ours the time of ``RENAME`` of the stream and of the index (what an
offload does; median of 5), against a ``PING`` round trip (median of 50).

Run (about 1 minute with the defaults)::

    .venv/bin/python bench/history_structures.py [--entries 300000] [--repeat 1]

Uses Redis db 14 (``--redis-url``; flushed before, between layouts and after: run one benchmark
at a time). The last line printed is ``ratio ours/plain-stream appends/s: X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis

from latest_server import keys
from latest_server.packets import Packet, PacketParser
from latest_server.settings import Settings
from latest_server.stores.latest_redis import RedisLatestStore

REDIS_URL = "redis://127.0.0.1:6379/14"
VARIABLE_ID = "bench/history-structures"
START_US = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z
STEP_US = 100_000  # 10 Hz
PLAIN_KEY = "bench:history"
TARGET_BYTES = 200
JOB = "bench"
RENAME_SAMPLES = 5  # the median is kept

Append = Callable[[int, int], Awaitable[None]]


def make_packets(count: int) -> list[Packet]:
    parser = PacketParser(Settings())
    packets = []
    for n in range(count):
        document: dict[str, object] = {
            "id": VARIABLE_ID,
            "observationDateTime": (START_US + n * STEP_US) // 1_000,
            "n": n,
            "pm2p5": 12.5 + n % 97,
            "pm10": 40.25 + n % 113,
            "temperature": 23.5 + n % 7,
            "location": {"type": "Point", "coordinates": [77.5946, 12.9716]},
        }
        short = TARGET_BYTES - len(orjson.dumps(document)) - 14
        document["status"] = "ok" + "." * max(0, short)
        packets.append(parser.packet(document))
    return packets


@dataclass
class Layout:
    name: str
    description: str
    redis_keys: dict[str, str]  # every key the layout writes, by a short name
    big_keys: list[str]  # the ones growing with the history
    append: Append
    rates: list[float] = field(default_factory=list)
    memory_usage: int = 0  # MEMORY USAGE summed over redis_keys
    freed: int = 0  # used_memory drop when the big keys are unlinked
    parts: str = ""  # MEMORY USAGE per entry of each big key, when there are several
    unlink_ms: float = 0.0


def layouts(redis: Redis, store: RedisLatestStore, packets: list[Packet]) -> list[Layout]:
    key = packets[0].key
    raws = [p.raw for p in packets]
    stamps = [p.ts_us for p in packets]

    async def ours(start: int, end: int) -> None:
        await store.write_batch(packets[start:end])

    async def stream(start: int, end: int) -> None:
        pipe = redis.pipeline(transaction=False)
        for n in range(start, end):
            pipe.xadd(PLAIN_KEY, {"t": stamps[n], "d": raws[n]}, id=f"{n + 1}-0")
        await pipe.execute()

    async def list_(start: int, end: int) -> None:
        pipe = redis.pipeline(transaction=False)
        for n in range(start, end):
            pipe.rpush(PLAIN_KEY, raws[n])
        await pipe.execute()

    async def zset(start: int, end: int) -> None:
        pipe = redis.pipeline(transaction=False)
        for n in range(start, end):
            pipe.zadd(PLAIN_KEY, {raws[n]: stamps[n]})
        await pipe.execute()

    ours_keys = {
        "stream": keys.history(key),
        "index": keys.history_index(key),
        "latest": keys.latest(key),
        "meta": keys.meta(key),
    }
    plain = {"key": PLAIN_KEY}
    return [
        Layout(
            "ours",
            "write.lua: STREAM + ZSET index + latest",
            ours_keys,
            [ours_keys["stream"], ours_keys["index"]],
            ours,
        ),
        Layout("stream", "XADD <seq>-0 t <ts> d <doc>", plain, [PLAIN_KEY], stream),
        Layout("list", "RPUSH <doc>", plain, [PLAIN_KEY], list_),
        Layout("zset", "ZADD <ts> <doc>", plain, [PLAIN_KEY], zset),
    ]


def offload_target(redis_key: str) -> str:
    """Where an offload job RENAMEs a history key of ours."""
    key = keys.key_of(redis_key)
    if redis_key == keys.history(key):
        return keys.history_job(key, JOB)
    return keys.history_index_job(key, JOB)


def short(redis_key: str) -> str:
    return redis_key.split("}:", 1)[-1]


async def used_memory(redis: Redis) -> int:
    """used_memory once no lazily freed object is pending (an UNLINK frees in the background)."""
    while True:
        info = await redis.info("memory")
        if not int(info.get("lazyfree_pending_objects", 0)):
            return int(info["used_memory"])
        await asyncio.sleep(0.01)


async def timed_ms(call: Awaitable[object]) -> float:
    started = time.perf_counter()
    await call
    return (time.perf_counter() - started) * 1000


async def run_layout(
    redis: Redis, layout: Layout, entries: int, batch: int, offload: bool
) -> dict[str, float]:
    """Fill the layout, measure it, free it. With ``offload``, RENAME its big keys first, as an
    offload job does, and return the time of each step."""
    await redis.flushdb()
    started = time.perf_counter()
    for start in range(0, entries, batch):
        await layout.append(start, min(start + batch, entries))
    layout.rates.append(entries / (time.perf_counter() - started))
    sizes = {
        name: await redis.memory_usage(k, samples=0) or 0 for name, k in layout.redis_keys.items()
    }
    layout.memory_usage = sum(sizes.values())
    if len(sizes) > 1:
        layout.parts = " + ".join(f"{name} {size / entries:.0f}" for name, size in sizes.items())
    timings: dict[str, float] = {}
    big = layout.big_keys
    if offload:
        for k in big:
            target = offload_target(k)
            samples = []
            for _ in range(RENAME_SAMPLES):
                samples.append(await timed_ms(redis.rename(k, target)))
                await redis.rename(target, k)
            await redis.rename(k, target)
            timings[f"RENAME {short(k)} -> {short(target)}"] = statistics.median(samples)
        big = [offload_target(k) for k in big]
    layout.unlink_ms = 0.0
    before = await used_memory(redis)
    for k in big:
        took = await timed_ms(redis.unlink(k))
        timings[f"UNLINK {short(k)}"] = took
        layout.unlink_ms += took
    layout.freed = before - await used_memory(redis)
    await redis.flushdb()
    return timings


async def ping_ms(redis: Redis, count: int = 50) -> float:
    return statistics.median([await timed_ms(redis.ping()) for _ in range(count)])


async def main_async(args: argparse.Namespace) -> None:
    packets = make_packets(args.entries)
    mean = statistics.mean(len(p.raw) for p in packets)
    print(
        f"{args.entries} entries of {mean:.0f}-byte documents into one key per layout, "
        f"pipelines of {args.batch}, {args.repeat} run(s) of each layout in turn"
    )
    redis = Redis.from_url(args.redis_url)
    try:
        await redis.flushdb()
        store = await RedisLatestStore.open(redis)
        candidates = layouts(redis, store, packets)
        offload: dict[str, float] = {}
        for repeat in range(args.repeat):
            for layout in candidates:
                last = repeat == args.repeat - 1
                timings = await run_layout(
                    redis, layout, args.entries, args.batch, last and layout.name == "ours"
                )
                if last and layout.name == "ours":
                    offload = timings
        ping = await ping_ms(redis)
    finally:
        await redis.flushdb()
        await redis.aclose()

    print("bytes/entry: MEMORY USAGE of the layout's keys, and used_memory freed by UNLINK")
    print(f"{'layout':8} {'MEMORY USAGE':>12} {'freed':>6} {'appends/s':>10} {'UNLINK':>9}")
    for layout in candidates:
        print(
            f"{layout.name:8} {layout.memory_usage / args.entries:12.0f} "
            f"{layout.freed / args.entries:6.0f} {statistics.median(layout.rates):10,.0f} "
            f"{layout.unlink_ms:7.2f}ms  {layout.description}"
        )
        if layout.parts:
            print(f"{'':8} ({layout.parts} B/entry)")
    print(f"ours, offload steps on {args.entries} entries (PING round trip {ping:.3f} ms):")
    for step, took in offload.items():
        print(f"  {step}: {took:.3f} ms")
    ours, stream = (statistics.median(layout.rates) for layout in candidates[:2])
    print(f"ratio ours/plain-stream appends/s: {ours / stream:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database this run may flush")
    parser.add_argument("--batch", type=int, default=500, help="commands per pipeline")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each layout (median kept)")
    args = parser.parse_args()
    if args.entries < 1 or args.batch < 1 or args.repeat < 1:
        parser.error("--entries, --batch and --repeat must be positive")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
