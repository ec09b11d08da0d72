"""Shared fixtures. Tests talk to a real Redis and RabbitMQ: a Redis server and a vhost this run
starts and removes itself (tests/services.py), or TEST_REDIS_URL/TEST_AMQP_URL when set; each test
gets a flushed Redis database and queue/exchange names of its own.

A test marked ``redis_both`` runs twice: on the one Redis and on a Redis Cluster of the run's own
(tests/cluster.py: three primaries with a replica each, started when a test first needs it),
flushed on every primary around each test."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.cluster import RedisCluster as SyncRedisCluster

from latest_server.packets import Packet, PacketParser
from latest_server.redis_client import Client, connect, is_cluster
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.web.app import create_app, server_options
from latest_server.web.ws.hub import Hub
from tests.cluster import Cluster, redis_cluster
from tests.servers import Relay, UvicornThread
from tests.services import free_port, private_redis, private_vhost

# Started when this module is first imported: other conftests and test modules import these
# names, some before any pytest hook runs (a conftest of a directory named on the command line).
_services = contextlib.ExitStack()
atexit.register(_services.close)
REDIS_URL = os.environ.get("TEST_REDIS_URL") or _services.enter_context(private_redis())
AMQP_URL = os.environ.get("TEST_AMQP_URL") or _services.enter_context(private_vhost())


def pytest_unconfigure(config: pytest.Config) -> None:
    _services.close()


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


PARSER = PacketParser(Settings())


def packet(variable: str, n: int, **extra: Any) -> Packet:
    """Packet ``n`` of ``variable``, at second ``n`` after 2023-11-14T22:13:20Z."""
    item = PARSER.parse_document(0, {"id": variable, "ts": 1_700_000_000 + n, "n": n, **extra})
    assert isinstance(item, Packet)
    return item


@pytest.fixture
def names() -> dict[str, str]:
    """Exchange and queue names unique to this test."""
    base = unique()
    return {
        "exchange": f"{base}.x",
        "queue": f"{base}.q",
        "dead_letter_exchange": f"{base}.dlx",
        "dead_letter_queue": f"{base}.dlq",
    }


REDIS_BACKENDS = ("single", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``redis_both`` run on each of REDIS_BACKENDS (``redis_url``)."""
    if "redis_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "redis_both"
    ):
        metafunc.parametrize("redis_url", REDIS_BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def redis_cluster_nodes() -> Iterator[Cluster]:
    """The run's Redis Cluster (tests/cluster.py), started once, when a test first asks."""
    with redis_cluster() as started:
        yield started


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster_nodes: Cluster) -> str:
    return redis_cluster_nodes.url


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """REDIS_URL of the test: the one Redis, or (``redis_both``'s second run) the cluster."""
    if getattr(request, "param", "single") == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return REDIS_URL


def sync_client(url: str) -> Any:
    """A blocking client of ``url`` (one Redis, or a cluster: redis+cluster://h:p,…)."""
    if url.startswith("redis+cluster://"):
        host, _, port = url.removeprefix("redis+cluster://").split(",")[0].rpartition(":")
        return SyncRedisCluster(host=host, port=int(port))
    return SyncRedis.from_url(url)


