"""Listing many variables: ``GET /variables?prefix=`` of ``latest-server serve`` over 100 000
variables, a page of 1 000 ids (with their latest versions and entry counts) per request.

* Ours: ``latest-server serve`` (subprocess, no AMQP) answering
  ``GET /variables?prefix=…&limit=1000``, walking the pages of a prefix that holds every variable
  by their cursors, and the single page of a prefix that holds exactly 1 000 of them.
* Reference: ``GET /healthz`` of the same server in the same run (routing, middleware and the
  HTTP round trip, no Redis): what any answer of this server costs at least.

The variables are written first through the real write path (``Ingestor.write_batch`` with the
index of variables, ``RedisLatestStore``), ``--entries`` history entries each. Requests go one at
a time over one keep-alive connection of an httpx client; each target is asked ``--requests``
times after a short warm-up, and the median and 95th percentile of the latencies are printed.
Target: a page of 1 000 in under 50 ms at the median.

By default a private ``redis-server`` (no persistence) on a free port is started for the run and
stopped after it; ``--redis-url`` uses another Redis instead (that database is flushed first:
give one nothing else uses). Takes well under a minute. The last line printed is
``ratio ours/healthz median: X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
from common import HOST, free_port, ours_command, server
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from latest_server import keys
from latest_server.ingestor import Ingestor
from latest_server.packets import Packet, PacketParser
from latest_server.settings import Settings
from latest_server.stores.latest_redis import RedisLatestStore
from latest_server.stores.variables import VariableIndex

PAGE = 1_000
WRITE_BATCH = 2_000
WARMUP = 5
T0 = 1_700_000_000


def variable_id(n: int) -> str:
    return f"plant/{n // PAGE:03d}/sensor/{n:06d}"


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of this run: no persistence, a free port, stopped at the end."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise SystemExit("needs redis-server (or valkey-server) on PATH, or --redis-url")
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
        )
        try:
            yield f"redis://{HOST}:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=30)


async def fill(url: str, variables: int, entries: int) -> None:
    """``variables`` variables of ``entries`` entries each, through the write path."""
    redis = Redis.from_url(url)
    try:
        for _ in range(100):  # the server may still be starting
            with contextlib.suppress(OSError, RedisConnectionError):
                if await redis.ping():
                    break
            await asyncio.sleep(0.1)
        await redis.flushdb()
        store = await RedisLatestStore.open(redis)
        ingestor = Ingestor(store, variables=VariableIndex(redis, store.scripts))
        parser = PacketParser(Settings())
        started = time.perf_counter()
        for entry in range(entries):
            for start in range(0, variables, WRITE_BATCH):
                batch = []
                for n in range(start, min(start + WRITE_BATCH, variables)):
                    packet = parser.parse_document(0, {"id": variable_id(n), "ts": T0 + entry})
                    assert isinstance(packet, Packet)
                    batch.append(packet)
                await ingestor.write_batch(batch)
        took = time.perf_counter() - started
        print(f"wrote {variables} variables × {entries} entries in {took:.1f} s")
        assert await redis.zcard(keys.VARIABLES) == variables
    finally:
        await redis.aclose()


def timed(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    answer = client.get(path, params=params)
    took = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:200]}")
    return took


def walk(client: httpx.Client, requests: int, variables: int) -> list[float]:
    """``requests`` pages of 1 000 under "plant/", following the cursors (from the start again
    at the last page), each page checked."""
    latencies = []
    cursor = None
    seen = 0
    for _ in range(requests):
        params = {"prefix": "plant/", "limit": str(PAGE)}
        if cursor:
            params["cursor"] = cursor
        started = time.perf_counter()
        answer = client.get("/variables", params=params)
        latencies.append(time.perf_counter() - started)
        body = answer.json()
        page = body["variables"]
        if [v["id"] for v in page] != [
            variable_id(n) for n in range(seen, min(seen + PAGE, variables))
        ]:
            raise RuntimeError(f"page after {seen} ids is not the next {PAGE} ids")
        cursor = body["next"]
        seen = 0 if cursor is None else seen + PAGE
    return latencies


def figures(name: str, latencies: list[float]) -> float:
    ms = sorted(t * 1000 for t in latencies)
    median = statistics.median(ms)
    p95 = ms[max(0, round(len(ms) * 0.95) - 1)]
    print(f"{name:<34} median {median:7.2f} ms   p95 {p95:7.2f} ms   ({len(ms)} requests)")
    return median


def run(args: argparse.Namespace, redis_url: str) -> None:
    asyncio.run(fill(redis_url, args.variables, args.entries))
    env = {k: v for k, v in os.environ.items() if k != "AMQP_URL" and not k.startswith("LATEST_")}
    env.update(REDIS_URL=redis_url, LATEST_HOST=HOST, LATEST_LOG_LEVEL="warning")
    env.update(LATEST_ES_PORT="0")
    port = free_port()
    base = f"http://{HOST}:{port}"
    with (
        tempfile.TemporaryDirectory() as data_dir,
        server(
            "latest-server serve",
            ours_command(),
            {**env, "LATEST_PORT": str(port), "LATEST_DATA_DIR": data_dir},
            f"{base}/healthz",
        ),
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        for _ in range(WARMUP):
            timed(client, "/healthz")
            timed(client, "/variables", {"prefix": "plant/", "limit": str(PAGE)})
        bare = [timed(client, "/healthz") for _ in range(args.requests)]
        pages = walk(client, args.requests, args.variables)
        one = {"prefix": "plant/042/", "limit": str(PAGE)}
        single = [timed(client, "/variables", one) for _ in range(args.requests)]
    print(f"{args.variables} variables, pages of {PAGE}, one request at a time")
    reference = figures("GET /healthz (reference)", bare)
    ours = figures("GET /variables?prefix=plant/ (walk)", pages)
    figures("GET /variables?prefix=plant/042/", single)
    print(f"target: a page of {PAGE} in < 50 ms at the median: {'met' if ours < 50 else 'MISSED'}")
    print(f"ratio ours/healthz median: {ours / reference:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variables", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=1, help="history entries per variable")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per target")
    parser.add_argument("--redis-url", help="a Redis to use (flushed!) instead of a private one")
    args = parser.parse_args()
    if args.redis_url:
        run(args, args.redis_url)
        return
    with private_redis() as url:
        run(args, url)


if __name__ == "__main__":
    sys.exit(main())
