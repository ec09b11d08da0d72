"""Websocket subscriptions under fire: real `latest-server serve` processes (or uvicorn in a
thread), the real Redis, S3 on moto's server, the `websockets` client library through
``ingest_client.subscribe``. Each test checks that every client got every seq exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from redis.asyncio import Redis, RedisCluster

from ingest_client import Entry, Reset, subscribe
from latest_server import keys
from latest_server.packets import Packet, PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests import test_faults
from tests.conftest import S3_BUCKET, Churn, Relay, ServerThread, free_port, unique, ws_url
from tests.services import redis_argv
from tests.test_faults import Spawn, latest_server, server_env

spawn = test_faults.spawn  # the fixture: processes killed and reaped at teardown

PARSER = PacketParser(Settings())
T0 = 1_700_000_000


def packet(variable: str, n: int, pad: int = 0) -> Packet:
    document = {"id": variable, "ts": T0 + n / 1000, "n": n, "pad": "x" * pad}
    item = PARSER.parse_document(0, document)
    assert isinstance(item, Packet)
    return item


@pytest.fixture
async def stores(settings: Settings, s3_endpoint: str, redis: Redis) -> AsyncIterator[Resources]:
    objects = f"s3://latest-test/{random.getrandbits(40):x}"
    opened = await Resources.open(dataclasses.replace(settings, objects_url=objects))
    await opened.trigger.close()
    yield opened
    await opened.close()


class Producer:
    """Writes batches to a few variables through the real write path and records every seq."""

    def __init__(self, stores: Resources, variables: list[str], pad: int = 0) -> None:
        self.stores = stores
        self.variables = variables
        self.pad = pad
        self.n = 0
        self.seqs: dict[str, dict[int, int]] = {v: {} for v in variables}  # seq → ts µs

    async def write(self, per_variable: int) -> None:
        batch = [
            packet(v, self.n + i, self.pad) for i in range(per_variable) for v in self.variables
        ]
        self.n += per_variable
        result = await self.stores.ingestor.write_batch(batch)
        for p, outcome in zip(batch, result.outcomes, strict=True):
            assert outcome.seq > 0
            self.seqs[p.variable_id][outcome.seq] = p.ts_us

    def top(self, variable: str) -> int:
        return max(self.seqs[variable], default=0)


class Client:
    """One subscriber: a mode, a list of server URLs it moves between when it disconnects."""

    def __init__(self, name: str, urls: list[str], variables: list[str], **start: Any) -> None:
        self.name = name
        self.urls = urls
        self.variables = variables
        self.start = start
        self.got: dict[str, list[int]] = {v: [] for v in variables}
        self.ts: dict[str, list[int]] = {v: [] for v in variables}
        self.resets: list[Reset] = []
        self.positions: dict[str, tuple[int, int]] = {}
        self.disconnects = 0
        self.state = "new"

    async def run(
        self, rng: random.Random, disconnect_every: int | None, done: asyncio.Event
    ) -> None:
        url_index = 0
        first = True
        while True:
            options = dict(self.start)
            if not first:  # resume where each variable was; the others start as asked
                options["since"] = {**self.start.get("since", {}), **self.positions}
            first = False
            count = 0
            dropped = False
            stream = subscribe(self.urls[url_index % len(self.urls)], self.variables, **options)
            self.state = "reading"
            try:
                async for item in stream:
                    self.state = "got"
                    if isinstance(item, Reset):
                        self.resets.append(item)
                        continue
                    assert isinstance(item, Entry)
                    self.got[item.id].append(item.seq)
                    self.ts[item.id].append(item.ts)
                    self.positions[item.id] = (item.epoch, item.seq)
                    count += 1
                    if disconnect_every and count >= disconnect_every and not done.is_set():
                        dropped = True
                        break  # drop the connection and resume elsewhere with since
            except BaseException as exc:
                self.state = f"failed: {exc!r}"
                raise
            finally:
                self.state += ", closing"
                await stream.aclose()
                self.state += ", closed"
            if not dropped:
                return
            self.disconnects += 1
            url_index += 1
            await asyncio.sleep(rng.random() / 10)


async def wait_until_complete(clients: list[Client], producer: Producer, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        behind = [
            (c.name, c.state, c.disconnects, v, (c.got[v] or [0])[-1], producer.top(v))
            for c in clients
            for v in c.variables
            if (c.got[v] or [0])[-1] < producer.top(v)
        ]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"clients still behind (client, variable, got, top): {behind[:8]}")
        await asyncio.sleep(0.1)


async def cancel(*tasks: asyncio.Task[Any]) -> None:
    """Stop the clients' tasks and wait until they have."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def assert_exactly_once(client: Client, producer: Producer, since: dict[str, int]) -> None:
    for v in client.variables:
        got = client.got[v]
        assert len(got) == len(set(got)), f"{client.name} got duplicates of {v}"
        expected = list(range(since.get(v, 0) + 1, producer.top(v) + 1))
        assert got == expected, f"{client.name}/{v}: {len(got)} seqs, gaps or order wrong"