@pytest.fixture
def settings(names: dict[str, str], tmp_path: Path, redis_url: str) -> Settings:
    return Settings(  # type: ignore[arg-type]
        redis_url=redis_url, amqp_url=AMQP_URL, data_dir=str(tmp_path / "data"), **names
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Client]:
    """A client of the test's Redis, flushed before and after (every primary of a cluster)."""
    client: Client = Redis.from_url(redis_url) if redis_url == REDIS_URL else connect(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def resources(settings: Settings, redis: Redis) -> AsyncIterator[Resources]:
    opened = await Resources.open(settings)
    assert is_cluster(opened.redis) == (settings.redis_url != REDIS_URL)
    yield opened
    await opened.close()


@pytest.fixture
async def stores(settings: Settings, objects_url: str, redis: Redis) -> AsyncIterator[Resources]:
    """Resources on each object store (``objects_url``), once the start-up recovery job is done."""
    opened = await Resources.open(dataclasses.replace(settings, objects_url=objects_url))
    assert is_cluster(opened.redis) == (settings.redis_url != REDIS_URL)
    await opened.trigger.close()  # let the start-up recovery job finish first
    yield opened
    await opened.close()


@pytest.fixture
async def amqp(names: dict[str, str], request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A publisher channel; deletes this test's queues and exchanges afterwards."""
    connection = await aio_pika.connect(f"{AMQP_URL}?name={request.node.name[:64]}")
    channel = await connection.channel()
    yield channel
    for queue in (names["queue"], names["dead_letter_queue"]):
        await channel.queue_delete(queue)
    for exchange in (names["exchange"], names["dead_letter_exchange"]):
        await channel.exchange_delete(exchange)
    await connection.close()


async def publish(channel: Any, exchange: str, bodies: list[bytes], key: str = "data") -> None:
    target = await channel.get_exchange(exchange)
    for body in bodies:
        await target.publish(aio_pika.Message(body), routing_key=key)


async def settled(queue: Any, settle: float, poll: float = 0.05) -> list[Any]:
    """Every message of ``queue`` (acknowledged), waiting ``settle`` seconds after the last one."""
    found: list[Any] = []
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(poll)
            continue
        await message.ack()
        found.append(message)
        deadline = time.monotonic() + settle
    return found


async def drain_dead_letters(channel: Any, queue: str, expected: int) -> list[Any]:
    """Read ``expected`` messages from the dead-letter queue (waiting for them to arrive)."""
    q = await channel.get_queue(queue)
    messages: list[Any] = []
    deadline = time.monotonic() + 20
    while len(messages) < expected and time.monotonic() < deadline:
        message = await q.get(fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        messages.append(message)
    return messages


async def wait_for(condition: Callable[[], Any], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@dataclasses.dataclass
class Churn:
    """Offload jobs and merges of random variables, each in a loop until ``done``, as the fault
    tests run them beside writers and readers; counts what they did."""

    stores: Resources
    variables: list[str]
    rng: random.Random
    done: asyncio.Event
    moved_variables: int = 0
    moved_entries: int = 0
    merged: int = 0  # merges that had inputs

    async def offload(self, pause: float) -> None:
        while not self.done.is_set():
            report = await self.stores.offloader.run_job()
            if report:
                self.moved_variables += report.variables
                self.moved_entries += report.entries
            await asyncio.sleep(pause)

    async def merge(self, pause: float, *, pause_first: bool = False) -> None:
        while not self.done.is_set():
            if pause_first:
                await asyncio.sleep(pause)
            report = await self.stores.merger.merge_variable(self.rng.choice(self.variables))
            self.merged += 1 if report.inputs else 0
            if not pause_first:
                await asyncio.sleep(pause)


class ServerThread(UvicornThread):
    """LATEST_PORT's app in a real uvicorn server in a thread, with the options `latest-server
    serve` gives it (web/app.py: server_options)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(create_app(settings), lifespan="on", **server_options(settings))


def ws_url(server: ServerThread) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


def hub_of(server: ServerThread) -> Hub:
    hub = server.server.config.app.state.hub
    assert isinstance(hub, Hub)
    return hub


@pytest.fixture
def http_server(redis: Redis) -> Iterator[Callable[..., ServerThread]]:
    """Factory: ``http_server(settings)`` starts uvicorn; every server is stopped at teardown."""
    started: list[ServerThread] = []

    def start(settings: Settings, **overrides: Any) -> ServerThread:
        server = ServerThread(dataclasses.replace(settings, **overrides))
        started.append(server.__enter__())
        return server

    yield start
    for server in reversed(started):
        server.__exit__()


# --- object stores: the same tests run on file:// and on S3 (moto's server over real HTTP) ---


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server on loopback. No S3 server can be installed here; moto speaks
    the S3 HTTP API (ranged GETs, If-None-Match: * puts) and boto3 talks to it over real HTTP."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    import boto3

    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


S3_BUCKET = "latest-test"
S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def silent_s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint that takes connections and never answers (a listening socket that never
    accepts: the kernel completes the handshake, nobody reads), set as AWS_ENDPOINT_URL_S3 for
    the object stores opened in the test. Returns moto's endpoint, to set back."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{listener.getsockname()[1]}")
        yield s3_endpoint


@pytest.fixture
def s3_relay(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Relay]:
    """moto behind a Relay, as AWS_ENDPOINT_URL_S3 for the object stores opened in the test."""
    relay = Relay(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{relay.port}")
    yield relay
    relay.close()


@pytest.fixture(params=["file", "s3"])
def objects_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "objects").as_uri()
    request.getfixturevalue("s3_endpoint")
    return f"s3://{S3_BUCKET}/{unique('run')}"
