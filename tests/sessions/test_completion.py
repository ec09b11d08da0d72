"""The completion detector, with delays scaled down through settings: real Redis, RabbitMQ (the
events exchange), a capturing HTTP server (the webhook), and real server processes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.client.capture import CaptureServer
from tests.conftest import AMQP_URL, REDIS_URL, free_port, settled, wait_for
from tests.services import stop
from tests.sessions.helpers import EventListener, RecordingHook
from tests.sessions.test_sessions import doc, sample, write

T0 = 1_700_000_000
DELAY = 0.4  # LATEST_COMPLETION_DELAY in these tests
QUIET = DELAY * (1 + 0.75 + 0.75**2)  # the least quiet time before completion (3 repeats)


@pytest.fixture
def events_exchange(names: dict[str, str]) -> str:
    return f"{names['exchange']}.events"


@pytest.fixture
async def event_queue(events_exchange: str) -> AsyncIterator[Any]:
    """A queue bound to the events exchange (declared here as the server would)."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(f"{events_exchange}.q", exclusive=True)
    await queue.bind(exchange, "session.#")
    yield queue
    await queue.delete()
    await channel.exchange_delete(events_exchange)
    await connection.close()


async def drain(queue: Any, settle: float = 1.0) -> list[dict[str, Any]]:
    """Every message in the queue, waiting ``settle`` seconds after the last one."""
    found = await settled(queue, settle)
    return [{"routing_key": m.routing_key, **orjson.loads(m.body)} for m in found]


@pytest.fixture
def quick(settings: Settings, events_exchange: str) -> Settings:
    return dataclasses.replace(
        settings, completion_delay=DELAY, completion_repeats=3, events_exchange=events_exchange
    )


@pytest.fixture
async def servers(redis: Redis) -> AsyncIterator[Callable[..., Any]]:
    """Factory of in-process Resources (each with its own detector); closed at teardown."""
    made: list[Resources] = []

    async def open_(settings: Settings, on_end: Any = None) -> Resources:
        resources = await Resources.open(settings, on_end=on_end)
        made.append(resources)
        return resources

    yield open_
    for resources in reversed(made):
        if resources.session_jobs is not None and not resources.session_jobs.stopping.is_set():
            await resources.close()


async def test_a_session_whose_producer_stops_completes_once_with_two_detectors(
    quick: Settings, servers: Callable[..., Any], event_queue: Any, redis: Redis
) -> None:
    hook = RecordingHook()
    with CaptureServer() as webhook:
        settings = dataclasses.replace(quick, completion_webhook=f"{webhook.url}/hook")
        first = await servers(settings, hook)
        await servers(settings, hook)
        async with EventListener(redis) as events:
            await write(first, doc("run", "open"))
            for i in range(5):
                await write(first, sample("run", "speed", T0 + i))
                await asyncio.sleep(DELAY / 2)
            last_write = time.monotonic()
            await wait_for(lambda: hook.states("run"), within=15)
            completed_after = time.monotonic() - last_write
            await asyncio.sleep(DELAY * 4)  # time for any second declaration to show up
            assert len(events.of("run", "complete")) == 1
        assert completed_after >= QUIET * 0.9, "declared complete before the data was quiet"
        session = await first.sessions.get("run")
        assert session is not None and session.state == "complete" and session.count == 5
        assert hook.states("run") == ["complete"]
        assert hook.calls[0][1] == ["speed"]
        amqp_events = await drain(event_queue)
        assert [e["routing_key"] for e in amqp_events] == ["session.complete"]
        assert amqp_events[0]["session"]["id"] == "run"
        assert amqp_events[0]["variables"] == ["speed"]
        hooks = [orjson.loads(body) for _, path, body in webhook.received() if path == "/hook"]
        assert [h["event"] for h in hooks] == ["session.complete"]


