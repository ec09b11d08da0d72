"""What ``LATEST_REDIS_WAIT_REPLICAS=1`` costs the write path: ``Ingestor.write_batch`` into a
3-primary Redis Cluster with a replica each, every batch followed by ``WAIT 1`` on each node it
wrote to (ours), against the same batches acknowledged without waiting (the reference: the
default, ``0``), in the same run, rounds alternating.

    python bench/wait_replicas.py [--packets 30000] [--variables 3000] [--batch 500] [--rounds 3]

Starts its own cluster (tests/cluster.py, on loopback, no persistence; nothing shared is
touched). Packets are those of bench/cluster_write.py, written in batches of ``--batch`` one
after the other, as one consumer does. Replicas share the machine's cores with the primaries and
the client, so the reference already pays for replication; WAIT adds a round trip per node per
batch and the wait for the replica's acknowledgement.

The last line is ``ratio wait/no-wait: X.XX`` (packets/s, medians).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster_write import packets, rate
from latest_server.ingestor import Ingestor
from latest_server.redis_client import connect, load_scripts
from latest_server.settings import Settings
from latest_server.stores.latest_cluster import ClusterLatestStore
from latest_server.stores.latest_redis import Replicas
from tests.cluster import redis_cluster

ORDERS = (("wait", "no-wait"), ("no-wait", "wait"))


async def run(args: argparse.Namespace, cluster_url: str) -> None:
    data = packets(args.packets, args.variables)
    batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
    cluster = connect(cluster_url)
    scripts = await load_scripts(cluster)

    def ingestor(replicas: int) -> Ingestor:
        store = ClusterLatestStore(cluster, scripts)  # type: ignore[arg-type]
        store.replicas = Replicas(replicas, 1.0)
        return Ingestor(store)

    targets = {"wait": lambda: ingestor(1), "no-wait": lambda: ingestor(0)}
    for make in targets.values():  # warm-up: connections, scripts, the heap
        await rate(make(), batches[:10])
        await cluster.flushdb()
    rates: dict[str, list[float]] = {name: [] for name in targets}
    for round_ in range(args.rounds):
        for name in ORDERS[round_ % len(ORDERS)]:
            await cluster.flushdb()
            rates[name].append(await rate(targets[name](), batches))
            print(f"round {round_ + 1} {name:8} {rates[name][-1]:10,.0f} packets/s", flush=True)
    await cluster.flushdb()
    await cluster.aclose()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"{args.packets} packets over {args.variables} variables, batches of {args.batch}, "
        f"3 primaries with a replica each, medians of {args.rounds} rounds:"
    )
    print(f"  ours (WAIT 1 after each node's calls) {medians['wait']:10,.0f} packets/s")
    print(f"  reference (no WAIT)                   {medians['no-wait']:10,.0f} packets/s")
    print(f"ratio wait/no-wait: {medians['wait'] / medians['no-wait']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=30_000)
    parser.add_argument("--variables", type=int, default=3_000)
    parser.add_argument("--batch", type=int, default=dataclasses.asdict(Settings())["batch_size"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with redis_cluster(replicas=1) as cluster:
        asyncio.run(run(args, cluster.url))


if __name__ == "__main__":
    main()
