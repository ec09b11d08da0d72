"""Elasticsearch-compatible ``_bulk`` throughput against ``POST /ingest``, in one run.

One ``latest-server serve`` subprocess (Redis db 14, flushed before each phase and at the end)
receives the same versioned documents twice:

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
each) and medians are printed, with the server process's CPU time per document (from /proc),
the steadier figure on a busy machine. Last, both clients run once more against a server that
answers every request at once with a ready-made response: each client's own cost, which no
server can remove. From it the run prints what each server side added per document, and the
ratio ``_bulk`` would reach if its server side added no more than ``POST /ingest``'s. Run::

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
from typing import Any, NamedTuple

import httpx
import orjson
from common import HOST, free_port, process_cpu, server
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


# --- the client's own cost: helpers.bulk against a server that answers at once --------------

CANNED_ITEM = {
    "index": {
        "_index": "latest",
        "_id": "0" * 40,
        "_version": 1714521610000,
        "result": "created",
        "_shards": {"total": 1, "successful": 1, "failed": 0},
        "_seq_no": 1,
        "_primary_term": 1,
        "status": 201,
    }
}


async def canned(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app: every request gets a ready-made answer, a bulk one item per action line."""
    if scope["type"] != "http":
        return
    lines = 0
    while True:
        message = await receive()
        lines += message.get("body", b"").count(b"\n")
        if not message.get("more_body"):
            break
    if scope["path"] == "/":
        body = orjson.dumps({"version": {"number": "8.19.0", "build_flavor": "default"}})
    elif scope["path"] == "/ingest":
        body = orjson.dumps({"accepted": lines, "stale": 0, "duplicates": 0, "rejected": []})
    else:
        body = orjson.dumps({"took": 1, "errors": False, "items": [CANNED_ITEM] * (lines // 2)})
    headers = [
        (b"content-type", b"application/vnd.elasticsearch+json;compatible-with=8"),
        (b"x-elastic-product", b"Elasticsearch"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Floors(NamedTuple):
    ingest: float
    bulk: float  # docs/s of each client against a server that costs nothing


def client_floors(docs: list[dict[str, Any]], actions: list[dict[str, Any]], chunk: int) -> Floors:
    """Each phase's docs/s when the server costs nothing: the client's own share of the time."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--app-dir", os.path.dirname(__file__)]
    command += ["es_bulk:canned", "--port", str(port), "--log-level", "warning"]
    url = f"http://{HOST}:{port}"
    with server("the answering server", command, dict(os.environ), url + "/"):
        return Floors(run_ingest(url, docs, chunk), run_es_bulk(url, actions, chunk)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--variables", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--late", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each phase, alternating")
    args = parser.parse_args()

    redis = Redis.from_url(REDIS_URL)
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
                REDIS_URL=REDIS_URL,
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
                costs: dict[str, list[float]] = {"ingest": [], "bulk": []}

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
                for round_ in range(1, args.rounds + 1):
                    for name, label, run in phases:  # each on a flushed Redis
                        redis.flushdb()
                        before = process_cpu(process.pid)
                        rate, detail = run()
                        cost = (process_cpu(process.pid) - before) / len(docs) * 1e6
                        rates[name].append(rate)
                        costs[name].append(cost)
                        print(
                            f"  round {round_} {label} {rate:10,.0f} docs/s, "
                            f"{cost:.0f} server µs/doc{detail}"
                        )
    finally:
        redis.flushdb()
    floors = client_floors(docs, actions, args.chunk)
    ingest_rate, es_rate = (statistics.median(rates[k]) for k in ("ingest", "bulk"))
    ingest_cost, es_cost = (statistics.median(costs[k]) for k in ("ingest", "bulk"))
    unit = "server CPU µs/doc"
    print(f"POST /ingest (median):        {ingest_rate:10,.0f} docs/s, {ingest_cost:.0f} {unit}")
    print(f"helpers.bulk, _bulk (median): {es_rate:10,.0f} docs/s, {es_cost:.0f} {unit}")
    print(f"server CPU per doc ingest/_bulk: {ingest_cost / es_cost:.2f}")
    # Wall µs per document: each phase's time less its client's own is what the server (and
    # Redis) added. A _bulk that added no more than POST /ingest reaches `ceiling`.
    ingest_us, ingest_client, bulk_client = (1e6 / r for r in (ingest_rate, *floors))
    ceiling = ingest_us / (bulk_client + ingest_us - ingest_client)
    print(
        f"clients alone, server answering at once: POST /ingest {ingest_client:.1f} µs/doc, "
        f"helpers.bulk {bulk_client:.1f} µs/doc"
    )
    print(
        f"server side (wall less the client's own): POST /ingest {ingest_us - ingest_client:.1f} "
        f"µs/doc, _bulk {1e6 / es_rate - bulk_client:.1f} µs/doc; at 0.8 _bulk may add "
        f"{1.25 * ingest_us - bulk_client:.1f}"
    )
    print(f"ratio if _bulk's server side cost what POST /ingest's does: {ceiling:.2f}")
    print(f"ratio es_bulk/ingest: {es_rate / ingest_rate:.2f}")


if __name__ == "__main__":
    main()