async def test_a_slow_producer_is_not_declared_complete_while_it_sends(
    quick: Settings, servers: Callable[..., Any], redis: Redis
) -> None:
    resources = await servers(dataclasses.replace(quick, amqp_url=None))
    await write(resources, doc("slow", "open"))
    start = time.monotonic()
    for i in range(6):  # one sample per 2 × delay, on a fixed schedule
        await asyncio.sleep(max(0.0, start + (i + 1) * 2 * DELAY - time.monotonic()))
        await write(resources, sample("slow", "v", T0 + i))
        assert (await resources.sessions.get("slow")).state == "open"
    # it stops: now it completes
    await wait_for(lambda: _state(resources, "slow", "complete"), within=QUIET + 10)


async def _state(resources: Resources, session_id: str, state: str) -> bool:
    assert resources.sessions is not None
    session = await resources.sessions.get(session_id)
    return session is not None and session.state == state


async def test_the_detector_survives_a_restart(
    quick: Settings, servers: Callable[..., Any], redis: Redis
) -> None:
    settings = dataclasses.replace(quick, amqp_url=None)
    hook_before, hook_after = RecordingHook(), RecordingHook()
    before = await servers(settings, hook_before)
    await write(before, doc("r", "open"), sample("r", "v", T0))
    key = keys.session(keys.key_for("r"))
    await wait_for(lambda: _repeats_at_least(redis, key, 1), within=10)
    await before.close()  # the process stops mid-way through the quiet period
    repeats = int(await redis.hget(key, "cr"))
    assert repeats < 3
    after = await servers(settings, hook_after)
    await wait_for(lambda: hook_after.states("r") == ["complete"], within=10)
    assert int(await redis.hget(key, "cr")) == 3  # it went on counting, not from zero
    assert hook_before.calls == []
    assert (await after.sessions.get("r")).state == "complete"


async def _repeats_at_least(redis: Redis, key: str, n: int) -> bool:
    value = await redis.hget(key, "cr")
    return value is not None and int(value) >= n


# --- two real server processes ---


@pytest.fixture
def server_processes(
    quick: Settings, names: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[], str]]:
    """Factory: start ``latest-server serve`` as a subprocess; returns its URL."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        port = free_port()
        env = {
            **os.environ,
            "REDIS_URL": REDIS_URL,
            "AMQP_URL": AMQP_URL,
            "LATEST_PORT": str(port),
            "LATEST_DATA_DIR": str(tmp_path / f"data-{port}"),
            "LATEST_EXCHANGE": names["exchange"],
            "LATEST_QUEUE": names["queue"],
            "LATEST_DEAD_LETTER_EXCHANGE": names["dead_letter_exchange"],
            "LATEST_DEAD_LETTER_QUEUE": names["dead_letter_queue"],
            "LATEST_EVENTS_EXCHANGE": quick.events_exchange,
            "LATEST_COMPLETION_DELAY": str(DELAY),
            "LATEST_LOG_LEVEL": "warning",
            "LATEST_ES_PORT": "0",
        }
        log = tmp_path / f"server-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "latest_server", "serve"],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()}")
            time.sleep(0.1)

    yield start
    for process in reversed(started):
        stop(process, within=15)


async def test_two_server_processes_emit_exactly_one_complete_event(
    server_processes: Callable[[], str], event_queue: Any, amqp: Any, redis: Redis
) -> None:
    urls = [server_processes(), server_processes()]
    async with httpx.AsyncClient(timeout=10) as http:
        body = [doc("twin", "open"), *(sample("twin", "x", T0 + i) for i in range(3))]
        assert (await http.post(f"{urls[0]}/ingest", content=orjson.dumps(body))).status_code == 200
        more = [sample("twin", "y", T0 + 9)]
        assert (await http.post(f"{urls[1]}/ingest", content=orjson.dumps(more))).status_code == 200

        async def completed() -> bool:
            answer = await http.get(f"{urls[1]}/sessions/twin")
            return bool(answer.json()["state"] == "complete")

        await wait_for(completed, within=20)
    events = await drain(event_queue, settle=DELAY * 5)
    assert [e["routing_key"] for e in events] == ["session.complete"]
    assert events[0]["session"]["count"] == 4
