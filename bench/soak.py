"""Soak: every edge at once for a bounded time, then a check that nothing accepted was lost or
doubled, and how the servers' memory moved.

Two ``latest-server serve`` processes share Redis (db 13, flushed before and after) and an S3
bucket (``moto_server`` on loopback, as in history.py: no S3 server can be installed here). A
consumes RabbitMQ (exchange and queue ``soak.*``, deleted at the end); B serves ``POST /ingest``
and the Elasticsearch-compatible API. A small offload budget (``--offload-mib`` above Redis's
memory at start) makes history leave Redis again and again. For ``--minutes``:

* **AMQP**: ``AsyncSession`` runs (ingest_client) of ``--session-seconds`` each over the
  variables ``soak/amqp/<i>``; a run that closes makes the server move its variables' history
  to merged objects (the session end hook), while the next run writes on.
* **HTTP**: NDJSON batches to B's ``POST /ingest`` over ``soak/http/<i>``; 5 % of the packets
  are late (older than their variable's latest: stale), 5 % are sent again (duplicates).
* **Elasticsearch**: ``helpers.streaming_bulk`` of the official client to B's ``_bulk`` over
  ``soak/es/<i>``, ``_id`` = SHA-1 of the id and ``version`` = the packet's time in ms, 5 %
  late: each item must be 201/200, or 409 exactly when it is late.
* **Websocket**: ``--subscribers`` clients (``ingest_client.subscribe``) on 30 variables each,
  from the start of history; every 15-25 s each one leaves and resumes, from the positions it
  has, on the other server.
* Half-way, ``latest-server merge --all`` runs beside the writers.

Every 10 s the script prints each server's RSS, Redis's ``used_memory``, the objects in the
bucket and how long one 64 KiB PUT takes (is the object store keeping up?). Then the producers
stop, the queue drains, and it checks, for every variable: its full history (``GET
/history?format=ndjson``, every tier merged) holds each acknowledged packet exactly once, each
under its own seq, at its own time; ``GET /latest`` is the newest packet; and every subscriber
received each of its variables' history entries exactly once, in seq order (plus, under their
own seqs, packets sent again after their first copy left Redis: see ``check_subscriber``).
Bounded loops only; every address is 127.0.0.1. Run::

    .venv/bin/python bench/soak.py [--minutes 5] [--rate 400]

The last line printed is ``soak: OK`` or ``soak: FAILED (<how many> problems)``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import boto3
import httpx
import orjson
from common import HOST, free_port, ours_command, server
from elasticsearch import Elasticsearch, helpers
from history import S3_ENV, moto_server
from redis import Redis

from ingest_client import AsyncSession
from ingest_client.subscribe import Entry, Reset, subscribe

REDIS_URL = "redis://127.0.0.1:6379/13"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BUCKET = "latest-soak"
EXCHANGE, QUEUE = "soak.x", "soak.q"
VARIABLES = 200  # per edge
START_US = 1_700_000_000_000_000  # packet times: distinct per variable, 1 ms apart


@dataclass
class Sent:
    """What one edge had acknowledged, per variable: packet number → (time µs, document)."""

    packets: dict[str, dict[int, tuple[int, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    count: int = 0
    resent: int = 0
    late: int = 0

    def add(self, variable: str, n: int, ts_us: int, doc: dict[str, Any]) -> None:
        self.packets[variable][n] = (ts_us, doc)
        self.count += 1


@dataclass
class Clock:
    """Per-variable packet times: the next one, or (late) one between the last two."""

    last: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def next(self, variable: str, late: bool) -> tuple[int, bool]:
        previous = self.last.get(variable)
        if late and previous is not None and previous > START_US + 2000:
            return previous - 1000 + self.rng.randrange(1, 999), True
        ts = START_US if previous is None else previous + 1000
        self.last[variable] = ts
        return ts, False


problems: list[str] = []


def problem(text: str) -> None:
    problems.append(text)
    if len(problems) <= 30:
        print(f"  PROBLEM: {text}", flush=True)


# --- producers ---------------------------------------------------------------------------------


async def amqp_producer(stop: float, rate: int, session_seconds: float, sent: Sent) -> None:
    clock = Clock()
    n = 0
    run = 0
    while time.monotonic() < stop:
        run += 1
        ends = min(stop, time.monotonic() + session_seconds)
        pending: list[tuple[str, int, int, dict[str, Any]]] = []
        async with AsyncSession(
            f"soak-{os.getpid()}-{run}", url=AMQP_URL, exchange=EXCHANGE, routing_key="soak"
        ) as session:
            while time.monotonic() < ends:
                for _ in range(rate // 10):
                    variable = f"soak/amqp/{n % VARIABLES}"
                    ts_us, _ = clock.next(variable, late=False)
                    await session.sample(variable, n, ts=ts_us / 1e6, n=n)
                    pending.append((variable, n, ts_us, {"value": n, "n": n}))
                    n += 1
                await asyncio.sleep(0.1)
        # The block exited without FlushFailed: every sample of the run was confirmed.
        for variable, number, ts_us, doc in pending:
            sent.add(variable, number, ts_us, doc)


async def http_producer(url: str, stop: float, rate: int, sent: Sent) -> None:
    clock = Clock()
    rng = random.Random(11)
    n = 0
    history: list[tuple[str, int, int, dict[str, Any]]] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while time.monotonic() < stop:
            batch: list[tuple[str, int, int, dict[str, Any]]] = []
            for _ in range(rate // 10):
                if history and rng.random() < 0.05:
                    batch.append(rng.choice(history))  # sent again: a duplicate
                    sent.resent += 1
                    continue
                variable = f"soak/http/{n % VARIABLES}"
                ts_us, late = clock.next(variable, late=rng.random() < 0.05)
                sent.late += late
                doc = {"id": variable, "ts": ts_us, "value": rng.random(), "n": n}
                batch.append((variable, n, ts_us, doc))
                n += 1
            body = b"".join(orjson.dumps(item[3]) + b"\n" for item in batch)
            answer = await http.post(
                "/ingest", content=body, headers={"Content-Type": "application/x-ndjson"}
            )
            counts = answer.json()
            if answer.status_code != 200 or counts["rejected"]:
                problem(f"POST /ingest answered {answer.status_code}: {answer.text[:200]}")
                continue
            if counts["accepted"] + counts["stale"] != len(batch):
                problem(f"POST /ingest counted {counts} for {len(batch)} packets")
            for variable, number, ts_us, doc in batch:
                sent.add(variable, number, ts_us, {k: v for k, v in doc.items() if k != "id"})
            history += batch[-20:]
            del history[:-2000]
            await asyncio.sleep(0.1)


def es_producer(url: str, stop: float, rate: int, sent: Sent) -> None:
    clock = Clock()
    rng = random.Random(13)
    n = 0
    with Elasticsearch(url, request_timeout=60) as es:
        while time.monotonic() < stop:
            batch = []
            for _ in range(rate // 10):
                variable = f"soak/es/{n % VARIABLES}"
                ts_us, late = clock.next(variable, late=rng.random() < 0.05)
                sent.late += late
                doc = {"id": variable, "ts": ts_us, "value": rng.random(), "n": n}
                batch.append((variable, n, ts_us, doc, late))
                n += 1
            actions = [
                {
                    "_index": "latest",
                    "_id": hashlib.sha1(variable.encode()).hexdigest(),
                    "_source": doc,
                    "version": ts_us // 1000,
                    "version_type": "external",
                }
                for variable, _, ts_us, doc, _ in batch
            ]
            results = list(
                helpers.streaming_bulk(
                    es, actions, chunk_size=len(actions), raise_on_error=False, max_retries=0
                )
            )
            for (variable, number, ts_us, doc, late), (_, item) in zip(batch, results, strict=True):
                status = next(iter(item.values()))["status"]
                if status not in ((409,) if late else (200, 201)):
                    problem(f"_bulk item of {variable} (late: {late}) answered {status}")
                if status in (200, 201, 409):  # a 409 item is kept in history too
                    sent.add(variable, number, ts_us, {k: v for k, v in doc.items() if k != "id"})
            time.sleep(0.1)


# --- websocket subscribers ---------------------------------------------------------------------


@dataclass
class Subscriber:
    ids: list[str]
    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    docs: dict[str, dict[int, Any]] = field(default_factory=lambda: defaultdict(dict))
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    moves: int = 0
    redelivered: int = 0  # entries of packets sent again after their first copy left Redis


async def follow(subscriber: Subscriber, urls: list[str], stop_event: asyncio.Event) -> None:
    rng = random.Random(len(subscriber.ids) + hash(subscriber.ids[0]) % 1000)
    turn = rng.randrange(2)
    while not stop_event.is_set():
        url = urls[turn % 2]
        turn += 1
        leave_at = time.monotonic() + rng.uniform(15, 25)

        async def consume(url: str = url, leave_at: float = leave_at) -> None:
            since = dict(subscriber.positions)
            async for item in subscribe(url, subscriber.ids, since=since):
                if isinstance(item, Reset):
                    problem(f"a subscriber got {item}")
                    continue
                assert isinstance(item, Entry)
                subscriber.seqs[item.id].append(item.seq)
                subscriber.docs[item.id][item.seq] = item.doc
                subscriber.positions[item.id] = (item.epoch, item.seq)
                if time.monotonic() > leave_at and not stop_event.is_set():
                    return

        task = asyncio.ensure_future(consume())
        stopper = asyncio.ensure_future(stop_event.wait())
        await asyncio.wait([task, stopper], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        for pending in (task, stopper):
            pending.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
        subscriber.moves += 1


# --- observation and checks --------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def objects(s3: Any) -> int:
    paginator = s3.get_paginator("list_objects_v2")
    return sum(page.get("KeyCount", 0) for page in paginator.paginate(Bucket=BUCKET))


async def watch(
    pids: dict[str, int], redis: Redis, s3: Any, stop: asyncio.Event, rows: list[dict[str, float]]
) -> None:
    started = time.monotonic()
    while not stop.is_set():
        row = {name: rss_mib(pid) for name, pid in pids.items()}
        row["redis"] = int(redis.info("memory")["used_memory"]) / 2**20
        try:
            row["objects"] = await asyncio.to_thread(objects, s3)
            put_started = time.monotonic()
            await asyncio.to_thread(s3.put_object, Bucket=BUCKET, Key="probe", Body=b"x" * 65536)
            s3_figures = f"{row['objects']:.0f} objects, a 64 KiB PUT "
            s3_figures += f"{(time.monotonic() - put_started) * 1000:.0f} ms"
        except Exception as exc:  # moto itself can fail under load (500 to a LIST): go on
            s3_figures = f"the S3 probe failed: {str(exc)[:120]}"
        row["t"] = time.monotonic() - started
        rows.append(row)
        print(
            f"  {row['t']:5.0f} s  RSS A {row['A']:.0f} MiB, B {row['B']:.0f} MiB; "
            f"Redis {row['redis']:.0f} MiB; {s3_figures}",
            flush=True,
        )
        with_timeout = asyncio.ensure_future(stop.wait())
        await asyncio.wait([with_timeout], timeout=10)
        with_timeout.cancel()


async def drained(queue_name: str, within: float) -> bool:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            queue = await channel.declare_queue(queue_name, passive=True)
            if queue.declaration_result.message_count == 0:
                return True
            await asyncio.sleep(0.5)
    return False


async def check_variable(
    http: httpx.AsyncClient, variable: str, sent: dict[int, tuple[int, dict[str, Any]]]
) -> tuple[int, list[int]]:
    """History and latest of one variable against what was acknowledged; returns its history
    length and seqs."""
    answer = await http.get(f"/history/{variable}", params={"format": "ndjson"})
    if answer.status_code != 200:
        problem(f"GET /history/{variable}: {answer.status_code} {answer.text[:200]}")
        return 0, []
    entries = [orjson.loads(line) for line in answer.content.splitlines() if line]
    seqs = [entry["seq"] for entry in entries]
    if len(set(seqs)) != len(seqs):
        problem(f"{variable}: a seq appears twice in its history")
    numbers = [entry["doc"]["n"] for entry in entries]
    if len(set(numbers)) != len(numbers):
        problem(f"{variable}: {len(numbers) - len(set(numbers))} packets twice in history")
    missing = set(sent) - set(numbers)
    if missing:
        problem(f"{variable}: {len(missing)} acknowledged packets missing, e.g. {min(missing)}")
    for entry in entries:
        expected = sent.get(entry["doc"]["n"])
        if expected is not None and entry["ts"] != expected[0]:
            problem(f"{variable}: packet {entry['doc']['n']} has time {entry['ts']}")
            break
    newest = max(sent.values(), key=lambda item: item[0])[1]["n"] if sent else None
    latest = await http.get(f"/latest/{variable}")
    if latest.status_code != 200 or latest.json().get("n") != newest:
        problem(f"{variable}: /latest is {latest.text[:120]}, not packet {newest}")
    return len(entries), sorted(seqs)


def check_subscriber(subscriber: Subscriber, history: dict[str, list[int]]) -> None:
    """Each history seq exactly once, in order. A packet sent again after its first copy left
    Redis takes a new seq (the write looks for the copy in Redis only): a subscriber that was
    live then gets it under that seq, which history reads drop; any such extra entry must hold
    a document of the variable's history."""
    for variable in subscriber.ids:
        got = subscriber.seqs.get(variable, [])
        wanted = history.get(variable, [])
        extra = sorted(set(got) - set(wanted))
        known = {doc["n"] for seq, doc in subscriber.docs[variable].items() if seq in wanted}
        foreign = [seq for seq in extra if subscriber.docs[variable][seq]["n"] not in known]
        missing = len(set(wanted) - set(got))
        doubled = len(got) - len(set(got))
        if missing or doubled or foreign or got != sorted(got):
            problem(
                f"subscriber on {variable}: {len(got)} entries, {doubled} doubled, "
                f"{missing} missing, {len(foreign)} not in history, in order: {got == sorted(got)}"
            )
        subscriber.redelivered += len(extra)


