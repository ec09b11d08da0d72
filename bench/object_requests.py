"""Object-store requests per offload job and per merge, counted on the S3 client (moto's server):
the figures docs/scaling.md turns into request rates.

Three cycles over ``--variables`` variables, ``--entries`` new entries each (the packets of
``offload.py``): write, one offload job of everything (one transfer object per variable), and
after cycles 2 and 3 a merge of every variable (cycle 2: two transfer objects and no merged one;
cycle 3: the merged object and one transfer object, the steady state). Prints the requests by
S3 operation, per job and per variable, and Redis' memory per history entry (``used_memory``
before and after cycle 1's writes). Redis is this run's own (a free loopback port); nothing
shared is touched. Run from the project folder (about 20 s)::

    .venv/bin/python bench/object_requests.py [--variables 200] [--entries 100000]

The last line printed is ``per variable: offload X requests, merge Y requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the private Redis

import boto3
import orjson
from history import BUCKET, S3_ENV, S3Counter, moto_server
from offload import document, variable_ids

from latest_server.packets import PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.services import private_redis


async def write(resources: Resources, ids: list[str], entries: int, first: int) -> None:
    """``entries`` entries round-robin over ``ids``, numbered per variable from ``first``."""
    parser = PacketParser(resources.settings)
    rng = random.Random(first)
    for start in range(0, entries, 1000):
        made = [
            parser.packet(document(ids[n % len(ids)], first + n // len(ids), rng))
            for n in range(start, min(entries, start + 1000))
        ]
        await resources.ingestor.write_batch(made)


async def main_async(args: argparse.Namespace, redis_url: str) -> None:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    ids = variable_ids(args.variables)
    per_variable = args.entries // len(ids)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            redis_url=redis_url,
            data_dir=data_dir,
            objects_url=f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}",
        )
        resources = await Resources.open(settings)
        try:
            await resources.trigger.close()
            counter = S3Counter(resources.objects.client)  # type: ignore[attr-defined]
            offload = merge = 0
            for cycle in (1, 2, 3):
                before = int((await resources.redis.info("memory"))["used_memory"])
                await write(resources, ids, args.entries, (cycle - 1) * per_variable)
                if cycle == 1:
                    after = int((await resources.redis.info("memory"))["used_memory"])
                    print(
                        f"Redis memory: {(after - before) / args.entries:.0f} bytes per history "
                        f"entry ({args.entries} entries of ~"
                        f"{len(orjson.dumps(document(ids[0], 0, random.Random(0))))} bytes over "
                        f"{len(ids)} variables, latest documents included)"
                    )
                counter.reset()
                report = await resources.offloader.run_job(everything=True)
                assert report is not None
                offload = sum(counter.requests.values())
                print(
                    f"cycle {cycle}: offload job of {report.entries} entries, "
                    f"{report.variables} variables: {counter.describe()}"
                )
                if cycle == 1:
                    continue
                counter.reset()
                reports = await resources.merger.merge_variables(ids)
                merge = sum(counter.requests.values())
                inputs = sum(r.inputs for r in reports) / len(ids)
                print(
                    f"cycle {cycle}: merge of {len(ids)} variables ({inputs:.0f} inputs each): "
                    f"{counter.describe()}"
                )
        finally:
            await resources.close()
    print(
        f"per variable: offload {offload / len(ids):.2f} requests, "
        f"merge {merge / len(ids):.2f} requests"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variables", type=int, default=200)
    parser.add_argument("--entries", type=int, default=100_000, help="new entries per cycle")
    args = parser.parse_args()
    with moto_server() as endpoint, private_redis() as redis_url:
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL_S3=endpoint)
        asyncio.run(main_async(args, redis_url))


if __name__ == "__main__":
    main()
