"""Elasticsearch-compatible ``_bulk`` throughput against ``POST /ingest``, in one run.

One ``latest-server serve`` subprocess (Redis db 14 or ``--redis-url``, flushed before each
phase and at the end) receives the same versioned documents twice:

* ``POST /ingest``: NDJSON bodies of ``--chunk`` documents, one after another (httpx), each
  serialized with orjson in the timed loop, as ``helpers.bulk`` serializes its chunks;
* ``helpers.bulk`` of the official client into the ES-compatible API (LATEST_ES_PORT), chunks of
  the same size, each action ``{"_id": sha1(id), "version": <epoch ms>, "version_type":
  "external"}`` like the reference Logstash pipeline. The client uses orjson for its JSON, as
  the ingest side does, so both measure the server more than the client's serializer.

Documents: ``--docs`` packets over ``--variables`` ids, ISO-8601 times, 10 % of them late (older
than the previous packet of their variable: stale, a 409 item on the ES side), built once with
the actions and frozen out of the garbage collector's sight. Rate = documents /
wall time of the phase; the two phases alternate for ``--rounds`` rounds (Redis flushed before
each) and medians are printed, with the CPU time per document of the server process (from
/proc), of Redis (its ``INFO cpu``) and of the client (this process, which runs nothing else).

Both clients wait for each answer, and each answer needs its documents written: Redis's work
and the client's never overlap. So no server, however fast, takes ``_bulk`` below the
``helpers.bulk`` client's CPU plus Redis's, per document; the run prints the ratio that bound
allows (ingest's wall time over it) before the ratio itself. Run::

    .venv/bin/python bench/es_bulk.py [--docs 200000] [--variables 10000] [--chunk 500]

The last line printed is ``ratio es_bulk/ingest: X.XX``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from common import HOST, free_port, process_cpu, redis_cpu, server
from elasticsearch import Elasticsearch, helpers
from redis import Redis

REDIS_URL = "redis://127.0.0.1:6379/14"
START = datetime(2024, 5, 1, tzinfo=UTC)


def make_documents(count: int, variables: int, late_share: float) -> list[dict[str, Any]]:
    rng = random.Random(1)
    steps = [0] * variables
    docs = []
    for i in range(count):
        v = i % variables
        steps[v] += 1
        step = steps[v] - 2 if steps[v] > 1 and rng.random() < late_share else steps[v]
        when = START + timedelta(seconds=10 * step, microseconds=i % 1000)
        docs.append(
            {
                "id": f"bench/aqm/sensor-{v:05d}",
                "observationDateTime": when.isoformat(),
                "pm2p5": round(rng.random() * 100, 2),
                "seq": i,
            }
        )
    return docs


def epoch_ms(doc: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(doc["observationDateTime"]).timestamp() * 1000)


def run_ingest(url: str, docs: list[dict[str, Any]], chunk: int) -> float:
    headers = {"Content-Type": "application/x-ndjson"}
    with httpx.Client(base_url=url, timeout=60) as http:
        started = time.perf_counter()
        for i in range(0, len(docs), chunk):
            body = b"\n".join([orjson.dumps(d) for d in docs[i : i + chunk]]) + b"\n"
            http.post("/ingest", content=body, headers=headers).raise_for_status()
        return len(docs) / (time.perf_counter() - started)


def make_actions(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "_index": "latest",
            "_id": hashlib.sha1(d["id"].encode()).hexdigest(),
            "_source": d,
            "version": epoch_ms(d),
            "version_type": "external",
        }
        for d in docs
    ]


def run_es_bulk(url: str, actions: list[dict[str, Any]], chunk: int) -> tuple[float, int, int]:
    options: dict[str, Any] = {}
    try:
        from elasticsearch.serializer import OrjsonSerializer

        options["serializers"] = {"application/json": OrjsonSerializer()}
    except ImportError:  # before 8.13
        pass
    with Elasticsearch(url, request_timeout=60, **options) as es:
        started = time.perf_counter()
        ok, errors = helpers.bulk(es, actions, chunk_size=chunk, ignore_status=(409,))
        rate = len(actions) / (time.perf_counter() - started)
    return rate, ok, len(errors)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--variables", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--late", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each phase, alternating")
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database this run may flush")
    args = parser.parse_args()

    redis = Redis.from_url(args.redis_url)
    redis.flushdb()
    docs = make_documents(args.docs, args.variables, args.late)
    actions = make_actions(docs)
    # The documents and actions live through every phase: out of the cyclic collector's sight,
    # or each full collection in the client walks all of them again (0.8 of helpers.bulk's 7.5
    # µs per document), a cost of this script that no producer streaming its data pays.
    gc.collect()
    gc.freeze()
    port, es_port = free_port(), free_port()
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            env = dict(
                os.environ,
                REDIS_URL=args.redis_url,
                LATEST_PORT=str(port),
                LATEST_ES_PORT=str(es_port),
                LATEST_DATA_DIR=data_dir,
                LATEST_LOG_LEVEL="warning",
            )
            env.pop("AMQP_URL", None)
            command = [sys.executable, "-m", "latest_server", "serve"]
            ready = [f"http://{HOST}:{port}/healthz", f"http://{HOST}:{es_port}/"]
            with server("latest-server serve", command, env, ready) as process:
                print(f"{args.docs} documents, {args.variables} variables, chunks of {args.chunk}")
                rates: dict[str, list[float]] = {"ingest": [], "bulk": []}
                # CPU µs per document of the phase, by process: "server", "Redis", "client"
                costs: dict[str, list[dict[str, float]]] = {"ingest": [], "bulk": []}

                def bulk() -> tuple[float, str]:
                    rate, ok, stale = run_es_bulk(f"http://{HOST}:{es_port}", actions, args.chunk)
                    return rate, f" ({ok} written, {stale} stale)"

                phases: list[tuple[str, str, Callable[[], tuple[float, str]]]] = [
                    (
                        "ingest",
                        "POST /ingest:",
                        lambda: (run_ingest(f"http://{HOST}:{port}", docs, args.chunk), ""),
                    ),
                    ("bulk", "helpers.bulk:", bulk),
                ]

                def cpu() -> dict[str, float]:
                    return {
                        "server": process_cpu(process.pid),
                        "Redis": redis_cpu(redis.info("cpu")),
                        "client": time.process_time(),
                    }

                for round_ in range(1, args.rounds + 1):
                    for name, label, run in phases:  # each on a flushed Redis
                        redis.flushdb()
                        before = cpu()
                        rate, detail = run()
                        after = cpu()
                        cost = {k: (after[k] - before[k]) / len(docs) * 1e6 for k in before}
                        rates[name].append(rate)
                        costs[name].append(cost)
                        print(
                            f"  round {round_} {label} {rate:10,.0f} docs/s, CPU µs/doc: "
                            + ", ".join(f"{k} {v:.1f}" for k, v in cost.items())
                            + detail
                        )
    finally:
        redis.flushdb()
    ingest_rate, es_rate = (statistics.median(rates[k]) for k in ("ingest", "bulk"))
    median = {
        phase: {k: statistics.median(c[k] for c in costs[phase]) for k in costs[phase][0]}
        for phase in costs
    }
    for label, phase, rate in (
        ("POST /ingest (median):       ", "ingest", ingest_rate),
        ("helpers.bulk, _bulk (median):", "bulk", es_rate),
    ):
        print(
            f"{label} {rate:10,.0f} docs/s = {1e6 / rate:.1f} wall µs/doc; CPU µs/doc: "
            + ", ".join(f"{k} {v:.1f}" for k, v in median[phase].items())
        )
    # The client waits for each answer, and each answer needs its documents written: the
    # client's CPU and Redis's add up, whatever the server does in between.
    floor = median["bulk"]["client"] + median["bulk"]["Redis"]
    print(
        f"_bulk's floor, helpers.bulk's CPU + Redis's: {floor:.1f} µs/doc; the best ratio a "
        f"server costing nothing could reach: {1e6 / ingest_rate / floor:.2f}"
    )
    print(f"ratio es_bulk/ingest: {es_rate / ingest_rate:.2f}")


if __name__ == "__main__":
    main()
