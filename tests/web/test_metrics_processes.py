"""Several processes, one set of metrics: two `latest-server serve` processes started with the
same LATEST_METRICS_DIR, each written to, and the /metrics of either shows the sum; a process
that stops takes its websocket clients out of the live gauge, not its counters."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from redis.asyncio import Redis

from tests.conftest import AMQP_URL, REDIS_URL, publish, unique, wait_for
from tests.services import free_port, stop, until_up
from tests.web.test_metrics import scrape, value

Serve = Callable[..., tuple[subprocess.Popen[bytes], str]]


@pytest.fixture
def start(tmp_path: Path, redis: Redis) -> Iterator[Serve]:
    directory = tmp_path / "metrics"
    started: list[subprocess.Popen[bytes]] = []

    def serve(name: str, *, flag: bool = False) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {
            **os.environ,
            "REDIS_URL": REDIS_URL,
            "LATEST_PORT": str(port),
            "LATEST_ES_PORT": "0",
            "LATEST_DATA_DIR": str(tmp_path / name),
        }
        env.pop("AMQP_URL", None)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        argv = [sys.executable, "-m", "latest_server", "serve"]
        if flag:  # the CLI flag, as the environment variable
            argv.insert(3, f"--metrics-dir={directory}")
        else:
            env["LATEST_METRICS_DIR"] = str(directory)
        with (tmp_path / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        until_up(
            process,
            lambda: httpx.get(url + "/healthz", timeout=2).raise_for_status(),
            (httpx.HTTPError,),
            within=30,
            poll=0.1,
        )
        return process, url

    yield serve
    for process in started:
        stop(process)


def accepted(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    return value(samples, "latest_packets_total", edge="http", outcome="accepted")


async def test_two_servers_show_the_sum(start: Serve) -> None:
    first, a = await asyncio.to_thread(start, "a")
    second, b = await asyncio.to_thread(start, "b", flag=True)
    v = unique("v")
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            a + "/ingest", json=[{"id": v, "ts": 1_700_000_000 + n} for n in range(3)]
        )
        assert answer.json()["accepted"] == 3
        answer = await http.post(
            b + "/ingest", json=[{"id": v, "ts": 1_700_000_100 + n} for n in range(4)]
        )
        assert answer.json()["accepted"] == 4
        ws_a = await websockets.connect(a.replace("http", "ws") + "/ws")
        ws_b = await websockets.connect(b.replace("http", "ws") + "/ws")
        try:
            for ws in (ws_a, ws_b):  # accepted and served: a pong answered
                await ws.send(orjson.dumps({"op": "ping"}).decode())
                await ws.recv()
            for url in (a, b):
                samples = await asyncio.to_thread(scrape_sync, url)
                assert accepted(samples) == 7
                assert value(samples, "latest_ws_clients") == 2
                route = {"route": "/ingest", "method": "POST", "status": "200"}
                assert value(samples, "latest_http_requests_total", **route) == 2
            second.send_signal(signal.SIGTERM)
            await asyncio.to_thread(second.wait, 20)
            assert second.returncode == 0
            samples = await asyncio.to_thread(scrape_sync, a)
            assert value(samples, "latest_ws_clients") == 1  # b's client went with b
            assert accepted(samples) == 7  # what b counted stays counted
        finally:
            await ws_a.close()
            await ws_b.close()
    assert first.poll() is None


def scrape_sync(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return scrape(client)


async def test_a_consume_process_counts_on_the_servers_metrics(
    start: Serve, tmp_path: Path, names: dict[str, str], amqp: Any
) -> None:
    """`latest-server consume` (AMQP) and `latest-server serve` (HTTP) on one directory: the
    server's /metrics shows what the consumer wrote and dead-lettered."""
    _server, url = await asyncio.to_thread(start, "s")
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "AMQP_URL": AMQP_URL,
        "LATEST_METRICS_DIR": str(tmp_path / "metrics"),
        "LATEST_DATA_DIR": str(tmp_path / "c"),
        **{f"LATEST_{name.upper()}": value for name, value in names.items()},
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    output = tmp_path / "consume.log"

    def spawn() -> subprocess.Popen[bytes]:
        with output.open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "latest_server", "consume"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    consumer = await asyncio.to_thread(spawn)
    try:
        v = unique("v")
        bodies = [orjson.dumps({"id": v, "ts": 1_700_000_000 + n}) for n in range(5)]
        bodies.append(b"not json")
        await wait_for(lambda: b"consuming from queue" in output.read_bytes(), within=30)
        await publish(amqp, names["exchange"], bodies)

        async def counted() -> bool:
            samples = await asyncio.to_thread(scrape_sync, url)
            edge = {"edge": "amqp", "outcome": "accepted"}
            return (
                value(samples, "latest_packets_total", **edge) == 5
                and value(samples, "latest_packets_dead_lettered_total") == 1
            )

        await wait_for(counted, within=30)
        samples = await asyncio.to_thread(scrape_sync, url)
        reason = {"edge": "amqp", "reason": "not_json"}
        assert value(samples, "latest_packets_rejected_total", **reason) == 1
        assert (names["queue"],) in {
            tuple(dict(labels).values())
            for name, labels in samples
            if name == "latest_amqp_queue_messages"
        }
    finally:
        await asyncio.to_thread(stop, consumer)


def test_serve_workers_share_a_directory_of_their_own(tmp_path: Path, redis: Redis) -> None:
    """`serve --workers 2` without LATEST_METRICS_DIR: whichever worker answers /metrics shows
    what both counted, and the directory it made is gone once it stops."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "LATEST_PORT": str(port),
        "LATEST_ES_PORT": "0",
        "LATEST_DATA_DIR": str(tmp_path / "data"),
        "LATEST_WORKERS": "2",
        "TMPDIR": str(tmp_path),
    }
    for name in ("AMQP_URL", "PROMETHEUS_MULTIPROC_DIR", "LATEST_METRICS_DIR"):
        env.pop(name, None)
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "latest_server", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()

        def both_up() -> None:  # a new connection each time: the kernel spreads them
            pids.add(httpx.get(url + "/healthz", timeout=2).raise_for_status().json()["pid"])
            if len(pids) < 2:
                raise httpx.ConnectError("one worker seen so far")

        until_up(process, both_up, (httpx.HTTPError,), within=60, poll=0.05)
        v = unique("v")
        for n in range(6):
            answer = httpx.post(url + "/ingest", json={"id": v, "ts": 1_700_000_000 + n})
            assert answer.json()["accepted"] == 1
        for _ in range(6):
            assert accepted(scrape_sync(url)) == 6
        made = [p for p in tmp_path.iterdir() if p.name.startswith("latest-metrics-")]
        assert len(made) == 1 and any(made[0].iterdir())
    finally:
        stop(process, within=30)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("latest-metrics-")]
