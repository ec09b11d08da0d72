"""The batcher on the memory transport (an in-process backend, like broadcaster's): message
sizes, the rate limit (arrival times recorded by the transport), retries, the bounded buffer."""

from __future__ import annotations

import itertools
import time
import uuid

import orjson
import pytest

from ingest_client.batcher import Batcher
from ingest_client.errors import BufferFull, FlushFailed
from ingest_client.messages import encode
from ingest_client.options import min_interval_from_env
from ingest_client.transports import memory, open_transport


def channel() -> str:
    return f"memory://{uuid.uuid4().hex}"


def test_encode_keeps_order_and_every_message_under_the_limit() -> None:
    items = [{"id": f"v{i}", "ts": i, "pad": "x" * (i % 50)} for i in range(3000)]
    messages = encode(items, 10_000)
    assert len(messages) > 5
    assert all(len(m) <= 10_000 for m in messages)
    assert [i for m in messages for i in orjson.loads(m)] == items
    assert encode([{"big": "y" * 500}], 100) == [orjson.dumps([{"big": "y" * 500}])]


def test_min_interval_comes_from_the_environment() -> None:
    assert min_interval_from_env({}) == 1.0
    assert min_interval_from_env({"LATEST_MIN_INTERVAL": "0.25"}) == 0.25
    with pytest.raises(ValueError, match="LATEST_MIN_INTERVAL"):
        min_interval_from_env({"LATEST_MIN_INTERVAL": "soon"})


def test_flushes_are_spaced_by_the_interval_and_lose_nothing() -> None:
    url = channel()
    batcher = Batcher(open_transport(url), min_interval=0.2)
    batcher.start()
    end = time.monotonic() + 1.3
    n = 0
    while time.monotonic() < end:
        batcher.add({"id": "v", "ts": n})
        n += 1
        if n % 100 == 0:
            time.sleep(0.001)
    batcher.close()
    arrivals = memory.received(url.removeprefix("memory://"))
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert 4 <= len(arrivals) <= 8
    assert min(gaps) >= 0.2
    assert [p["ts"] for _, m in arrivals for p in orjson.loads(m)] == list(range(n))


def test_retries_never_duplicate_a_confirmed_message() -> None:
    url = channel()
    name = url.removeprefix("memory://")
    batcher = Batcher(open_transport(url), min_interval=0.0, max_message_bytes=200)
    batcher.start()
    memory.fail_next(name, 3)
    for i in range(40):
        batcher.add({"id": "v", "ts": i})
    batcher.close()
    values = [p["ts"] for _, m in memory.received(name) for p in orjson.loads(m)]
    assert values == list(range(40))


def test_a_full_buffer_blocks_then_raises_and_the_final_flush_failure_is_raised() -> None:
    url = channel()
    name = url.removeprefix("memory://")
    memory.fail_next(name, 10**9)  # the receiver is down for good
    batcher = Batcher(
        open_transport(url), min_interval=0.0, max_buffer=10, block_timeout=0.3, retry_for=1.0
    )
    batcher.start()
    for i in range(10):
        batcher.add({"id": "v", "ts": i})
    time.sleep(0.05)  # the flusher took them and is retrying
    for i in range(10):
        batcher.add({"id": "v", "ts": 10 + i})
    started = time.monotonic()
    with pytest.raises(BufferFull):
        batcher.add({"id": "v", "ts": 99})
    assert time.monotonic() - started >= 0.3
    with pytest.raises(FlushFailed):
        batcher.close(timeout=10)
    memory.fail_next(name, 0)
