"""The write path on a Redis Cluster: ``Ingestor.write_batch`` into a 3-primary cluster, a batch
grouped by node (one write.lua call carries many slots of a node: ``allow-cross-slot-keys``),
against the same batches grouped by slot (a call per slot, its keys declared), and against one
Redis, in the same run.

    python bench/cluster_write.py [--packets 60000] [--variables 6000] [--batch 500] [--rounds 3]

Starts its own servers (nothing shared is touched): one ``redis-server`` and a cluster of three
primaries (tests/cluster.py; ``--replicas 1`` gives each a replica, which doubles Redis' work
per write), all on loopback, no persistence. Packets are
~120-byte JSON documents over ``--variables`` ids, every one distinct (each becomes a history
entry), written in batches of ``--batch`` (LATEST_BATCH_SIZE's default) one after the other, as
one consumer does. After a short warm-up of each, each round writes into freshly flushed
servers, the three targets in a rotating order; the medians of packets/s are printed.

On one machine the cluster's servers share its cores with the client: the ratio to one Redis
says what grouping by node costs the client, not what three machines would give.

The last line is ``ratio cluster/single: X.XX`` (by node); the line before it,
``ratio by-node/by-slot: X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latest_server.ingestor import Ingestor
from latest_server.packets import Packet, PacketParser
from latest_server.redis_client import Client, connect, load_scripts
from latest_server.settings import Settings
from latest_server.stores.latest_cluster import ClusterLatestStore
from latest_server.stores.latest_redis import RedisLatestStore
from tests.cluster import redis_cluster
from tests.services import private_redis

ORDERS = (("by-node", "by-slot", "single"), ("single", "by-node", "by-slot"))


def packets(count: int, variables: int) -> list[Packet]:
    parser = PacketParser(Settings())
    found = []
    for n in range(count):
        doc = {
            "id": f"bench/cluster/{n % variables}",
            "observationDateTime": 1_700_000_000_000 + n,
            "pm25": n % 97,
            "no2": (n * 7) % 113,
            "status": "ok",
        }
        item = parser.parse_message(orjson.dumps(doc))[0]
        assert isinstance(item, Packet)
        found.append(item)
    return found


async def rate(ingestor: Ingestor, batches: list[list[Packet]]) -> tuple[float, float]:
    """Packets/s, and the client's CPU µs per packet (steadier than a rate on a busy machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    written = 0
    for batch in batches:
        result = await ingestor.write_batch(iter(batch))
        written += len(result.outcomes)
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    assert written == sum(map(len, batches))
    return written / elapsed, used / written * 1e6


async def run(args: argparse.Namespace, single_url: str, cluster_url: str) -> None:
    data = packets(args.packets, args.variables)
    batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
    single = connect(single_url)
    cluster = connect(cluster_url)
    single_scripts = await load_scripts(single)
    cluster_scripts = await load_scripts(cluster)
    assert not isinstance(single, type(cluster))
    targets: dict[str, tuple[Client, Callable[[], Ingestor]]] = {
        "single": (single, lambda: Ingestor(RedisLatestStore(single, single_scripts))),
        "by-node": (
            cluster,
            lambda: Ingestor(ClusterLatestStore(cluster, cluster_scripts)),  # type: ignore[arg-type]
        ),
        "by-slot": (
            cluster,
            lambda: Ingestor(
                ClusterLatestStore(cluster, cluster_scripts, cross_slot=False)  # type: ignore[arg-type]
            ),
        ),
    }
    for client, ingestor in targets.values():  # warm-up: connections, scripts, the heap
        await rate(ingestor(), batches[:10])
        await client.flushdb()
    rates: dict[str, list[float]] = {name: [] for name in targets}
    cpus: dict[str, list[float]] = {name: [] for name in targets}
    for round_ in range(args.rounds):
        for name in ORDERS[round_ % len(ORDERS)]:
            client, ingestor = targets[name]
            await client.flushdb()
            speed, cpu = await rate(ingestor(), batches)
            rates[name].append(speed)
            cpus[name].append(cpu)
            print(
                f"round {round_ + 1} {name:8} {speed:10,.0f} packets/s {cpu:6.1f} µs CPU/packet",
                flush=True,
            )
    for client in (single, cluster):
        await client.flushdb()
        await client.aclose()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"{args.packets} packets over {args.variables} variables, batches of {args.batch}, "
        f"medians of {args.rounds} rounds:"
    )
    for name, value in medians.items():
        cpu = statistics.median(cpus[name])
        print(f"  {name:8} {value:10,.0f} packets/s {cpu:6.1f} µs client CPU/packet")
    print(f"ratio by-node/by-slot: {medians['by-node'] / medians['by-slot']:.2f}")
    print(f"ratio cluster/single: {medians['by-node'] / medians['single']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=60_000)
    parser.add_argument("--variables", type=int, default=6_000)
    parser.add_argument("--batch", type=int, default=dataclasses.asdict(Settings())["batch_size"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--replicas", type=int, default=0, help="replicas per primary (one Redis has none)"
    )
    args = parser.parse_args()
    with private_redis() as single_url, redis_cluster(replicas=args.replicas) as cluster:
        asyncio.run(run(args, single_url, cluster.url))


if __name__ == "__main__":
    main()