# --- the run -----------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, urls: dict[str, str], pids: dict[str, int]) -> None:
    redis = Redis.from_url(REDIS_URL)
    s3 = boto3.client("s3")
    stop_at = time.monotonic() + args.minutes * 60
    edges = {"amqp": Sent(), "http": Sent(), "es": Sent()}
    rng = random.Random(3)
    subscribers = [
        Subscriber([f"soak/{edge}/{i}" for edge in edges for i in rng.sample(range(VARIABLES), 10)])
        for _ in range(args.subscribers)
    ]
    stop_watch, stop_subscribers = asyncio.Event(), asyncio.Event()
    rows: list[dict[str, float]] = []
    ws_urls = [urls["A"].replace("http", "ws") + "/ws", urls["B"].replace("http", "ws") + "/ws"]
    watcher = asyncio.ensure_future(watch(pids, redis, s3, stop_watch, rows))
    followers = [asyncio.ensure_future(follow(s, ws_urls, stop_subscribers)) for s in subscribers]

    async def merge_half_way() -> None:
        await asyncio.sleep(args.minutes * 30)
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *ours_command("merge"),
            "--all",
            env=args.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        print(
            f"  merge --all beside the writers: exit {process.returncode} in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
        if process.returncode != 0:
            problem(f"merge --all failed: {output.decode()[-500:]}")

    rate = args.rate
    await asyncio.gather(
        amqp_producer(stop_at, rate, args.session_seconds, edges["amqp"]),
        http_producer(urls["B"], stop_at, rate, edges["http"]),
        asyncio.to_thread(es_producer, urls["ES"], stop_at, rate, edges["es"]),
        merge_half_way(),
    )
    for name, sent in edges.items():
        print(
            f"  {name}: {sent.count} packets acknowledged ({sent.late} late, {sent.resent} sent "
            "again)",
            flush=True,
        )
    if not await drained(QUEUE, 120):
        problem("the AMQP queue did not drain within 120 s")
    await asyncio.sleep(3)  # the consumer's last batch, taken from the queue but not yet acked

    async with httpx.AsyncClient(base_url=urls["A"], timeout=120) as http:
        history: dict[str, list[int]] = {}
        total = 0
        for name, sent in edges.items():
            for i in range(VARIABLES):
                variable = f"soak/{name}/{i}"
                count, history[variable] = await check_variable(
                    http, variable, sent.packets.get(variable, {})
                )
                total += count
        print(f"  history: {total} entries over {len(history)} variables checked", flush=True)

    # Subscribers have a minute to catch up with the final history.
    for _ in range(120):
        if all(
            history[v] and s.seqs.get(v, [0])[-1] >= history[v][-1]
            for s in subscribers
            for v in s.ids
        ):
            break
        await asyncio.sleep(0.5)
    stop_subscribers.set()
    await asyncio.gather(*followers, return_exceptions=True)
    for subscriber in subscribers:
        check_subscriber(subscriber, history)
    moves = sum(s.moves for s in subscribers)
    extra = sum(s.redelivered for s in subscribers)
    print(
        f"  {len(subscribers)} subscribers checked after {moves} moves between servers "
        f"({extra} entries of packets sent again after they left Redis)"
    )
    stop_watch.set()
    await watcher
    first = next((row for row in rows if row["t"] >= 60), rows[0])
    for name in ("A", "B"):
        peak = max(row[name] for row in rows)
        print(
            f"  RSS of {name}: {first[name]:.0f} MiB after {first['t']:.0f} s, "
            f"{rows[-1][name]:.0f} at the end ({rows[-1]['t']:.0f} s), peak {peak:.0f}"
        )
    redis.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--rate", type=int, default=400, help="packets/s of each edge")
    parser.add_argument("--session-seconds", type=float, default=30)
    parser.add_argument("--subscribers", type=int, default=6)
    parser.add_argument("--offload-mib", type=int, default=8)
    args = parser.parse_args()
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    moto = ExitStack()
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL_S3=moto.enter_context(moto_server()))
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    budget = int(redis.info("memory")["used_memory"]) + args.offload_mib * 2**20
    ports = {"A": free_port(), "B": free_port(), "ES": free_port()}
    try:
        with tempfile.TemporaryDirectory() as data_dir, ExitStack() as stack:
            base = dict(
                os.environ,
                REDIS_URL=REDIS_URL,
                OBJECTS_URL=f"s3://{BUCKET}/soak",
                LATEST_DATA_DIR=data_dir,
                LATEST_LOG_LEVEL="warning",
                LATEST_OFFLOAD_MAX_BYTES=str(budget),
                LATEST_ES_PORT="0",
                LATEST_TIME_FIELD="ts",
                LATEST_EXCHANGE=EXCHANGE,
                LATEST_QUEUE=QUEUE,
                LATEST_DEAD_LETTER_EXCHANGE="soak.dlx",
                LATEST_DEAD_LETTER_QUEUE="soak.dlq",
            )
            base.pop("AMQP_URL", None)
            args.env = base
            a = stack.enter_context(
                server(
                    "server A",
                    ours_command(),
                    dict(base, LATEST_PORT=str(ports["A"]), AMQP_URL=AMQP_URL),
                    f"http://{HOST}:{ports['A']}/readyz",
                )
            )
            b = stack.enter_context(
                server(
                    "server B",
                    ours_command(),
                    dict(base, LATEST_PORT=str(ports["B"]), LATEST_ES_PORT=str(ports["ES"])),
                    [f"http://{HOST}:{ports['B']}/readyz", f"http://{HOST}:{ports['ES']}/"],
                )
            )
            urls = {name: f"http://{HOST}:{port}" for name, port in ports.items()}
            print(
                f"{args.minutes:g} min, {args.rate} packets/s per edge, offload budget "
                f"{budget / 2**20:.0f} MiB of Redis memory",
                flush=True,
            )
            asyncio.run(soak(args, urls, {"A": a.pid, "B": b.pid}))
    finally:
        redis.flushdb()
        moto.close()
        asyncio.run(delete_amqp())
    if problems:
        print(f"soak: FAILED ({len(problems)} problems)")
        sys.exit(1)
    print("soak: OK")


async def delete_amqp() -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (QUEUE, "soak.dlq"):
            await channel.queue_delete(queue)
        for exchange in (EXCHANGE, "soak.dlx"):
            await channel.exchange_delete(exchange)


if __name__ == "__main__":
    main()
