"""AMQP ingest throughput: ``latest-server consume`` against a no-op aio-pika consumer.

What it measures, on one machine, with RabbitMQ and Redis on loopback. The packets are published
once to a topic exchange bound to two queues, so both consumers drain the same messages:

* Reference: a no-op aio-pika consumer with the same prefetch as ours that acks with
  ``ack(multiple=True)`` every ``--batch`` messages (ours acks each batch the same way) drains
  the first queue. Rate = messages / (last ack - first delivery). This is about the fastest a
  Python aio-pika consumer can take messages off a queue, so it bounds what ours can do.
* Ours: ``latest-server consume`` starts as a subprocess on the full second queue. Rate =
  messages / (moment every message is in Redis and the queue is empty - first history entry in
  Redis), so the start-up of the process is not counted.

Each line also gives the CPU time per message of the consumer process (and of Redis, for ours).

Packets are ~200-byte JSON objects over ``--variables`` ids, with ``observationDateTime`` as
ISO-8601 with an offset (60 %), epoch milliseconds (20 %) or epoch seconds (20 %); ``--late``
(10 %) of them are older than an earlier packet of their variable (stale for the latest value,
kept in history). Every packet is distinct, so each one becomes a history entry.

Run (1 to 4 minutes with the defaults, depending on how busy the machine is)::

    .venv/bin/python bench/ingest.py [--packets 200000] [--variables 10000]

``--profile out.svg`` samples the consumer with py-spy (``pip install py-spy``) while it works;
``--consumer-command`` measures another command line (a patched consumer, another event loop).
Uses Redis db 14 (``--redis-url``; flushed before and after: run one benchmark at a time) and
uniquely named queues and exchanges, deleted afterwards. The last line printed is
``ratio ours/no-op: X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import signal
import sys
import tempfile
import time
import uuid
from asyncio.subprocess import Process
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from common import find_py_spy, ours_command, process_cpu, py_spy_format, redis_cpu
from redis.asyncio import Redis

from latest_server import keys

REDIS_URL = "redis://127.0.0.1:6379/14"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
ROUTING_KEY = "bench.aqm.sensor"
START_US = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z
STEP_US = 10_000_000  # one packet per variable every 10 s
OFFSET = timezone(timedelta(hours=5, minutes=30))
TARGET_BYTES = 200
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Workload:
    bodies: list[bytes]
    variable_ids: list[str]
    late: int  # packets older than the previous packet of their variable

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self.bodies)) / len(self.bodies)


def make_workload(packets: int, variables: int, late_share: float, seed: int = 1) -> Workload:
    rng = random.Random(seed)
    variable_ids = [f"bench/aqm/sensor-{v:05d}" for v in range(variables)]
    candidates = range(variables, packets)  # a variable's first packet cannot be late
    late = set(rng.sample(candidates, min(len(candidates), round(packets * late_share))))
    bodies = []
    for n in range(packets):
        variable, round_ = n % variables, n // variables
        ts_us = START_US + round_ * STEP_US + variable * 1_000
        if n in late:
            ts_us -= rng.randint(1, min(round_, 5)) * STEP_US + 3_000
        kind = rng.random()
        moment: str | int | float
        if kind < 0.6:
            moment = datetime.fromtimestamp(ts_us / 1e6, OFFSET).isoformat(timespec="microseconds")
        elif kind < 0.8:
            moment = ts_us // 1_000
        else:
            moment = round(ts_us / 1e6, 3)
        document: dict[str, object] = {
            "id": variable_ids[variable],
            "observationDateTime": moment,
            "n": n,
            "pm2p5": round(rng.uniform(2, 180), 2),
            "pm10": round(rng.uniform(5, 300), 2),
            "temperature": round(rng.uniform(10, 42), 2),
            "location": {"type": "Point", "coordinates": [77.5946, 12.9716]},
        }
        body = orjson.dumps(document)
        if len(body) < TARGET_BYTES - 10:
            document["status"] = "ok" + "." * (TARGET_BYTES - len(body) - 13)
            body = orjson.dumps(document)
        bodies.append(body)
    return Workload(bodies, variable_ids, len(late))


@dataclass(frozen=True)
class Names:
    """One topic exchange feeding two queues: the no-op consumer's and ours."""

    exchange: str
    noop_queue: str
    queue: str
    dead_letter_exchange: str
    dead_letter_queue: str

    @classmethod
    def unique(cls) -> Names:
        base = f"bench-ingest-{uuid.uuid4().hex[:10]}"
        return cls(f"{base}.x", f"{base}.noop.q", f"{base}.q", f"{base}.dlx", f"{base}.dlq")

    @property
    def queues(self) -> tuple[str, ...]:
        return self.noop_queue, self.queue, self.dead_letter_queue

    @property
    def exchanges(self) -> tuple[str, ...]:
        return self.exchange, self.dead_letter_exchange


