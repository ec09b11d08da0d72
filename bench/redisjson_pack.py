"""The client's cost of LATEST_BACKEND=redisjson: packing a batch's script calls, ours against
the default backend's.

A batch becomes ``EVALSHA`` calls of up to 100 packets each, packed by the store
(``RedisLatestStore._command``). Under ``redisjson`` each call also carries a group key and a
member path per packet (``RedisJsonLatestStore._command``: the group rule, a SHA-1 for the
member, and the packing of both). This measures the CPU time of packing ``--packets`` IUDX-shaped
packets over ``--variables`` resource ids in calls of 100, median of ``--rounds``:

* ours: ``RedisJsonLatestStore`` (``--unique`` also names members by a unique attribute, which
  parses each packet's JSON once more);
* reference: ``RedisLatestStore``, the default backend, on the same packets.

Redis' own cost (the ``JSON.SET`` of each applied packet) is not measured: the JSON module
cannot run on this machine. No server is needed (the stores are built on an unconnected
client). Run (seconds)::

    .venv/bin/python bench/redisjson_pack.py [--packets 200000] [--variables 10000] [--unique]

The last line printed is ``ratio ours/default pack time: X.XX``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from redis.asyncio import Redis

from latest_server.packets import Packet, PacketParser
from latest_server.redis_client import Scripts
from latest_server.settings import Settings
from latest_server.stores.latest_redis import RedisLatestStore
from latest_server.stores.latest_redisjson import GroupRule, RedisJsonLatestStore

CHUNK = 100
SHA = "0" * 40


def packets(count: int, variables: int) -> list[Packet]:
    parser = PacketParser(Settings())
    rng = random.Random(26)
    ids = [
        f"iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86/rs.iudx.io/group-{n % 50}/item-{n}"
        for n in range(variables)
    ]
    made = []
    for n in range(count):
        doc = {
            "id": rng.choice(ids),
            "observationDateTime": 1_700_000_000_000 + n,
            "license_plate": f"GJ05BX{rng.randrange(10_000):04d}",
            "speed": rng.random() * 60,
            "location": {"type": "Point", "coordinates": [72.87, 21.21]},
        }
        item = parser.parse_document(0, doc)
        assert isinstance(item, Packet)
        made.append(item)
    return made


def pack_time(store: RedisLatestStore, chunks: list[list[Packet]]) -> float:
    start = time.process_time()
    for chunk in chunks:
        store._command(SHA, b"0", chunk)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--variables", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--unique", action="store_true", help="members by license_plate")
    args = parser.parse_args()

    made = packets(args.packets, args.variables)
    chunks = [made[i : i + CHUNK] for i in range(0, len(made), CHUNK)]
    redis = Redis()  # never connected: packing only
    scripts = Scripts({}, {})
    default = RedisLatestStore(redis, scripts)
    ours = RedisJsonLatestStore(
        redis,
        scripts,
        groups=GroupRule(4),
        unique_attribute="license_plate" if args.unique else None,
    )
    # The first round fills the per-variable caches of both, as a running server has them.
    pack_time(default, chunks)
    pack_time(ours, chunks)
    times: dict[str, list[float]] = {"default": [], "ours": []}
    for _ in range(args.rounds):
        times["default"].append(pack_time(default, chunks))
        times["ours"].append(pack_time(ours, chunks))
    reference = statistics.median(times["default"])
    measured = statistics.median(times["ours"])
    per = 1e6 / args.packets
    print(f"packets {args.packets}, variables {args.variables}, calls of {CHUNK}")
    print(f"reference (redis):     {reference * per:.2f} µs CPU per packet")
    label = "redisjson --unique" if args.unique else "redisjson"
    print(f"ours ({label}): {measured * per:.2f} µs CPU per packet")
    print(f"ratio ours/default pack time: {measured / reference:.2f}")


if __name__ == "__main__":
    main()
