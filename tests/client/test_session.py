"""Session and AsyncSession: states on exit, rate limiting measured by a capturing HTTP server,
publishing to the real RabbitMQ (pika and aio-pika), the logging handler, the public API."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

import ingest_client
from ingest_client import AsyncSession, IngestHandler, Session, Terminated
from ingest_client.transports import memory
from tests.client.capture import CaptureServer
from tests.client.conftest import read_all
from tests.conftest import AMQP_URL


def channel() -> str:
    return f"memory://{uuid.uuid4().hex}"


def packets(url: str) -> list[dict[str, Any]]:
    return [p for _, m in memory.received(url.removeprefix("memory://")) for p in orjson.loads(m)]


def states(found: list[dict[str, Any]]) -> list[str]:
    return [
        p["@session"]["state"]
        for p in found
        if isinstance(p.get("@session"), dict) and "state" in p["@session"]
    ]


def test_the_public_api() -> None:
    assert set(ingest_client.__all__) >= {"Session", "AsyncSession", "IngestHandler", "errors"}
    for name in ingest_client.__all__:
        assert getattr(ingest_client, name) is not None
    assert issubclass(ingest_client.errors.FlushFailed, ingest_client.errors.ClientError)


def test_a_session_that_finishes_is_closed_and_samples_carry_the_session() -> None:
    url = channel()
    with Session("s1", url=url, min_interval=0.05, info={"model": "m"}) as session:
        session.sample("speed", 1.5, ts=1_700_000_000)
        session.sample("speed", 2.5, unit="m/s")
        session.send({"id": "raw", "ts": 1_700_000_001, "x": 1})
    found = packets(url)
    assert states(found) == ["open", "closed"]
    assert found[0] == {
        "id": "s1",
        "ts": found[0]["ts"],
        "@session": {"state": "open", "info": {"model": "m"}},
    }
    samples = [p for p in found if p.get("@session") == "s1"]
    assert [p["id"] for p in samples] == ["speed", "speed", "raw"]
    assert samples[0]["value"] == 1.5 and samples[0]["ts"] == 1_700_000_000
    assert samples[1]["unit"] == "m/s"
    ranges = [
        p["@session"]
        for p in found
        if isinstance(p.get("@session"), dict) and "end" in p["@session"]
    ]
    assert ranges and ranges[-1]["start"] == 1_700_000_000


def test_an_exception_fails_the_session_and_is_reraised() -> None:
    url = channel()
    with pytest.raises(ZeroDivisionError), Session(url=url, min_interval=0.05) as session:
        session.sample("v", 1)
        _ = 1 / 0
    last = [
        p for p in packets(url) if isinstance(p.get("@session"), dict) and "state" in p["@session"]
    ][-1]
    assert last["@session"]["state"] == "failed"
    assert "ZeroDivisionError" in last["@session"]["error"]


def test_ctrl_c_and_sigterm_truncate_the_session() -> None:
    url = channel()
    with pytest.raises(KeyboardInterrupt), Session(url=url, min_interval=0.05) as session:
        session.sample("v", 1)
        raise KeyboardInterrupt
    assert states(packets(url)) == ["open", "truncated"]

    url = channel()
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), Session(url=url, min_interval=0.05) as session:
        session.sample("v", 1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the signal
    assert states(packets(url)) == ["open", "truncated"]
    assert signal.getsignal(signal.SIGTERM) == previous
    assert [p["value"] for p in packets(url) if p.get("@session") == session.id] == [1]


def test_waiting_then_open() -> None:
    url = channel()
    with Session(url=url, waiting=True, min_interval=0.05) as session:
        time.sleep(0.1)  # preparing
        session.sample("v", 1)  # opens it
    assert states(packets(url)) == ["waiting", "open", "closed"]


def test_the_logging_handler_turns_records_into_samples() -> None:
    url = channel()
    log = logging.getLogger(f"producer-{uuid.uuid4().hex}")
    log.setLevel(logging.INFO)
    with Session(url=url, min_interval=0.05) as session:
        handler = IngestHandler(session)
        log.addHandler(handler)
        try:
            log.info("speed now", extra={"variable": "speed", "value": 3.2})
            log.info("no sample here")
            log.info("rpm", extra={"variable": "rpm", "value": 900, "fields": {"gear": 3}})
        finally:
            log.removeHandler(handler)
    samples = [p for p in packets(url) if p.get("@session") == session.id]
    assert [(p["id"], p["value"]) for p in samples] == [("speed", 3.2), ("rpm", 900)]
    assert samples[1]["gear"] == 3
    assert abs(samples[0]["ts"] - time.time()) < 60


async def test_async_session_states() -> None:
    url = channel()
    async with AsyncSession(url=url, min_interval=0.05) as session:
        for i in range(100):
            await session.sample("v", i)
    assert states(packets(url)) == ["open", "closed"]
    assert [p["value"] for p in packets(url) if p.get("@session") == session.id] == list(range(100))

    url = channel()

    async def run() -> None:
        async with AsyncSession(url=url, min_interval=0.05) as session:
            session.sample_nowait("v", 1)
            await asyncio.sleep(10)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.2)
    task.cancel()  # what Ctrl+C does under asyncio.run
    with pytest.raises(asyncio.CancelledError):
        await task
    assert states(packets(url)) == ["open", "truncated"]


# --- rate limiting, measured on the receiving side ---


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server


def produce(url: str, count: int, seconds: float) -> None:
    """``count`` samples spread evenly over ``seconds``, then the session closes."""
    with Session(url=url, max_message_bytes=10_000_000) as session:
        start = time.monotonic()
        for i in range(count):
            if i % 100 == 0:
                time.sleep(max(0.0, start + seconds * i / count - time.monotonic()))
            session.sample("v", i)


def flushes(server: CaptureServer) -> tuple[list[float], list[int], list[int]]:
    """Arrival times of the requests, the samples in each, and every sample's value."""
    received = server.received()
    times = [t for t, _, _ in received]
    batches = [
        [p for p in orjson.loads(b) if isinstance(p.get("@session"), str)] for _, _, b in received
    ]
    values = [p["value"] for batch in batches for p in batch]
    return times, [len(batch) for batch in batches], values


