"""Faults, end to end, on the real ``latest-server`` process: SIGKILLed mid-run, its Redis stopped
mid-run, and the README's first command (no REDIS_URL: the embedded Valkey). Nothing published may
be lost, nothing may be stored twice, and the latest value must be the newest packet."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import psutil
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from latest_server import keys
from latest_server.settings import Settings
from tests.conftest import AMQP_URL, free_port, wait_for
from tests.services import redis_argv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0_MS = 1_700_000_000_000
PUBLISH_CHUNK = 250  # publishes in flight at once; chunks are confirmed one after the other
QUIET = 2.0  # seconds without progress that mean "done" once everything is written
STUCK = 10.0  # ... and that mean "stuck" otherwise (the consumer's Redis backoff is at most 5 s)
OFFSETS = [
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=1)),
    timezone(timedelta(hours=-9, minutes=-30)),
    timezone(timedelta(0)),
]


# --- processes ---


class Child:
    """A process started by a test. Its output goes to files (a full pipe would block it)."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr"
        with open(workdir / f"{name}.stdout", "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self, lines: int = 25) -> str:
        state = "running" if self.alive() else f"exited with {self.process.returncode}"
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"{self.name} (pid {self.pid}) {state}; stderr ends with:\n{tail}"

    def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    async def exited(self, within: float) -> int:
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"did not exit within {within}s: {self.describe()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    async def terminate(self, within: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await self.exited(within)


Spawn = Callable[[list[str], dict[str, str], str], Child]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(argv, env, name)`` starts a process; every one is SIGKILLed (if still running) and
    reaped at teardown, whatever happened. Request it after ``amqp``/``redis`` so that it is torn
    down before them."""
    children: list[Child] = []

    def start(argv: list[str], env: dict[str, str], name: str) -> Child:
        child = Child(argv, env, tmp_path, f"{len(children)}-{name}")
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in reversed(children):
            child.kill()


def server_env(settings: Settings | None = None, **extra: str) -> dict[str, str]:
    """This environment without any latest-server setting, plus those of ``settings``."""
    setting_names = {spec.metadata["env"] for spec in dataclasses.fields(Settings)}
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in setting_names and not name.startswith("LATEST_")
    }
    if settings is not None:
        for spec in dataclasses.fields(Settings):
            value = getattr(settings, spec.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[spec.metadata["env"]] = text
    env.update(extra)
    return env


def latest_server(spawn: Spawn, command: str, env: dict[str, str], name: str) -> Child:
    return spawn([sys.executable, "-m", "latest_server", command], env, name)


async def until(
    what: str,
    condition: Callable[[], Awaitable[Any] | Any],
    within: float,
    *children: Child,
) -> None:
    """``wait_for`` that fails at once, with the process's log, when a watched process dies."""

    async def check() -> Any:
        for child in children:
            if not child.alive():
                raise AssertionError(f"while waiting for {what}: {child.describe()}")
        result = condition()
        return await result if asyncio.iscoroutine(result) else result

    try:
        await wait_for(check, within)
    except AssertionError as exc:
        if "condition not met" not in str(exc):
            raise
        states = "\n".join(child.describe() for child in children)
        raise AssertionError(f"{what}: not within {within}s\n{states}") from None


async def redis_answers(url: str) -> bool:
    try:
        async with Redis.from_url(url, socket_connect_timeout=1) as client:
            return bool(await client.ping())
    except (RedisConnectionError, OSError):
        return False


# --- RabbitMQ ---


async def declare_topology(channel: Any, s: Settings) -> Any:
    """Exchanges, queues and bindings exactly as ``Consumer.start`` declares them."""
    exchange = await channel.declare_exchange(s.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    dead_letters = await channel.declare_exchange(
        s.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlq = await channel.declare_queue(s.dead_letter_queue, durable=True)
    await dlq.bind(dead_letters, "#")
    queue = await channel.declare_queue(s.queue, durable=True)
    for binding in s.binding_keys:
        await queue.bind(exchange, binding)
    return exchange


async def queue_state(channel: Any, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue (unacknowledged messages are not counted)."""
    queue = await channel.declare_queue(name, durable=True)
    result = queue.declaration_result
    return int(result.message_count), int(result.consumer_count)


async def queue_holds(channel: Any, queue: str, count: int) -> bool:
    return await queue_state(channel, queue) == (count, 0)


async def has_consumer(channel: Any, queue: str) -> bool:
    return (await queue_state(channel, queue))[1] > 0


async def publish_in_order(exchange_name: str, bodies: list[bytes]) -> None:
    """Publish on a channel of its own without confirms (twice as fast): one channel keeps the
    order. The caller checks that they all arrived (the queue's message count)."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        exchange = await channel.get_exchange(exchange_name)
        for body in bodies:
            await exchange.publish(aio_pika.Message(body), routing_key="data")


async def publish_all(exchange: Any, bodies: list[bytes]) -> None:
    """Publish with confirms, ``PUBLISH_CHUNK`` at a time: a chunk is confirmed (so queued, in
    order) before the next one is sent."""
    for start in range(0, len(bodies), PUBLISH_CHUNK):
        chunk = bodies[start : start + PUBLISH_CHUNK]
        await asyncio.gather(
            *(exchange.publish(aio_pika.Message(body), routing_key="data") for body in chunk)
        )


# --- the workload and what the store must hold after it ---


@dataclasses.dataclass(repr=False)
class Workload:
    bodies: list[bytes]  # in publish order
    latest: dict[str, tuple[int, bytes]]  # variable -> (ts µs, doc) that must be the latest
    history: dict[str, set[tuple[int, bytes]]]  # variable -> distinct (ts µs, doc) published
    kinds: Counter[str]  # how many messages of each kind were generated

    @property
    def distinct(self) -> int:
        return sum(len(entries) for entries in self.history.values())

    @property
    def tied_latest(self) -> int:
        """Variables whose latest time was also published later with another document."""
        return sum(
            1
            for variable, (ts_us, doc) in self.latest.items()
            if any(t == ts_us and d != doc for t, d in self.history[variable])
        )

    def check(self) -> None:
        """The workload has every kind of trouble it claims to have."""
        assert len(self.history) > 0.9 * int(self.kinds["variables"])
        for kind in ("in_order", "out_of_order", "duplicate", "tie"):
            assert self.kinds[kind] > 0.005 * len(self.bodies), (kind, self.kinds)
        assert self.tied_latest > 0.05 * len(self.latest), "few ties on a latest time"
        assert len(self.bodies) > self.distinct > 0.9 * len(self.bodies)


def _render_time(ts_ms: int, rng: random.Random) -> int | str:
    kind = rng.randrange(3)
    if kind == 0:
        return ts_ms  # epoch milliseconds
    moment = EPOCH + timedelta(milliseconds=ts_ms)
    if kind == 1:
        return moment.astimezone(rng.choice(OFFSETS)).isoformat(timespec="milliseconds")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_workload(messages: int, variables: int, seed: int) -> Workload:
    """One packet per message: mostly in time order per variable, ~12% out of time order, ~5%
    exact duplicates of an earlier message, ~3% ties (another document with the time of an
    earlier packet of the variable, mostly its newest); in the last 5% times stop advancing, so
    many final latest times get ties. A tie is published at least one confirmed chunk after the
    packet it ties with, so "first published" is unambiguous (version_type external: the first
    one stays the latest)."""
    rng = random.Random(seed)
    kinds: Counter[str] = Counter(variables=variables)
    clock = {f"v{i}": T0_MS + rng.randrange(86_400_000) for i in range(variables)}
    newest: dict[str, tuple[int, int]] = {}  # variable -> (greatest ts ms, index published at)
    times: dict[str, list[tuple[int, int]]] = {}  # variable -> every (ts ms, index published at)
    published: list[tuple[str, int, bytes]] = []  # (variable, ts µs, body)
    for index in range(messages):
        roll = rng.random()
        if roll < 0.05 and published:
            published.append(published[rng.randrange(len(published))])  # exact duplicate
            kinds["duplicate"] += 1
            continue
        variable = f"v{rng.randrange(variables)}"
        top = newest.get(variable)
        earlier = [ts for ts, at in times.get(variable, []) if at <= index - PUBLISH_CHUNK]
        settling = index >= messages * 0.95  # times stop advancing: ties on the final latest
        if earlier and (roll < 0.08 or (settling and roll < 0.5)):
            # the time of an earlier packet, another document: mostly the newest time
            ts_ms = top[0] if top and top[1] <= index - PUBLISH_CHUNK else rng.choice(earlier)
            kinds["tie"] += 1
        elif top is not None and (roll < 0.20 or settling):
            ts_ms = top[0] - rng.randint(1, 600_000)  # older than the newest
            kinds["out_of_order"] += 1
        else:
            clock[variable] += rng.randint(1, 60_000)
            ts_ms = clock[variable]
            kinds["in_order"] += 1
        if top is None or ts_ms > top[0]:
            newest[variable] = (ts_ms, index)
        times.setdefault(variable, []).append((ts_ms, index))
        doc = {
            "id": variable,
            "observationDateTime": _render_time(ts_ms, rng),
            "value": round(rng.uniform(-50, 50), 3),
            "n": index,
        }
        published.append((variable, ts_ms * 1000, orjson.dumps(doc)))

    latest: dict[str, tuple[int, bytes]] = {}
    history: dict[str, set[tuple[int, bytes]]] = {}
    for variable, ts_us, body in published:
        history.setdefault(variable, set()).add((ts_us, body))
        if variable not in latest or ts_us > latest[variable][0]:
            latest[variable] = (ts_us, body)
    return Workload([body for _, _, body in published], latest, history, kinds)


async def history_total(redis: Redis) -> int:
    """Sum of XLEN over every ``lv:*:h`` stream of the database."""
    names = [name async for name in redis.scan_iter(match="lv:*:h", count=1000, _type="STREAM")]
    if not names:
        return 0
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.xlen(name)
    return sum(await pipe.execute())


async def more_than(redis: Redis, count: int) -> bool:
    return await history_total(redis) > count


async def assert_store_holds(redis: Redis, work: Workload) -> None:
    total, expected = await history_total(redis), work.distinct
    assert total == expected, (
        f"{total} history entries for {expected} distinct packets published "
        f"({len(work.bodies)} messages)"
    )
    variables = sorted(work.history)
    pipe = redis.pipeline(transaction=False)
    for variable in variables:
        key = keys.key_for(variable)
        pipe.hmget(keys.latest(key), "v", "doc")
        pipe.xrange(keys.history(key))
    replies = await pipe.execute()
    problems: list[str] = []
    for variable, stored, entries in zip(variables, replies[0::2], replies[1::2], strict=True):
        ts_us, doc = work.latest[variable]
        if stored != [str(ts_us).encode(), doc]:
            problems.append(f"{variable}: latest is {stored}, expected {[ts_us, doc]}")
        ids = [entry_id for entry_id, _ in entries]
        if ids != [f"{seq}-0".encode() for seq in range(1, len(entries) + 1)]:
            problems.append(f"{variable}: stream ids are not 1-0..{len(entries)}-0: {ids[:10]}…")
        found = [(int(fields[b"t"]), fields[b"d"]) for _, fields in entries]
        if len(found) != len(set(found)) or set(found) != work.history[variable]:
            problems.append(
                f"{variable}: history has {len(found)} entries ({len(set(found))} distinct), "
                f"expected the {len(work.history[variable])} distinct packets published"
            )
    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:10])


async def settle(
    channel: Any, queue: str, redis: Redis, consumer: Child, expected: int, *, within: float
) -> int:
    """Wait until the queue has no ready message and the history count has stopped moving: for
    QUIET seconds once it is ``expected`` (only redelivered duplicates may still be in hand), for
    STUCK seconds otherwise (longer than the consumer's Redis backoff; the caller's assertions
    then say what is missing). Returns the count."""
    deadline = time.monotonic() + within
    last, since = -1, time.monotonic()
    while True:
        if not consumer.alive():
            raise AssertionError(f"while draining the queue: {consumer.describe()}")
        ready, _ = await queue_state(channel, queue)
        total = await history_total(redis)
        now = time.monotonic()
        if ready or total != last:
            last, since = total, now
        elif now - since >= (QUIET if total == expected else STUCK):
            return total
        if now > deadline:
            raise AssertionError(
                f"queue not drained within {within}s: {ready} ready, {total} history entries "
                f"of {expected}\n{consumer.describe()}"
            )
        await asyncio.sleep(0.1)


async def stop_and_check_queue(channel: Any, s: Settings, consumer: Child) -> None:
    """SIGTERM the consumer: it must exit 0 and leave nothing in the queue (all acked) and
    nothing dead-lettered (every packet was valid)."""
    code = await consumer.terminate()
    assert code == 0, consumer.describe()
    assert await queue_state(channel, s.queue) == (0, 0), "messages left in the queue"
    assert await queue_state(channel, s.dead_letter_queue) == (0, 0), "packets dead-lettered"


# --- 1. the consumer SIGKILLed mid-run ---


async def test_sigkill_mid_run_loses_nothing(
    settings: Settings, redis: Redis, amqp: Any, spawn: Spawn
) -> None:
    work = build_workload(50_000, 500, seed=1)
    work.check()
    await declare_topology(amqp, settings)
    await publish_in_order(settings.exchange, work.bodies)
    await until(
        "every message queued", lambda: queue_holds(amqp, settings.queue, len(work.bodies)), 30
    )
    env = server_env(settings)

    first = latest_server(spawn, "consume", env, "consume-first")
    await until("> 5 000 history entries", lambda: more_than(redis, 5000), 60, first)
    first.kill()
    assert first.process.returncode == -signal.SIGKILL, first.describe()
    written = await history_total(redis)  # its only writer is dead: this no longer moves
    expected = work.distinct
    assert 5000 < written < expected, f"not killed mid-run: {written} of {expected} written"

    second = latest_server(spawn, "consume", env, "consume-second")
    await settle(amqp, settings.queue, redis, second, work.distinct, within=90)
    await stop_and_check_queue(amqp, settings, second)
    await assert_store_holds(redis, work)


# --- 2. Redis stopped mid-run, then started again ---


async def test_redis_outage_loses_nothing(
    settings: Settings, amqp: Any, spawn: Spawn, tmp_path: Path
) -> None:
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    argv = redis_argv(port, data_dir, durable=True)
    server = spawn(argv, dict(os.environ), "redis-before")
    await until("the private Redis answers", lambda: redis_answers(url), 20, server)

    work = build_workload(20_000, 200, seed=2)
    work.check()
    exchange = await declare_topology(amqp, settings)
    consumer = latest_server(
        spawn, "consume", server_env(dataclasses.replace(settings, redis_url=url)), "consume"
    )
    await until("the consumer consumes", lambda: has_consumer(amqp, settings.queue), 30, consumer)

    publisher = asyncio.create_task(publish_all(exchange, work.bodies))
    try:
        async with Redis.from_url(url) as private:
            await until("> 2 000 history entries", lambda: more_than(private, 2000), 60, consumer)
        # Redis stops (SIGTERM: it finishes its AOF) while packets keep coming.
        assert await server.terminate() == 0, server.describe()
        ready, _ = await queue_state(amqp, settings.queue)
        assert ready > 0 or not publisher.done(), "Redis stopped after the run, not mid-run"
        outage_end = time.monotonic() + 3
        while time.monotonic() < outage_end:
            assert consumer.alive(), consumer.describe()
            await asyncio.sleep(0.1)
        server = spawn(argv, dict(os.environ), "redis-after")
        await until("the private Redis answers again", lambda: redis_answers(url), 20, server)
        assert consumer.alive(), consumer.describe()

        await asyncio.wait_for(publisher, 60)
        async with Redis.from_url(url) as private:
            await settle(amqp, settings.queue, private, consumer, work.distinct, within=90)
            assert any(
                "latest_server.consumer" in line and "unavailable" in line
                for line in consumer.log().splitlines()
            ), "the consumer never met the outage"
            await stop_and_check_queue(amqp, settings, consumer)
            await assert_store_holds(private, work)
    finally:
        if not publisher.done():
            publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
    assert await server.terminate() == 0, server.describe()


# --- 3. the README's first command: no REDIS_URL, the embedded Valkey ---


def valkey_processes(data_dir: Path) -> list[psutil.Process]:
    """Live valkey-server processes working in ``data_dir`` (zombies do not count)."""
    found = []
    for process in psutil.process_iter(["name", "status"]):
        try:
            if not (process.info["name"] or "").startswith("valkey-server"):
                continue
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if Path(process.cwd()).is_relative_to(data_dir) or any(
                str(data_dir) in arg for arg in process.cmdline()
            ):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def alive(process: psutil.Process) -> bool:
    """Running, and not a zombie (a process that has exited, its status not yet collected)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_if_alive(process: psutil.Process | None) -> None:
    if process is not None and alive(process):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


async def _healthy(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def test_readme_first_command_embedded(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = server_env(LATEST_DATA_DIR=str(data_dir), LATEST_PORT=str(port), LATEST_ES_PORT="0")
    assert "REDIS_URL" not in env and "AMQP_URL" not in env
    server = latest_server(spawn, "serve", env, "serve")
    valkey: psutil.Process | None = None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            await until("/healthz answers", lambda: _healthy(http), 30, server)
            first_line = server.log().splitlines()[0]
            assert "REDIS_URL is not set: using an embedded Valkey server" in first_line
            assert str(data_dir) in first_line
            running = valkey_processes(data_dir)
            assert len(running) == 1, running
            valkey = running[0]

            packet = {
                "id": "urn:sensor:readme-1",
                "observationDateTime": "2024-05-17T10:00:00.250+02:00",
                "temperature": 21.5,
            }
            version = (datetime(2024, 5, 17, 8, 0, 0, 250_000, tzinfo=UTC) - EPOCH) // timedelta(
                microseconds=1
            )
            answer = await http.post(
                "/ingest",
                content=orjson.dumps(packet),
                headers={"content-type": "application/json"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["accepted"] == 1 and answer.json()["rejected"] == [], answer.text

            got = await http.get(f"/latest/{packet['id']}")
            assert got.status_code == 200, got.text
            assert got.headers["content-type"] == "application/json"
            assert orjson.loads(got.content) == packet
            assert got.headers["etag"] == f'"{version}"'
            again = await http.get(
                f"/latest/{packet['id']}", headers={"if-none-match": got.headers["etag"]}
            )
            assert again.status_code == 304

        assert await server.terminate() == 0, server.describe()
        assert valkey_processes(data_dir) == [], "valkey-server left running"
        assert not alive(valkey)
    finally:
        kill_if_alive(valkey)


async def test_embedded_valkey_stops_when_its_data_directory_was_deleted(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Someone deleting the data directory under a running server (its lock file, the Valkey's
    socket and files with it) must not leave Valkey running after it: the server stops its
    own child, whatever is left on disk."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = server_env(LATEST_DATA_DIR=str(data_dir), LATEST_PORT=str(port), LATEST_ES_PORT="0")
    server = latest_server(spawn, "serve", env, "serve")
    valkey: psutil.Process | None = None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            await until("/healthz answers", lambda: _healthy(http), 30, server)
        [valkey] = valkey_processes(data_dir)
        shutil.rmtree(data_dir)
        assert alive(valkey)

        assert await server.terminate() == 0, server.describe()
        assert not alive(valkey), ("valkey-server left running", server.log())
    finally:
        kill_if_alive(valkey)