async def test_clients_subscribing_resuming_and_moving_between_servers_get_every_seq_once(
    stores: Resources, settings: Settings, spawn: Spawn, tmp_path: Path
) -> None:
    """A producer writes continuously while offload jobs move everything to S3 back to back and
    merges run; clients subscribe at random moments with from, since and latest to two server
    processes, and some drop their connection every few entries and resume on the other one."""
    rng = random.Random(11)
    variables = ["p/a", "p/b", "p/c"]
    producer = Producer(stores, variables)
    stores.offloader.max_bytes = 1  # every job moves everything
    ports = [free_port(), free_port()]
    env = server_env(
        stores.settings,
        LATEST_ES_PORT="0",
        LATEST_WS_PROBE_INTERVAL="0.5",
        LATEST_OFFLOAD_CHECK_INTERVAL="3600",  # the test's own jobs move data
    )
    for name in (
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    ):
        env[name] = os.environ[name]
    for i, port in enumerate(ports):
        latest_server(
            spawn,
            "serve",
            {**env, "LATEST_PORT": str(port), "LATEST_DATA_DIR": str(tmp_path / f"d{i}")},
            f"serve{i}",
        )
    urls = [f"ws://127.0.0.1:{port}/ws" for port in ports]
    async with httpx.AsyncClient() as http:
        for port in ports:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"server on {port} did not start")

    done = asyncio.Event()
    churn = Churn(stores, variables, rng, done)

    async def produce() -> None:
        for _ in range(300):
            await producer.write(rng.randint(1, 5))
            await asyncio.sleep(0.01)
        done.set()

    clients: list[Client] = []
    starts: dict[str, dict[str, int]] = {}
    from_us: dict[str, int] = {}
    tasks: list[asyncio.Task[None]] = []

    async def subscribers() -> None:
        for i in range(8):
            await asyncio.sleep(rng.random() * 0.4)
            kind = ["all", "from", "since", "latest"][i % 4]
            name = f"{kind}{i}"
            start: dict[str, Any] = {}
            if kind == "from":
                at = T0 * 1_000_000 + producer.n * 1000 // 2  # half of what is written so far
                start["from_time"] = at
                from_us[name] = at
            elif kind == "since":
                marks = {v: producer.top(v) // 3 for v in variables}
                start["since"] = {v: (await epoch_of(stores, v), s) for v, s in marks.items()}
                starts[name] = marks
            elif kind == "latest":
                start["latest"] = True
            client = Client(name, urls[i % 2 :] + urls[: i % 2], variables, **start)
            clients.append(client)
            # by index, not drawn: the shared rng's draws depend on the tasks' timing
            every = (None, 40, 90)[i % 3]
            tasks.append(asyncio.create_task(client.run(rng, every, done)))

    await asyncio.gather(
        produce(), churn.offload(0.05), churn.merge(0.3, pause_first=True), subscribers()
    )
    await wait_until_complete(clients, producer, within=60)
    await cancel(*tasks)
    assert churn.moved_entries > 100 and churn.merged > 1, (churn.moved_entries, churn.merged)
    assert sum(c.disconnects for c in clients) > 3

    for client in clients:
        assert not client.resets, client.resets
        if client.name.startswith("from"):
            for v in variables:
                wanted = [
                    s for s, ts in sorted(producer.seqs[v].items()) if ts >= from_us[client.name]
                ]
                assert client.got[v] == wanted, f"{client.name}/{v}"
        elif client.name.startswith("latest"):
            for v in variables:
                got = client.got[v]
                assert len(got) == len(set(got))
                first, rest = got[0], got[1:]
                assert rest == list(range(rest[0], producer.top(v) + 1)) if rest else True
                assert not rest or first < rest[0]
        else:
            assert_exactly_once(client, producer, starts.get(client.name, {}))


async def epoch_of(stores: Resources, variable: str) -> int:
    return int(await stores.redis.hget(keys.meta(keys.key_for(variable)), "e") or 0)


async def kill_feed_connections(redis: Redis | RedisCluster) -> int:
    """CLIENT KILL every pub/sub connection on the test database (the servers' live feeds); on
    the tests' cluster, every pub/sub connection of every primary."""
    if isinstance(redis, RedisCluster):
        return sum(
            [
                int(
                    await redis.execute_command(
                        "CLIENT", "KILL", "TYPE", "pubsub", target_nodes=node
                    )
                )
                for node in redis.get_primaries()
            ]
        )
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    killed = 0
    for client in await redis.client_list():
        if int(client.get("db", -1)) == db and (
            int(client.get("ssub", 0) or 0) > 0 or "subscribe" in client.get("cmd", "")
        ):
            await redis.client_kill_filter(_id=client["id"])
            killed += 1
    return killed


@pytest.mark.redis_both
async def test_killing_the_pubsub_connection_mid_stream_loses_and_doubles_nothing(
    stores: Resources, http_server: Callable[..., ServerThread]
) -> None:
    server = http_server(stores.settings, ws_probe_interval=30.0)  # the refill, not the probe
    url = ws_url(server)
    variables = ["k/a", "k/b"]
    producer = Producer(stores, variables)
    await producer.write(50)
    done = asyncio.Event()
    clients = [Client(f"c{i}", [url], variables) for i in range(3)]
    tasks = [
        asyncio.create_task(c.run(random.Random(i), None, done)) for i, c in enumerate(clients)
    ]
    await wait_until_complete(clients, producer, within=20)
    killed = 0
    for _ in range(5):
        for _ in range(20):
            await producer.write(2)
            await asyncio.sleep(0.005)
        killed += await kill_feed_connections(stores.redis)
        for _ in range(20):  # written while the feed reconnects: only the stores have them
            await producer.write(2)
            await asyncio.sleep(0.005)
    assert killed >= 5
    await wait_until_complete(clients, producer, within=30)
    done.set()
    await cancel(*tasks)
    for client in clients:
        assert_exactly_once(client, producer, {})


async def test_a_slow_client_catches_up_from_the_stores_while_fast_ones_keep_up(
    stores: Resources, http_server: Callable[..., ServerThread]
) -> None:
    url = ws_url(http_server(stores.settings, ws_queue_bytes=32_768, ws_send_timeout=30.0))
    variables = ["s/a", "s/b"]
    producer = Producer(stores, variables, pad=500)
    done = asyncio.Event()
    fast = [Client(f"fast{i}", [url], variables) for i in range(3)]
    tasks = [asyncio.create_task(c.run(random.Random(i), None, done)) for i, c in enumerate(fast)]
    slow_got: list[tuple[str, int]] = []

    async def slow() -> None:
        async with websockets.connect(url, max_queue=2) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "ids": variables}).decode())
            while True:
                frame = orjson.loads(await ws.recv())
                entries = (
                    frame["entries"]
                    if frame["type"] == "backlog"
                    else [frame]
                    if frame["type"] == "entry"
                    else []
                )
                slow_got.extend((frame["id"], e["seq"]) for e in entries)
                await asyncio.sleep(0.01)  # far slower than the producer

    slow_task = asyncio.create_task(slow())
    await asyncio.sleep(0.3)
    lags = []
    for _ in range(60):
        await producer.write(10)
        await asyncio.sleep(0.02)
        # fast clients keep up: a few batches behind at most
        lags.append(max(producer.top(v) - (c.got[v] or [0])[-1] for c in fast for v in variables))
    await wait_until_complete(fast, producer, within=10)
    assert sorted(lags)[len(lags) // 2] <= 40, lags  # median lag in entries
    slow_seqs = {v: [s for i, s in slow_got if i == v] for v in variables}
    assert any(slow_seqs[v][-1:] < [producer.top(v)] for v in variables), "the slow client kept up"
    deadline = time.monotonic() + 60
    while any((slow_seqs[v] or [0])[-1] < producer.top(v) for v in variables):
        assert time.monotonic() < deadline, "the slow client never caught up"
        await asyncio.sleep(0.2)
        slow_seqs = {v: [s for i, s in slow_got if i == v] for v in variables}
    done.set()
    await cancel(slow_task, *tasks)
    for v in variables:
        assert slow_seqs[v] == list(range(1, producer.top(v) + 1)), f"slow/{v}"
    for client in fast:
        assert_exactly_once(client, producer, {})


async def test_a_client_that_stops_reading_is_closed_with_4008_and_resumes_losing_nothing(
    stores: Resources, http_server: Callable[..., ServerThread]
) -> None:
    server = http_server(stores.settings, ws_queue_bytes=16_384, ws_send_timeout=1.0)
    url = ws_url(server)
    producer = Producer(stores, ["z/a"], pad=2000)
    got: list[int] = []
    epoch = 0
    # A small receive buffer, so that what the kernel holds for the client is small next to
    # what the producer writes.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    # No compression: the padding would shrink a hundredfold and fit in the socket buffers.
    async with websockets.connect(url, sock=sock, max_queue=1, compression=None) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "ids": ["z/a"]}).decode())
        while True:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == "live":
                break
        for _ in range(100):  # ~10 MB while the client reads nothing: socket buffers fill up
            await producer.write(50)
        await asyncio.sleep(3)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frame = orjson.loads(await ws.recv())
                for e in frame.get("entries", [frame] if frame["type"] == "entry" else []):
                    got.append(e["seq"])
                    epoch = e["epoch"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008, closed.value
    assert "since" in closed.value.rcvd.reason
    assert got == list(range(1, len(got) + 1))
    assert len(got) < producer.top("z/a")
    async with websockets.connect(url) as ws:
        since = {"z/a": [epoch, got[-1]]} if got else None
        request = {"op": "subscribe", "ids": ["z/a"], **({"since": since} if since else {})}
        await ws.send(orjson.dumps(request).decode())
        while True:
            frame = orjson.loads(await ws.recv())
            got.extend(e["seq"] for e in frame.get("entries", []))
            if frame["type"] == "live":
                break
    assert got == list(range(1, producer.top("z/a") + 1))


async def test_redis_restarting_without_its_data_gives_subscribers_a_reset_never_a_gap(
    settings: Settings, spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    argv = redis_argv(port, tmp_path)
    spawn(argv, dict(os.environ), "redis-1")
    private = Redis.from_url(redis_url)
    for _ in range(100):
        with contextlib.suppress(Exception):  # redis' ConnectionError until it listens
            if await private.ping():
                break
        await asyncio.sleep(0.1)
    config = dataclasses.replace(
        settings,
        redis_url=redis_url,
        objects_url=(tmp_path / "objects").as_uri(),
        ws_probe_interval=0.5,
    )
    stores = await Resources.open(config)
    try:
        with ServerThread(config) as server:
            url = ws_url(server)
            producer = Producer(stores, ["r/a"])
            await producer.write(20)
            client = Client("c", [url], ["r/a"])
            task = asyncio.create_task(client.run(random.Random(1), None, asyncio.Event()))
            await wait_until_complete([client], producer, within=20)
            old_epoch = client.positions["r/a"][0]
            with contextlib.suppress(Exception):
                await private.shutdown(nosave=True)
            spawn(argv, dict(os.environ), "redis-2")  # empty: its data is gone
            for _ in range(100):
                with contextlib.suppress(Exception):
                    if await private.ping():
                        break
                await asyncio.sleep(0.1)
            producer.seqs["r/a"].clear()
            for _ in range(50):
                with contextlib.suppress(Exception):
                    await producer.write(5)
                    break
                await asyncio.sleep(0.1)
            await producer.write(5)
            deadline = time.monotonic() + 30
            while not (client.resets and client.positions["r/a"] == (client.resets[0].epoch, 10)):
                assert time.monotonic() < deadline, (client.resets, client.positions)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # nothing more may come
            await cancel(task)
    finally:
        await stores.close()
        await private.aclose()
    assert [(r.lost, r.epoch != old_epoch) for r in client.resets] == [(None, True)]
    new_epoch = client.resets[0].epoch
    assert client.positions["r/a"][0] == new_epoch
    assert client.got["r/a"] == [*range(1, 21), *range(1, producer.top("r/a") + 1)]


async def test_subscribers_wait_through_an_s3_outage_then_get_every_seq_once(
    settings: Settings, s3_relay: Relay, http_server: Callable[..., ServerThread]
) -> None:
    """S3 (a relay to moto) is cut while clients subscribe from the start of histories that are
    mostly in transfer objects. Their catch-up reads fail (StoreUnavailable once the tries are
    spent), and the subscriptions wait and read again from where they were: no error frame, no
    close. Once S3 is back, every client gets every seq exactly once, in order, including those
    written during the outage."""
    config = dataclasses.replace(
        settings,
        objects_url=f"s3://{S3_BUCKET}/{unique('outage')}",
        s3_timeout=0.5,
        s3_attempts=2,
    )
    stores = await Resources.open(config)
    try:
        await stores.trigger.close()
        producer = Producer(stores, ["o/a", "o/b"])
        await producer.write(100)
        report = await stores.offloader.run_job(everything=True)
        assert report is not None and report.entries == 200
        await producer.write(20)
        url = ws_url(http_server(config))
        s3_relay.cut()
        clients = [Client(f"c{i}", [url], producer.variables) for i in range(2)]
        done = asyncio.Event()
        tasks = [
            asyncio.create_task(c.run(random.Random(i), None, done)) for i, c in enumerate(clients)
        ]
        await producer.write(10)  # during the outage: Redis takes writes
        await asyncio.sleep(3)  # every catch-up read fails meanwhile
        for client in clients:
            assert client.state == "reading", client.state  # subscribed, waiting, not failed
            assert not any(client.got.values())  # each history begins in S3
        s3_relay.up()
        await wait_until_complete(clients, producer, within=30)
        done.set()
        await cancel(*tasks)
    finally:
        await stores.close()
    for client in clients:
        assert_exactly_once(client, producer, {})
