"""The metrics of history leaving Redis and of slow websocket clients, read from the process's
registry (the server runs in this process): offload and merge runs by outcome, the entries
and bytes they move, the bytes read back from the object store (file:// and S3 through moto's
server), the Redis memory ratio, and 4008 closes."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable

import orjson
import pytest
import websockets
from prometheus_client import REGISTRY

from latest_server import keys
from latest_server.resources import Resources
from latest_server.stores.segments import Window
from tests.conftest import ServerThread, packet, unique, ws_url


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def object_bytes(stores: Resources, key: str) -> int:
    found = stores.objects.list(keys.history_prefix(key))
    return sum(stores.objects.size(info.name) for info in found)


async def test_offload_and_merge_count_runs_entries_and_bytes(stores: Resources) -> None:
    v = unique("v")
    key = keys.key_for(v)
    done = {"job": "offload", "outcome": "done"}
    before = {
        "offload": sample("latest_jobs_total", **done),
        "merge": sample("latest_jobs_total", job="merge", outcome="done"),
        "busy": sample("latest_jobs_total", job="offload", outcome="busy"),
        "moved": sample("latest_job_entries_total", job="offload"),
        "merged": sample("latest_job_entries_total", job="merge"),
        "written": sample("latest_job_bytes_total", job="offload"),
        "merge_written": sample("latest_job_bytes_total", job="merge"),
        "read": sample("latest_object_read_bytes_total"),
    }
    await stores.ingestor.write_batch([packet(v, n) for n in range(40)])
    report = await stores.offloader.run_job(everything=True)
    assert report is not None and report.entries >= 40
    await stores.ingestor.write_batch([packet(v, n) for n in range(40, 60)])
    await stores.offloader.run_job(everything=True)
    transfers = await asyncio.to_thread(object_bytes, stores, key)
    assert sample("latest_jobs_total", **done) - before["offload"] == 2
    moved = sample("latest_job_entries_total", job="offload") - before["moved"]
    assert moved >= 60  # other variables of this database may move too
    written = sample("latest_job_bytes_total", job="offload") - before["written"]
    assert written >= transfers > 0

    lock = stores.offloader.lock()  # another process holds the offload lock
    assert await lock.acquire()
    try:
        assert await stores.offloader.run_job(everything=True) is None
    finally:
        await lock.release()
    assert sample("latest_jobs_total", job="offload", outcome="busy") - before["busy"] == 1

    read_before = sample("latest_object_read_bytes_total")
    merged = await stores.merger.merge_variable(v)
    assert merged.entries == 60
    assert sample("latest_jobs_total", job="merge", outcome="done") - before["merge"] == 1
    assert sample("latest_job_entries_total", job="merge") - before["merged"] == 60
    merged_size = await asyncio.to_thread(object_bytes, stores, key)
    assert sample("latest_job_bytes_total", job="merge") - before["merge_written"] == merged_size
    assert sample("latest_object_read_bytes_total") - read_before > 0  # the merge read them

    counted = stores.objects.bytes_read  # type: ignore[attr-defined]
    read_before = sample("latest_object_read_bytes_total")
    page = await stores.history.read(key, Window(-(2**62), 2**62), None)
    assert page.entries.num_rows == 60
    read = stores.objects.bytes_read - counted  # type: ignore[attr-defined]
    assert read > 0
    assert sample("latest_object_read_bytes_total") - read_before == read


async def test_the_memory_ratio_is_what_the_trigger_read(stores: Resources) -> None:
    offloader = dataclasses.replace(stores.offloader, max_bytes=10**12)
    info = await stores.redis.info("memory")
    if int(info.get("maxmemory", 0)):
        pytest.fail("the test Redis has a maxmemory: LATEST_OFFLOAD_MAX_BYTES is not used")
    ratio = await offloader.memory_ratio()
    assert ratio is not None and 0 < ratio < 1
    assert sample("latest_redis_memory_ratio") == ratio


async def paused_client(
    resources: Resources, server: ServerThread, v: str, *, read_after: bool
) -> websockets.ConnectionClosed | None:
    """A client that reads nothing while ~10 MB of entries of ``v`` are written, then reads
    again until the server closes it (``read_after``) or closes itself."""
    sock = socket.socket()  # a small receive buffer: the server's writes soon wait
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    async with websockets.connect(ws_url(server), sock=sock, max_queue=1, compression=None) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "ids": [v]}).decode())
        while orjson.loads(await ws.recv())["type"] != "live":
            pass
        for batch in range(100):
            await resources.ingestor.write_batch(
                [packet(v, batch * 50 + n, pad="x" * 2000) for n in range(50)]
            )
        if not read_after:
            return None
        await asyncio.sleep(3)
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            return closed


async def test_a_slow_client_is_counted_and_read_from_the_stores(
    resources: Resources, http_server: Callable[..., ServerThread]
) -> None:
    """Its queue overflows: the entries it had queued are read again from the stores."""
    server = http_server(resources.settings, ws_queue_bytes=16_384, ws_send_timeout=60.0)
    overflow_before = sample("latest_ws_slow_clients_total", action="overflow")
    catchups_before = sample("latest_ws_catchup_reads_total")
    await paused_client(resources, server, unique("z"), read_after=False)
    assert sample("latest_ws_slow_clients_total", action="overflow") - overflow_before >= 1
    assert sample("latest_ws_catchup_reads_total") - catchups_before >= 1


async def test_a_client_that_stops_reading_is_counted_when_closed_with_4008(
    resources: Resources, http_server: Callable[..., ServerThread]
) -> None:
    server = http_server(resources.settings, ws_queue_bytes=16_384, ws_send_timeout=1.0)
    closed_before = sample("latest_ws_slow_clients_total", action="closed")
    closed = await paused_client(resources, server, unique("z"), read_after=True)
    assert closed is not None and closed.rcvd is not None and closed.rcvd.code == 4008
    assert sample("latest_ws_slow_clients_total", action="closed") - closed_before == 1
