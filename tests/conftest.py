"""Shared fixtures. Tests talk to a real Redis and RabbitMQ: a Redis server and a vhost this run
starts and removes itself (tests/services.py), or TEST_REDIS_URL/TEST_AMQP_URL when set; each test
gets a flushed Redis database and queue/exchange names of its own."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import uvicorn
from redis.asyncio import Redis

from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.web.app import create_app, server_options
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


@pytest.fixture
def settings(names: dict[str, str], tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[arg-type]
        redis_url=REDIS_URL, amqp_url=AMQP_URL, data_dir=str(tmp_path / "data"), **names
    )


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def resources(settings: Settings, redis: Redis) -> AsyncIterator[Resources]:
    opened = await Resources.open(settings)
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


class ServerThread:
    """A real uvicorn server in a thread (its own event loop), on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            **server_options(settings),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


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


class Relay:
    """A TCP relay on loopback to ``target`` (moto's port) that can be cut: while cut its port is
    closed and the connections it carried are shut, which is an S3 outage to its clients. Each
    connection is two threads copying bytes; every loop ends once the relay is cut (the fixture
    cuts it at teardown)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.carried: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
        with self.lock:
            for carried in self.carried:
                with contextlib.suppress(OSError):
                    carried.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        while self.listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.carried |= {client, upstream}
            ends = threading.Barrier(2, action=functools.partial(self._close, client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._copy, args=(source, sink, ends), daemon=True).start()

    @staticmethod
    def _copy(source: socket.socket, sink: socket.socket, ends: threading.Barrier) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65_536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        ends.wait()  # the second direction to end closes both sockets

    def _close(self, *pair: socket.socket) -> None:
        with self.lock:
            for carried in pair:
                carried.close()
                self.carried.discard(carried)


@pytest.fixture
def s3_relay(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Relay]:
    """moto behind a Relay, as AWS_ENDPOINT_URL_S3 for the object stores opened in the test."""
    relay = Relay(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{relay.port}")
    yield relay
    relay.cut()


@pytest.fixture(params=["file", "s3"])
def objects_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "objects").as_uri()
    request.getfixturevalue("s3_endpoint")
    return f"s3://{S3_BUCKET}/{unique('run')}"
