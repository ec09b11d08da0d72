"""Grafana's metric query through the Elasticsearch-compatible ``_msearch`` (a date_histogram of
avg and max, as its data source sends it) over history in merged and transfer objects, against
DuckDB running the same aggregation over the same Parquet objects, in the same run.

Ours: ``POST /_msearch`` to the ES-compatible app in uvicorn (real HTTP), the aggregation
engine's result cache off (first runs), then on (a repeated query). Reference: DuckDB's
``read_parquet`` of the objects' ``ts`` and ``n:<field>`` columns, ``GROUP BY`` the bucket.
A private redis-server on a free port (``redis-server`` on PATH) and a temporary directory of
objects; nothing of another Redis is touched. The last line is the ratio ours/DuckDB.

    .venv/bin/python bench/grafana.py [--entries 400000] [--variables 4] [--buckets 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latest_server import keys
from latest_server.packets import Packet, PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.web.app import create_es_app
from tests.servers import UvicornThread
from tests.services import free_port

T0 = 1_700_000_000
HEADER = {"search_type": "query_then_fetch", "ignore_unavailable": True, "index": "latest"}


def body(lo_ms: int, hi_ms: int, interval_ms: int) -> bytes:
    search = {
        "size": 0,
        "query": {
            "bool": {
                "filter": {"range": {"ts": {"gte": lo_ms, "lte": hi_ms, "format": "epoch_millis"}}}
            }
        },
        "aggs": {
            "2": {
                "date_histogram": {
                    "field": "ts",
                    "min_doc_count": 0,
                    "extended_bounds": {"min": lo_ms, "max": hi_ms},
                    "format": "epoch_millis",
                    "fixed_interval": f"{interval_ms}ms",
                },
                "aggs": {"1": {"avg": {"field": "v"}}, "3": {"max": {"field": "v"}}},
            }
        },
    }
    return orjson.dumps(HEADER) + b"\n" + orjson.dumps(search) + b"\n"


async def build(settings: Settings, args: argparse.Namespace) -> None:
    resources = await Resources.open(settings)
    await resources.trigger.close()
    parser = PacketParser(settings)
    per = args.entries // args.variables
    started = time.monotonic()
    for v in range(args.variables):
        for first in range(0, per, 20_000):
            docs = [
                {"id": f"v/{v}", "ts": T0 + n, "v": (n * 7919 + v) % 1000 / 10}
                for n in range(first, min(per, first + 20_000))
            ]
            items = [parser.parse_document(0, d) for d in docs]
            await resources.ingestor.write_batch([p for p in items if isinstance(p, Packet)])
            if first % 100_000 == 0:
                await resources.offloader.run_job(everything=True)
        await resources.offloader.run_job(everything=True)
        if v % 2 == 0:
            await resources.merger.merge_variable(f"v/{v}")  # half merged, half transfers
    await resources.close()
    print(f"wrote {per * args.variables} entries in {time.monotonic() - started:.1f} s")


def duckdb_query(objects: Path, variables: int, interval_ms: int) -> tuple[float, int]:
    paths = []
    for v in range(variables):
        key = keys.key_for(f"v/{v}")
        paths += [str(p) for p in (objects / "history" / key).rglob("*.parquet")]
    started = time.perf_counter()
    rows = duckdb.sql(
        f"""SELECT ts // {interval_ms * 1000} AS b, avg("n:v"), max("n:v"), count(*)
            FROM read_parquet({paths!r}, union_by_name=true) GROUP BY b ORDER BY b"""
    ).fetchall()
    return time.perf_counter() - started, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=400_000)
    parser.add_argument("--variables", type=int, default=4)
    parser.add_argument("--buckets", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            objects = Path(tmp) / "objects"
            settings = Settings(  # type: ignore[call-arg]
                redis_url=f"redis://127.0.0.1:{port}/0",
                objects_url=objects.as_uri(),
                data_dir=str(Path(tmp) / "data"),
                amqp_url=None,
                query_cache_bytes=0,
            )
            asyncio.run(build(settings, args))
            per = args.entries // args.variables
            lo_ms, hi_ms = T0 * 1000, (T0 + per) * 1000
            interval = max(1, (hi_ms - lo_ms) // args.buckets)
            request = body(lo_ms, hi_ms, interval)
            ours = measure(settings, request, args.runs)
            cached = measure(dataclasses.replace(settings, query_cache_bytes=1 << 26), request, 3)
            reference = []
            for _ in range(args.runs):
                took, groups = duckdb_query(objects, args.variables, interval)
                reference.append(took)
            print(f"duckdb: {statistics.median(reference) * 1000:.1f} ms median ({groups} groups)")
            print(f"ours: {statistics.median(ours) * 1000:.1f} ms median, first of each run")
            print(f"ours, repeated (result cache): {min(cached) * 1000:.2f} ms")
            ratio = statistics.median(reference) / statistics.median(ours)
            print(f"ratio ours/duckdb speed: {ratio:.2f}")
        finally:
            redis.terminate()
            redis.wait(10)


def measure(settings: Settings, request: bytes, runs: int) -> list[float]:
    timings: list[float] = []
    with (
        UvicornThread(create_es_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
    ):
        for _ in range(runs):
            started = time.perf_counter()
            reply = client.post(
                "/_msearch?max_concurrent_shard_requests=5",
                content=request,
                headers={"content-type": "application/x-ndjson"},
            )
            timings.append(time.perf_counter() - started)
            answer: Any = reply.json()["responses"][0]
            assert answer["status"] == 200, answer
    buckets = answer["aggregations"]["2"]["buckets"]
    print(f"  {len(buckets)} buckets, {sum(b['doc_count'] for b in buckets)} entries")
    return timings


if __name__ == "__main__":
    main()
