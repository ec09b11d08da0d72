"""Producers never hang: a session whose broker or server is gone, or stops answering, closes
within ``close_timeout`` and hands back exactly what was not confirmed (``FlushFailed.unsent``);
a second Ctrl+C or SIGTERM ends a producer at once. Real RabbitMQ and uvicorn, behind a relay
(tests/client/relay.py) that the test cuts or freezes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest_client import AsyncSession, FlushFailed, Session, TransportError
from ingest_client.batcher import Batcher
from ingest_client.transports import memory, open_async_transport, open_transport
from tests.client.capture import CaptureServer
from tests.client.conftest import read_all, relayed_amqp_url
from tests.servers import Relay

ROOT = Path(__file__).resolve().parents[2]
BOUND = 2.0  # close_timeout of these tests
SLACK = 2.5  # what a loaded machine may add to it


def samples_of(session_id: str, packets: list[dict[str, Any]]) -> list[Any]:
    return [p["value"] for p in packets if p.get("@session") == session_id]


def wait_until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def sync_run(url: str, relay: Relay, outage: str, **options: Any) -> tuple[str, FlushFailed, float]:
    """100 samples confirmed, then the outage, then 100 more and the end of the session."""
    with (
        pytest.raises(FlushFailed) as failed,
        Session(url=url, min_interval=0.2, close_timeout=BOUND, **options) as session,
    ):
        for i in range(100):
            session.sample("v", i)
        wait_until(lambda: session.batcher.messages_sent >= 2)  # the opening, then these
        getattr(relay, outage)()
        for i in range(100, 200):
            session.sample("v", i)
        leaving = time.monotonic()
    return session.id, failed.value, time.monotonic() - leaving


async def async_run(
    url: str, relay: Relay, outage: str, **options: Any
) -> tuple[str, FlushFailed, float]:
    with pytest.raises(FlushFailed) as failed:
        async with AsyncSession(
            url=url, min_interval=0.2, close_timeout=BOUND, **options
        ) as session:
            for i in range(100):
                await session.sample("v", i)
            for _ in range(1000):  # the opening, then these: confirmed
                if session.batcher.messages_sent >= 2:
                    break
                await asyncio.sleep(0.01)
            getattr(relay, outage)()
            for i in range(100, 200):
                await session.sample("v", i)
            leaving = time.monotonic()
    return session.id, failed.value, time.monotonic() - leaving


def check_unsent(session_id: str, failed: FlushFailed, took: float, received: list[Any]) -> None:
    assert took < BOUND + SLACK, f"closing took {took:.1f}s"
    # Exactly the samples that did not arrive, in order, and the session's end document.
    assert samples_of(session_id, received) == list(range(100))
    assert samples_of(session_id, failed.unsent) == list(range(100, 200))
    ends = [p["@session"] for p in failed.unsent if p["id"] == session_id]
    assert {"state": "closed"} in ends
    assert "close_timeout" in str(failed)


async def run(
    mode: str, url: str, relay: Relay, outage: str, **options: Any
) -> tuple[str, FlushFailed, float]:
    """``sync_run`` (in a thread) or ``async_run``."""
    if mode == "sync":
        return await asyncio.to_thread(sync_run, url, relay, outage, **options)
    return await async_run(url, relay, outage, **options)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("outage", ["cut", "freeze"])
async def test_a_session_whose_broker_is_gone_closes_within_the_bound(
    mode: str, outage: str, amqp_target: tuple[str, Any], amqp_relay: Relay
) -> None:
    exchange, queue = amqp_target
    url = relayed_amqp_url(amqp_relay)
    session_id, failed, took = await run(mode, url, amqp_relay, outage, exchange=exchange)
    check_unsent(session_id, failed, took, await read_all(queue))


# --- each publish of an amqp:// transport is bounded by its timeout ---
# (close_timeout above gives up on a flusher whose publish hangs: these look at the transport)

TIMEOUT = 1.0


def timed(publish: Any) -> tuple[str, float]:
    """Publish, expecting the bounded failure; its message and how long it took."""
    started = time.monotonic()
    with pytest.raises(TransportError) as failed:
        publish()
    return str(failed.value), time.monotonic() - started


def test_a_sync_amqp_publish_to_a_frozen_broker_fails_within_its_timeout(
    amqp_target: tuple[str, Any], amqp_relay: Relay
) -> None:
    exchange, _queue = amqp_target
    transport = open_transport(relayed_amqp_url(amqp_relay), exchange=exchange, timeout=TIMEOUT)
    try:
        transport.publish(b"[]")  # connected, confirming
        amqp_relay.freeze()
        why, took = timed(lambda: transport.publish(b"[]"))  # waiting for the confirm
        assert took < TIMEOUT + SLACK and "within 1.0s" in why
        why, took = timed(lambda: transport.publish(b"[]"))  # a new connection's handshake
        assert took < TIMEOUT + SLACK and "Timeout" in why
        amqp_relay.frozen.clear()  # the broker answers again: a fresh connection publishes
        transport.publish(b"[]")
    finally:
        transport.close()


async def test_an_async_amqp_publish_to_a_frozen_broker_fails_within_its_timeout(
    amqp_target: tuple[str, Any], amqp_relay: Relay
) -> None:
    exchange, _queue = amqp_target
    url = relayed_amqp_url(amqp_relay)
    transport = open_async_transport(url, exchange=exchange, timeout=TIMEOUT)
    try:
        await transport.publish(b"[]")
        amqp_relay.freeze()
        for _ in range(2):  # waiting for the confirm, then a new connection's handshake
            started = time.monotonic()
            with pytest.raises(TransportError):
                await transport.publish(b"[]")
            assert time.monotonic() - started < TIMEOUT + SLACK
        amqp_relay.frozen.clear()
        await transport.publish(b"[]")
    finally:
        await transport.close()


@pytest.fixture
def http_relay() -> Iterator[tuple[CaptureServer, Relay]]:
    with CaptureServer() as server:
        relay = Relay(server.port)
        yield server, relay
        relay.close()


def captured(server: CaptureServer) -> list[dict[str, Any]]:
    return [p for _, _, body in server.received() for p in orjson.loads(body)]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_session_over_http_whose_server_stops_answering(
    mode: str, http_relay: tuple[CaptureServer, Relay]
) -> None:
    server, relay = http_relay
    url = f"http://127.0.0.1:{relay.port}"
    session_id, failed, took = await run(mode, url, relay, "freeze")
    check_unsent(session_id, failed, took, captured(server))


# --- signals: a producer process whose broker stops answering ---


def start_producer(
    url: str, exchange: str, close_timeout: float, mode: str
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.client.producer", url, exchange, str(close_timeout), mode],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def ending(process: subprocess.Popen[str], seconds: float) -> tuple[dict[str, Any], float]:
    """Wait (bounded) for the process to end; what it printed last, and how long it took."""
    started = time.monotonic()
    try:
        out, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the producer was still running after {seconds}s")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, err
    return orjson.loads(lines[-1]), time.monotonic() - started


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_ends_a_producer_at_once(
    signum: signal.Signals, mode: str, amqp_target: tuple[str, Any], amqp_relay: Relay
) -> None:
    exchange, _queue = amqp_target
    # A close that would wait a minute: only the second signal can end it sooner.
    process = start_producer(relayed_amqp_url(amqp_relay), exchange, 60, mode)
    amqp_relay.freeze()
    time.sleep(0.3)  # a flush is now waiting for a confirm that never comes
    process.send_signal(signum)  # the first starts the bounded close
    time.sleep(0.5)
    assert process.poll() is None  # still closing
    process.send_signal(signum)
    report, took = ending(process, 10)
    assert took < SLACK
    assert report["ended"] == ("KeyboardInterrupt" if signum == signal.SIGINT else "Terminated")
    assert process.returncode != 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_one_signal_ends_a_producer_within_the_close_timeout(
    mode: str, amqp_target: tuple[str, Any], amqp_relay: Relay
) -> None:
    exchange, _queue = amqp_target
    process = start_producer(relayed_amqp_url(amqp_relay), exchange, BOUND, mode)
    amqp_relay.freeze()
    process.send_signal(signal.SIGTERM)
    report, took = ending(process, 30)
    assert took < BOUND + SLACK
    assert report["ended"] == "FlushFailed" and report["unsent"] > 0
    assert process.returncode != 0


# --- the batcher keeps its flusher whatever the packets or the transport do ---


def test_a_packet_json_cannot_hold_is_handed_back_and_the_rest_is_sent() -> None:
    url = f"memory://{os.urandom(8).hex()}"
    batcher = Batcher(open_transport(url), min_interval=0.0)
    batcher.start()
    odd = {"id": "v", "ts": 1, "value": object()}
    batcher.add({"id": "v", "ts": 0, "value": 0})
    batcher.add(odd)
    batcher.add({"id": "v", "ts": 2, "value": 2})
    with pytest.raises(FlushFailed, match="cannot be encoded as JSON") as failed:
        batcher.close()
    assert failed.value.unsent == [odd]
    sent = [
        p["ts"] for _, m in memory.received(url.removeprefix("memory://")) for p in orjson.loads(m)
    ]
    assert sent == [0, 2]


class Broken:
    """A transport with a bug: its first publish raises something that is no TransportError."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def publish(self, message: bytes) -> None:
        self.calls.append(message)
        if len(self.calls) == 1:
            raise KeyError("a bug")

    def close(self) -> None:
        pass


def test_a_transport_bug_does_not_end_the_flusher() -> None:
    transport = Broken()
    batcher = Batcher(transport, min_interval=0.05)
    batcher.start()
    batcher.add({"id": "v", "ts": 0})
    wait_until(lambda: len(transport.calls) == 1)
    batcher.close()  # the message is published at the next flush
    assert len(transport.calls) == 2 and batcher.thread.is_alive() is False
    assert batcher.error is None
