"""Redis going away under a running server, on a Redis of the test's own (a real redis-server
process it stops and starts, behind a relay that keeps stale connections open as a NAT does):
every route answers 503 JSON with Retry-After while it is down, never a 500, and the first
requests once it is back succeed, whatever connections the pool held from before the restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from latest_server.lock import JobLock
from latest_server.redis_client import connect, load_scripts, send_raw
from latest_server.settings import Settings
from tests.conftest import ServerThread, free_port
from tests.services import redis_argv

pytestmark = pytest.mark.timeout(60)


class PrivateRedis:
    """A redis-server this test starts, stops and starts again on the same port and files."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        directory.mkdir(parents=True, exist_ok=True)
        self.argv = redis_argv(self.port, directory, durable=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with SyncRedis(port=self.port, socket_connect_timeout=0.5) as probe:
                    if probe.ping():
                        return
            except RedisConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class LingeringRelay:
    """A TCP relay to Redis that behaves like a NAT or a container's port proxy: when Redis goes
    away, the connections it carried stay open on the client's side (no FIN reaches the client,
    so its pool cannot tell them from live ones), and each is reset when next written to. New
    connections reach whatever Redis listens now."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.open = False
        self.listener.close()

    def _accept(self) -> None:
        while self.open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # Redis is down: so is the connection
                client.close()
                continue
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _up(client: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65_536):
                upstream.sendall(data)
        # Redis is gone (or the client left): reset the client, as a proxy with no peer does.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()

    @staticmethod
    def _down(upstream: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65_536):
                client.sendall(data)
        upstream.close()  # and nothing is said to the client


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def relay(private_redis: PrivateRedis) -> Iterator[LingeringRelay]:
    relay = LingeringRelay(private_redis.port)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def server(relay: LingeringRelay, settings: Settings) -> Iterator[ServerThread]:
    own = dataclasses.replace(settings, redis_url=relay.url, amqp_url=None, es_prefix="/es")
    with ServerThread(own) as running:
        yield running


def fresh_client(server: ServerThread) -> httpx.Client:
    """One connection per request: an answer on one request never spoils the next."""
    return httpx.Client(
        base_url=server.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
    )


def ingest(http: httpx.Client, ids: list[str], at: str = "2024-05-17T10:00:00Z") -> None:
    body = b"\n".join(
        orjson.dumps({"id": i, "observationDateTime": at, "t": n}) for n, i in enumerate(ids)
    )
    answer = http.post("/ingest", content=body, headers={"content-type": "application/x-ndjson"})
    assert answer.status_code == 200 and answer.json()["accepted"] == len(ids), answer.text


READS = ["/history/{id}", "/latest/{id}", "/history/{id}?format=csv&fields=t", "/sessions"]


def test_every_read_is_503_json_with_retry_after_while_redis_is_down(
    server: ServerThread, private_redis: PrivateRedis
) -> None:
    with fresh_client(server) as http:
        ingest(http, ["urn:outage:a"])
        private_redis.stop()
        for path in [*READS, "/sessions/s-1"]:
            answer = http.get(path.format(id="urn:outage:a"))
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert answer.headers["retry-after"] == "1", path
            assert answer.headers["content-type"] == "application/json", path
            assert answer.json()["error"]["type"] == "store_unavailable", (path, answer.text)
        for path in ["/es/latest/_doc/urn:outage:a", "/es/_mget"]:
            answer = http.request("GET", path, json={"docs": [{"_index": "latest", "_id": "a"}]})
            assert answer.status_code == 503, (path, answer.status_code, answer.text)


async def test_first_requests_after_a_redis_restart_succeed(
    server: ServerThread, private_redis: PrivateRedis
) -> None:
    """Every request sent at once: each takes a connection of its own from the pool, so after
    the restart every one of them meets a connection of the Redis that went away."""
    ids = [f"urn:outage:{n}" for n in range(10)]
    with fresh_client(server) as http:
        ingest(http, ids)
    paths = [path.format(id=i) for path in READS for i in ids]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        before = await asyncio.gather(*(http.get(path) for path in paths))
        assert [a.status_code for a in before] == [200] * len(paths)
        private_redis.restart()
        after = await asyncio.gather(*(http.get(path) for path in paths))
        failed = [(p, a.status_code, a.text) for p, a in zip(paths, after, strict=True)]
        assert [f for f in failed if f[1] != 200] == []
    with fresh_client(server) as http:
        ingest(http, ids, at="2024-05-17T10:00:01Z")


async def test_a_connection_broken_by_a_restart_is_retried_on_a_fresh_one(
    private_redis: PrivateRedis, relay: LingeringRelay
) -> None:
    """Both command paths: redis-py's (``retry=``) and the hand-sent reads (``send_raw``)."""
    redis = connect(relay.url)
    try:
        await redis.set("k", b"v")
        private_redis.restart()
        assert await redis.get("k") == b"v"
        private_redis.restart()
        assert await send_raw(redis, [("GET", "k")]) == [b"v"]
    finally:
        await redis.aclose()


async def test_a_job_lock_heartbeat_outlives_a_redis_outage(private_redis: PrivateRedis) -> None:
    """The heartbeat logs a failed extension and tries again; a redis-py error must not end it
    (the job would then run on, its lock expiring under it unnoticed)."""
    redis = connect(private_redis.url)
    try:
        lock = JobLock(redis, await load_scripts(redis), "outage:lock", "outage:fence", ttl=3.0)
        assert await lock.acquire()
        private_redis.stop()
        await asyncio.sleep(1.5)  # more than one beat (a third of the ttl)
        private_redis.start()
        await asyncio.sleep(1.2)
        assert lock._heartbeat is not None and not lock._heartbeat.done()
        assert not lock.lost.is_set()
        assert await redis.pttl("outage:lock") > 2000  # extended since Redis came back
        await lock.release()
    finally:
        await redis.aclose()