async def declare(channel: AbstractChannel, names: Names) -> None:
    """Both queues bound to the exchange, with the arguments ``latest-server consume`` declares
    them with (so its own declarations are no-ops): every message published lands in both."""
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    for name in (names.noop_queue, names.queue):
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, "#")


async def queue_depth(channel: AbstractChannel, queue: str) -> int:
    """Messages ready in the queue (not counting those delivered and unacked)."""
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return int(result.message_count or 0)


async def publish(connection: AbstractConnection, names: Names, bodies: list[bytes]) -> float:
    """Publish every body once (transient messages, no publisher confirms, through aiormq's
    channel: the fastest way from Python) and wait until both queues hold them all. Returns the
    seconds it took."""
    started = time.perf_counter()
    channel = await connection.channel(publisher_confirms=False)
    try:
        await declare(channel, names)
        amqp = await channel.get_underlay_channel()
        properties = aiormq.spec.Basic.Properties(content_type="application/json")
        for body in bodies:
            await amqp.basic_publish(
                body, exchange=names.exchange, routing_key=ROUTING_KEY, properties=properties
            )
        stalled_at, depths = time.monotonic(), (-1, -1)
        while min(depths) < len(bodies):
            await asyncio.sleep(POLL_SECONDS)
            now = (
                await queue_depth(channel, names.noop_queue),
                await queue_depth(channel, names.queue),
            )
            if now != depths:
                stalled_at, depths = time.monotonic(), now
            elif time.monotonic() - stalled_at > 10:
                raise RuntimeError(f"queues hold {depths} of {len(bodies)} messages published")
    finally:
        await channel.close()
    return time.perf_counter() - started


@dataclass(frozen=True)
class Timing:
    seconds: float
    cpu: dict[str, float]  # CPU seconds used in that time, by process
    entries: int = 0  # history entries in Redis at the end
    dead_lettered: int = 0

    def describe(self, count: int) -> str:
        cpu = ", ".join(f"{name} {1e6 * s / count:.0f}" for name, s in self.cpu.items())
        return f"{rate(count, self.seconds)} (CPU µs/msg: {cpu})"


async def drain_noop(
    connection: AbstractConnection, queue: str, total: int, prefetch: int, ack_every: int
) -> Timing:
    """Consume ``total`` messages doing nothing but acking every ``ack_every`` with
    ``multiple=True``. Timed from the first delivery to the last ack."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    consumed = 0
    first = last = first_cpu = last_cpu = 0.0
    finished = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal consumed, first, last, first_cpu, last_cpu
        if consumed == 0:
            first, first_cpu = time.perf_counter(), time.process_time()
        consumed += 1
        if consumed % ack_every == 0 or consumed == total:
            await message.ack(multiple=True)
            if consumed == total:
                last, last_cpu = time.perf_counter(), time.process_time()
                finished.set()

    try:
        declared = await channel.get_queue(queue)
        tag = await declared.consume(on_message)
        await finished.wait()
        await declared.cancel(tag)
        left = await queue_depth(channel, queue)
        if left:
            raise RuntimeError(f"the no-op consumer left {left} messages in the queue")
    finally:
        await channel.close()
    return Timing(last - first, {"consumer": last_cpu - first_cpu})


def default_consumer_command() -> str:
    return shlex.join(ours_command("consume"))


def consumer_env(
    redis_url: str, data_dir: str, names: Names, prefetch: int, batch: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATEST_")}
    env.update(
        REDIS_URL=redis_url,
        LATEST_DATA_DIR=data_dir,
        AMQP_URL=AMQP_URL,
        LATEST_EXCHANGE=names.exchange,
        LATEST_QUEUE=names.queue,
        LATEST_DEAD_LETTER_EXCHANGE=names.dead_letter_exchange,
        LATEST_DEAD_LETTER_QUEUE=names.dead_letter_queue,
        LATEST_PREFETCH=str(prefetch),
        LATEST_BATCH_SIZE=str(batch),
        LATEST_LOG_LEVEL="warning",
    )
    return env


async def history_entries(redis: Redis, history_keys: list[str]) -> int:
    pipe = redis.pipeline(transaction=False)
    for key in history_keys:
        pipe.xlen(key)
    return sum(await pipe.execute())


async def stop(process: Process, sig: int = signal.SIGTERM) -> None:
    """Signal the process and wait for it (30 s, then SIGKILL)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def start_profiler(py_spy: str, pid: int, output: str) -> Process:
    command = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--output", output]
    command += py_spy_format(output)
    return await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)


