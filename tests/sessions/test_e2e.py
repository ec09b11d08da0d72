"""End to end: a producer program using ``Session`` (a subprocess) → RabbitMQ → the consumer →
Redis, with the HTTP server and a recording end hook in a full server thread. In each case the
session ends in the right state, every sample sent before the end is in history, and the end
hook (where the merge plugs in) ran once with the session's variables."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.settings import Settings
from tests.conftest import AMQP_URL, wait_for
from tests.sessions.helpers import FullServer, RecordingHook

PRODUCER = Path(__file__).with_name("producer.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(
    settings: Settings, amqp: Any, redis: Redis
) -> Iterator[tuple[FullServer, RecordingHook]]:
    hook = RecordingHook()
    with FullServer(dataclasses.replace(settings, completion_delay=30.0), on_end=hook) as running:
        yield running, hook


def producer(exchange: str, session_id: str, mode: str, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "LATEST_MIN_INTERVAL": "0.2", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(PRODUCER), AMQP_URL, exchange, session_id, mode, str(count)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def values(redis: Redis, variable: str) -> list[int]:
    entries = await redis.xrange(keys.history(keys.key_for(variable)))
    return sorted(orjson.loads(fields[b"d"])["value"] for _, fields in entries)


async def check(
    server: FullServer, hook: RecordingHook, redis: Redis, session_id: str, state: str, sent: int
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

        async def ended() -> bool:
            answer = await http.get(f"/sessions/{session_id}")
            return answer.status_code == 200 and answer.json()["state"] == state

        await wait_for(ended, within=30)
        await wait_for(lambda: hook.states(session_id) == [state], within=30)
        session = (await http.get(f"/sessions/{session_id}")).json()
    speed = await values(redis, "e2e/speed")
    rpm = await values(redis, "e2e/rpm")
    # every sample handed over before the end is in history (a Ctrl+C may land just after one
    # more sample was buffered, never before one that was counted)
    assert speed == list(range(len(speed))) and len(speed) >= sent
    assert rpm == [10 * i for i in range(len(rpm))] and len(rpm) >= sent - 1
    assert session["count"] == len(speed) + len(rpm)
    assert session["variables"] == {"e2e/speed": len(speed), "e2e/rpm": len(rpm)}
    assert hook.calls[0][1] == ["e2e/rpm", "e2e/speed"]


def finished(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=60)
    return dict(orjson.loads(out.strip().splitlines()[-1]), returncode=process.returncode, err=err)


@pytest.mark.redis_both
async def test_a_producer_that_finishes_closes_its_session(
    server: tuple[FullServer, RecordingHook], settings: Settings, redis: Redis
) -> None:
    running, hook = server
    result = finished(producer(settings.exchange, "e2e-closed", "finish", 3000))
    assert result["returncode"] == 0, result["err"]
    await check(running, hook, redis, "e2e-closed", "closed", result["sent"])
    assert len(await values(redis, "e2e/speed")) == 3000


async def test_an_exception_fails_the_session(
    server: tuple[FullServer, RecordingHook], settings: Settings, redis: Redis
) -> None:
    running, hook = server
    result = finished(producer(settings.exchange, "e2e-failed", "raise", 500))
    assert result["returncode"] == 1 and "the model diverged" in result["err"]
    await check(running, hook, redis, "e2e-failed", "failed", result["sent"])
    assert hook.calls[0][0].error == "RuntimeError: the model diverged"


async def test_sigint_truncates_the_session(
    server: tuple[FullServer, RecordingHook], settings: Settings, redis: Redis
) -> None:
    running, hook = server
    process = producer(settings.exchange, "e2e-truncated", "forever", 200)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    await wait_for(lambda: redis.exists(keys.history(keys.key_for("e2e/speed"))), within=20)
    process.send_signal(signal.SIGINT)
    result = finished(process)
    assert result["returncode"] != 0 and "KeyboardInterrupt" in result["err"]
    await check(running, hook, redis, "e2e-truncated", "truncated", result["sent"])


@pytest.mark.redis_both
async def test_a_closed_session_is_offloaded_and_merged(
    settings: Settings, amqp: Any, redis: Redis
) -> None:
    """With the default end hook, a session that closes has its variables' history moved out of
    Redis and merged: one merged object per variable, and every sample still readable."""
    with FullServer(dataclasses.replace(settings, completion_delay=30.0)) as running:
        result = finished(producer(settings.exchange, "e2e-merged", "finish", 1000))
        assert result["returncode"] == 0, result["err"]
        resources = running.resources
        assert resources is not None
        for variable in ("e2e/speed", "e2e/rpm"):
            k = keys.key_for(variable)

            async def merged(k: str = k) -> bool:
                return not await redis.exists(keys.history(k)) and bool(
                    resources.objects.list(keys.merged_prefix(k))
                )

            await wait_for(merged, within=30)
            assert resources.objects.list(keys.transfer_prefix(k)) == []
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
            page = (await http.get("/history/e2e%2Fspeed?limit=5000")).json()
        assert [e["doc"]["value"] for e in page["entries"]] == list(range(1000))
