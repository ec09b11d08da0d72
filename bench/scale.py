"""Scaling out: AMQP ingest with one and two ``latest-server consume`` processes on one queue,
and with one consumer on a 3-primary Redis Cluster next to one Redis, in the same run.

Each phase pre-fills a fresh queue with the same ``--packets`` packets (~200 bytes, over
``--variables`` ids, 10 % out of time order: the workload of ``ingest.py``), one per message or
``--per-message`` in a JSON array, starts the consumer processes, and times the drain from the
moment every consumer is on the queue until every packet is in Redis and the queue is empty
(rate = packets written in that time / its length, so start-up is not counted). It prints each
rate, the scaling factors, and where the CPU time of the interval went (per-process CPU
seconds from psutil), per packet: each consumer, each redis-server, the RabbitMQ broker
(``beam.smp``, shared with whatever else uses it) and the machine as a whole, and the rate
those costs allow on an idle machine of as many cores. On a machine of two cores the broker,
Redis and the consumers share them: a rate that does not scale is read off that split.

Phases (same run): ``single-1`` (one redis-server, one consumer), ``single-2`` (the same, two
consumers), ``cluster-1`` (a Redis Cluster of three primaries from ``tests/cluster.py``,
without replicas unless ``--replicas``, one consumer). Targets: single-2 >= 1.3 x single-1,
cluster-1 >= 0.8 x single-1. ``single-1`` also gives Redis' memory per history entry
(``used_memory`` before and after).

Every Redis is this run's own (free loopback ports, nothing on disk), the broker vhost too
(``rabbitmqctl``, deleted at the end): nothing shared is touched. Run from the project folder::

    .venv/bin/python bench/scale.py [--quick] [--packets 200000] [--variables 2000]

``--quick`` (60 000 packets) takes about a minute. The last line printed is
``ratio 2 consumers/1: X.XX; cluster/single: X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the private services

import aio_pika
import aiormq
import psutil
from common import machine_cpu, ours_command
from ingest import POLL_SECONDS, Workload, make_workload, queue_depth, stop

from latest_server import keys
from latest_server.redis_client import connect
from tests.cluster import redis_cluster
from tests.services import private_redis, private_vhost

ROUTING_KEY = "bench.scale"


@dataclass
class Target:
    """A Redis (or a cluster) the consumers write to, and the redis-servers to read CPU from."""

    url: str
    nodes: list[str]  # redis:// URL of each primary


@dataclass
class Phase:
    name: str
    consumers: int
    seconds: float = 0.0
    written: int = 0  # packets written while timed
    cpu: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0  # machine CPU seconds (all cores) in the interval
    memory_per_entry: float | None = None

    @property
    def rate(self) -> float:
        return self.written / self.seconds

    def per_message(self) -> dict[str, float]:
        """CPU µs per packet written, by process."""
        return {name: 1e6 * seconds / self.written for name, seconds in self.cpu.items()}

    def ceiling(self, broker: bool = True) -> tuple[float, str]:
        """The rate this phase's CPU costs allow on an idle machine of this many cores, and
        what bounds it: each consumer and each redis-server is one thread (at most one core
        each), and everything together (the bench's own polling left out) at most every core.
        ``broker=False``: with RabbitMQ on another machine (the broker here is shared: its CPU
        time counts other users' traffic too)."""
        left_out = ("bench",) if broker else ("bench", "broker")
        cost = {k: v for k, v in self.per_message().items() if k not in left_out}
        bounds = {name: 1e6 / us for name, us in cost.items() if name != "broker"}
        bounds["all cores"] = psutil.cpu_count() * 1e6 / sum(cost.values())
        name = min(bounds, key=bounds.__getitem__)
        return bounds[name], name

    def describe(self) -> str:
        ours = sum(v for k, v in self.cpu.items() if k != "bench")
        cost = ", ".join(f"{name} {us:.0f}" for name, us in self.per_message().items())
        ceiling, bound = self.ceiling()
        alone, alone_bound = self.ceiling(broker=False)
        return (
            f"{self.name}: {self.written} packets in {self.seconds:.2f} s = "
            f"{self.rate:,.0f} packets/s"
            f"\n    CPU µs/packet: {cost}"
            f"\n    machine busy {self.busy:.1f} of {self.seconds * psutil.cpu_count():.1f} "
            f"core-seconds, of which consumers+redis+broker {ours:.1f}, others "
            f"{max(0.0, self.busy - ours - self.cpu.get('bench', 0)):.1f}"
            f"\n    ceiling on an idle machine from these costs: {ceiling:,.0f} packets/s "
            f"(bound: {bound}); with the broker elsewhere {alone:,.0f} (bound: {alone_bound})"
        )


def broker_process() -> psutil.Process | None:
    """The RabbitMQ server's Erlang VM: the oldest ``beam.smp`` (``rabbitmqctl`` starts short
    ones of its own)."""
    found = [
        p for p in psutil.process_iter(["name", "create_time"]) if p.info["name"] == "beam.smp"
    ]
    return min(found, key=lambda p: p.info["create_time"]) if found else None


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def redis_cpu_of(nodes: list[str]) -> list[float]:
    """CPU seconds of each redis-server so far (psutil, by the pid its ``INFO server`` gives:
    main thread, I/O and background threads)."""
    found = []
    for url in nodes:
        client = connect(url)
        try:
            pid = int((await client.info("server"))["process_id"])
        finally:
            await client.aclose()
        found.append(cpu_seconds(psutil.Process(pid)))
    return found


async def used_memory(nodes: list[str]) -> int:
    total = 0
    for url in nodes:
        client = connect(url)
        try:
            total += int((await client.info("memory"))["used_memory"])
        finally:
            await client.aclose()
    return total


async def appended(nodes: list[str]) -> int:
    """History entries appended so far: every one is one XADD in write.lua, counted by each
    node's ``INFO commandstats`` (one cheap command per node: polling the streams' lengths
    instead cost Redis as much as the writes it watched)."""
    total = 0
    for url in nodes:
        client = connect(url)
        try:
            stats = await client.info("commandstats")
            total += int(stats.get("cmdstat_xadd", {}).get("calls", 0))
        finally:
            await client.aclose()
    return total


async def history_entries(client: Any, history_keys: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for key in history_keys:
        pipe.xlen(key)
    return sum(await pipe.execute())


async def prefill(channel: Any, names: dict[str, str], bodies: list[bytes]) -> None:
    """Declare the queue as ``latest-server consume`` does and fill it with every body."""
    exchange = await channel.declare_exchange(
        names["exchange"], aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(names["queue"], durable=True)
    await queue.bind(exchange, "#")
    amqp = await channel.get_underlay_channel()
    properties = aiormq.spec.Basic.Properties(content_type="application/json")
    for body in bodies:
        await amqp.basic_publish(
            body, exchange=names["exchange"], routing_key=ROUTING_KEY, properties=properties
        )
    stalled_at, depth = time.monotonic(), -1
    while depth < len(bodies):
        await asyncio.sleep(POLL_SECONDS)
        now = await queue_depth(channel, names["queue"])
        if now != depth:
            stalled_at, depth = time.monotonic(), now
        elif time.monotonic() - stalled_at > 10:
            raise RuntimeError(f"the queue holds {depth} of {len(bodies)} messages published")


def consumer_env(
    amqp_url: str, redis_url: str, data_dir: str, names: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATEST_")}
    return env | dict(
        REDIS_URL=redis_url,
        AMQP_URL=amqp_url,
        LATEST_DATA_DIR=data_dir,
        LATEST_EXCHANGE=names["exchange"],
        LATEST_QUEUE=names["queue"],
        LATEST_DEAD_LETTER_EXCHANGE=names["dlx"],
        LATEST_DEAD_LETTER_QUEUE=names["dlq"],
        LATEST_LOG_LEVEL="warning",
        LATEST_OFFLOAD_MAX_BYTES="0",
    )


async def run_phase(
    phase: Phase,
    target: Target,
    amqp_url: str,
    workload: Workload,
    messages: list[bytes],
    limit: float,
) -> Phase:
    total = len(workload.bodies)
    history_keys = [keys.history(keys.key_for(v)) for v in workload.variable_ids]
    base = f"bench-scale-{uuid.uuid4().hex[:8]}"
    names = {key: f"{base}.{key}" for key in ("exchange", "queue", "dlx", "dlq")}
    client = connect(target.url)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=False)
    broker = broker_process()
    processes: list[asyncio.subprocess.Process] = []
    logs: list[Any] = []
    files = contextlib.ExitStack()
    try:
        for url in target.nodes:
            node = connect(url)
            await node.flushall()
            await node.aclose()
        memory_before = await used_memory(target.nodes)
        baseline = await appended(target.nodes)
        await prefill(channel, names, messages)
        with tempfile.TemporaryDirectory() as data_dir:
            env = consumer_env(amqp_url, target.url, data_dir, names)
            for _ in range(phase.consumers):
                log = files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (closed by files)
                logs.append(log)
                processes.append(
                    await asyncio.create_subprocess_exec(
                        *shlex.split(shlex.join(ours_command("consume"))),
                        env=env,
                        stdout=log,
                        stderr=asyncio.subprocess.STDOUT,
                    )
                )
            async with asyncio.timeout(limit):
                while True:  # until every consumer is on the queue
                    declared = await channel.declare_queue(names["queue"], passive=True)
                    if declared.declaration_result.consumer_count >= phase.consumers:
                        break
                    for process in processes:
                        if process.returncode is not None:
                            raise RuntimeError("a consumer exited at start")
                    await asyncio.sleep(0.005)
                started = time.perf_counter()
                before = await appended(target.nodes) - baseline
                cpu0 = _cpu(processes, broker, await redis_cpu_of(target.nodes))
                machine0 = machine_cpu()["busy"]
                while True:
                    drained = await queue_depth(channel, names["queue"]) == 0
                    if drained and await appended(target.nodes) - baseline >= total:
                        break
                    for process in processes:
                        if process.returncode is not None:
                            raise RuntimeError("a consumer exited while draining")
                    await asyncio.sleep(POLL_SECONDS)
                phase.seconds = time.perf_counter() - started
                phase.busy = machine_cpu()["busy"] - machine0
                cpu1 = _cpu(processes, broker, await redis_cpu_of(target.nodes))
                phase.cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}
                phase.written = total - before
                stored = await history_entries(client, history_keys)
                if stored != total:
                    raise RuntimeError(f"{stored} history entries for {total} packets")
                if phase.name == "single-1":
                    phase.memory_per_entry = (
                        await used_memory(target.nodes) - memory_before
                    ) / total
    except BaseException:
        for log in logs:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-3000:])
        raise
    finally:
        for process in processes:
            await stop(process)
        files.close()
        with contextlib.suppress(Exception):
            for queue in (names["queue"], names["dlq"]):
                await channel.queue_delete(queue)
            for exchange in (names["exchange"], names["dlx"]):
                await channel.exchange_delete(exchange)
        await connection.close()
        await client.aclose()
    return phase


def _cpu(
    processes: list[asyncio.subprocess.Process],
    broker: psutil.Process | None,
    redis_seconds: list[float],
) -> dict[str, float]:
    spent = {
        f"consumer{i + 1}": cpu_seconds(psutil.Process(p.pid)) for i, p in enumerate(processes)
    }
    for i, seconds in enumerate(redis_seconds):
        spent[f"redis{i + 1}" if len(redis_seconds) > 1 else "redis"] = seconds
    if broker is not None:
        spent["broker"] = cpu_seconds(broker)
    spent["bench"] = time.process_time()
    return spent


@contextlib.contextmanager
def targets(replicas: int) -> Iterator[tuple[Target, Target]]:
    with private_redis() as single, redis_cluster(replicas=replicas) as cluster:
        primaries = [f"redis://{node.address}/0" for node in cluster.primaries()]
        yield Target(single, [single]), Target(cluster.url, primaries)


async def main_async(args: argparse.Namespace) -> None:
    workload = make_workload(args.packets, args.variables, 0.1)
    k = args.per_message
    messages = [
        workload.bodies[i] if k == 1 else b"[" + b",".join(workload.bodies[i : i + k]) + b"]"
        for i in range(0, len(workload.bodies), k)
    ]
    print(
        f"workload: {len(workload.bodies)} packets of {workload.mean_bytes:.0f} bytes (mean), "
        f"{k} per message ({len(messages)} messages), over {args.variables} variables; "
        f"{psutil.cpu_count()} cores, load {psutil.getloadavg()[0]:.2f}"
    )
    plan = [("single-1", 1, 0), ("single-2", 2, 0), ("cluster-1", 1, 1)]
    if args.cluster_two:
        plan.append(("cluster-2", 2, 1))
    with private_vhost() as amqp_url, targets(args.replicas) as on:
        print(f"cluster: 3 primaries, {args.replicas} replica(s) each")
        phases = [
            await run_phase(
                Phase(name, consumers), on[where], amqp_url, workload, messages, args.timeout
            )
            for name, consumers, where in plan
        ]
    for phase in phases:
        print(phase.describe())
    one, two, on_cluster = phases[0], phases[1], phases[2]
    if one.memory_per_entry is not None:
        print(
            f"Redis memory: {one.memory_per_entry:.0f} bytes per history entry "
            f"(latest documents included) = {one.memory_per_entry * 1e6 / 2**20:,.0f} MiB "
            "per million"
        )

    def ceilings(phase: Phase) -> str:
        here = phase.ceiling()[0] / one.ceiling()[0]
        alone = phase.ceiling(broker=False)[0] / one.ceiling(broker=False)[0]
        return f"ceilings {here:.2f}, broker elsewhere {alone:.2f}"

    print(
        f"targets: 2 consumers/1 >= 1.30 (got {two.rate / one.rate:.2f}, {ceilings(two)}); "
        f"cluster/single >= 0.80 (got {on_cluster.rate / one.rate:.2f}, "
        f"{ceilings(on_cluster)})"
    )
    print(
        f"ratio 2 consumers/1: {two.rate / one.rate:.2f}; "
        f"cluster/single: {on_cluster.rate / one.rate:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--variables", type=int, default=2_000)
    parser.add_argument("--quick", action="store_true", help="60 000 packets")
    parser.add_argument("--replicas", type=int, default=0, help="replicas per cluster primary")
    parser.add_argument("--cluster-two", action="store_true", help="also 2 consumers on it")
    parser.add_argument("--per-message", type=int, default=1, help="packets per message (array)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    args = parser.parse_args()
    if args.quick:
        args.packets = 60_000
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