async def run_ours(
    connection: AbstractConnection,
    redis: Redis,
    redis_url: str,
    names: Names,
    workload: Workload,
    command: str,
    prefetch: int,
    batch: int,
    profile: str | None,
) -> Timing:
    """Start the consumer on its full queue; time from the first history entry in Redis until
    every message is in Redis and the queue is empty."""
    total = len(workload.bodies)
    history_keys = [keys.history(keys.key_for(v)) for v in workload.variable_ids]
    channel = await connection.channel()
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as data_dir:
        process = await asyncio.create_subprocess_exec(
            *shlex.split(command),
            env=consumer_env(redis_url, data_dir, names, prefetch, batch),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        profiler: Process | None = None
        try:
            while not await redis.dbsize():
                if process.returncode is not None:
                    raise RuntimeError("the consumer exited before writing anything")
                await asyncio.sleep(0.001)
            started = time.perf_counter()
            cpu = process_cpu(process.pid), redis_cpu(await redis.info("cpu"))
            if profile:
                profiler = await start_profiler(find_py_spy(), process.pid, profile)
            entries, emptied_at = 0, 0.0
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the consumer exited after {entries} entries")
                if await queue_depth(channel, names.queue) == 0:
                    entries = await history_entries(redis, history_keys)
                    if entries >= total:
                        break
                    emptied_at = emptied_at or time.monotonic()
                    if time.monotonic() - emptied_at > 30:
                        raise RuntimeError(
                            f"the queue is empty but Redis holds {entries} of {total} entries "
                            "(did another process flush the database?)"
                        )
                await asyncio.sleep(POLL_SECONDS)
            finished = time.perf_counter()
            used = {
                "consumer": process_cpu(process.pid) - cpu[0],
                "Redis": redis_cpu(await redis.info("cpu")) - cpu[1],
            }
            if profiler is not None:
                await stop(profiler, signal.SIGINT)
            await stop(process)
            dead_lettered = await queue_depth(channel, names.dead_letter_queue)
        except BaseException:
            await stop(process)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            if profiler is not None:
                await stop(profiler, signal.SIGINT)
            await channel.close()
    return Timing(finished - started, used, entries, dead_lettered)


async def cleanup(connection: AbstractConnection, redis: Redis, names: Names) -> None:
    channel = await connection.channel()
    for queue in names.queues:
        await channel.queue_delete(queue)
    for exchange in names.exchanges:
        await channel.exchange_delete(exchange)
    await channel.close()
    await redis.flushdb()


def rate(count: int, seconds: float) -> str:
    return f"{count} msgs in {seconds:.2f} s = {count / seconds:,.0f} msgs/s"


async def main_async(args: argparse.Namespace) -> None:
    workload = make_workload(args.packets, args.variables, args.late)
    total = len(workload.bodies)
    print(
        f"workload: {total} packets of {workload.mean_bytes:.0f} bytes (mean) over "
        f"{args.variables} variables, {100 * workload.late / total:.1f} % out of time order"
    )
    redis = Redis.from_url(args.redis_url)
    connection = await aio_pika.connect(AMQP_URL)
    names = Names.unique()
    try:
        await redis.flushdb()
        seconds = await publish(connection, names, workload.bodies)
        print(f"published once to both queues: {rate(total, seconds)}")
        async with asyncio.timeout(args.timeout):
            noop = await drain_noop(connection, names.noop_queue, total, args.prefetch, args.batch)
        print(
            f"no-op aio-pika consumer (prefetch {args.prefetch}, ack multiple every "
            f"{args.batch}): {noop.describe(total)}"
        )
        async with asyncio.timeout(args.timeout):
            ours = await run_ours(
                connection,
                redis,
                args.redis_url,
                names,
                workload,
                args.consumer_command,
                args.prefetch,
                args.batch,
                args.profile,
            )
        print(
            f"latest-server consume (prefetch {args.prefetch}, batch {args.batch}): "
            f"{ours.describe(total)}; {ours.entries} history entries, "
            f"{ours.dead_lettered} dead-lettered"
        )
        if args.profile:
            print(f"profile of the consumer written to {args.profile}")
        print(f"ratio ours/no-op: {noop.seconds / ours.seconds:.2f}")
    finally:
        with contextlib.suppress(Exception):
            await cleanup(connection, redis, names)
        await connection.close()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--variables", type=int, default=10_000)
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database this run may flush")
    parser.add_argument("--late", type=float, default=0.1, help="share of out-of-order packets")
    parser.add_argument("--prefetch", type=int, default=2000, help="LATEST_PREFETCH and no-op's")
    parser.add_argument("--batch", type=int, default=500, help="LATEST_BATCH_SIZE; no-op acks")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    parser.add_argument(
        "--consumer-command",
        default=default_consumer_command(),
        help="the consumer to measure [%(default)s]",
    )
    parser.add_argument("--profile", help="py-spy output (.svg, .json speedscope, .txt raw)")
    args = parser.parse_args()
    if args.packets < 1 or args.variables < 1 or args.packets < args.variables:
        parser.error("need --packets >= --variables >= 1")
    if args.profile:
        find_py_spy()
    # The same event loop as `latest-server consume` (uvloop where installed), so the no-op
    # reference and ours run on equal terms.
    try:
        import uvloop
    except ImportError:
        print("event loop: asyncio (both consumers)")
        asyncio.run(main_async(args))
        return
    print("event loop: uvloop (both consumers)")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main_async(args))


if __name__ == "__main__":
    main()