def test_default_interval_10000_samples_in_3_s_arrive_in_at_most_4_flushes(
    capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LATEST_MIN_INTERVAL", raising=False)
    produce(capture.url, 10_000, 2.9)
    times, sizes, values = flushes(capture)
    assert values == list(range(10_000))
    assert len([s for s in sizes if s]) <= 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 1.0


def test_a_shorter_interval_gives_more_flushes_never_closer_than_it(
    capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATEST_MIN_INTERVAL", "0.1")
    produce(capture.url, 10_000, 2.9)
    times, sizes, values = flushes(capture)
    assert values == list(range(10_000))
    assert len([s for s in sizes if s]) > 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.1


# --- the real RabbitMQ ---


async def test_sync_session_over_amqp_with_confirms(amqp_target: tuple[str, Any]) -> None:
    exchange, queue = amqp_target

    def run() -> str:
        with Session(
            url=AMQP_URL, exchange=exchange, min_interval=0.1, max_message_bytes=5000
        ) as s:
            for i in range(2000):
                s.sample("v", i)
        return s.id

    session_id = await asyncio.to_thread(run)
    found = await read_all(queue)
    assert states(found) == ["open", "closed"]
    assert [p["value"] for p in found if p.get("@session") == session_id] == list(range(2000))


async def test_async_session_over_amqp(amqp_target: tuple[str, Any]) -> None:
    exchange, queue = amqp_target
    async with AsyncSession(url=AMQP_URL, exchange=exchange, min_interval=0.1) as s:
        for i in range(500):
            await s.sample("v", i)
    found = await read_all(queue)
    assert states(found) == ["open", "closed"]
    assert [p["value"] for p in found if p.get("@session") == s.id] == list(range(500))


def test_an_unreachable_server_fails_at_the_start() -> None:
    with (
        pytest.raises(ingest_client.FlushFailed),
        Session(url="http://127.0.0.1:9/", retry_for=0.3),
    ):
        pass
