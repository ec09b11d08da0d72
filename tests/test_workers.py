"""``latest-server serve --workers 2``: two real server processes on one port and one Redis. Both
answer (two pids), a websocket held by one sees packets ingested through the other, a session's
end step and a session's completion each happen once, and offload jobs started by either process
never move an entry twice."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pyarrow.parquet as pq
import pytest
import websockets
from redis.asyncio import Redis

from latest_server.settings import Settings
from tests.client.capture import CaptureServer
from tests.conftest import free_port
from tests.sessions.test_sessions import doc, sample
from tests.test_faults import Child, Spawn, latest_server, server_env, spawn, until

__all__ = ["spawn"]  # the fixture, used by name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

T0 = 1_700_000_000


@dataclasses.dataclass
class Workers:
    child: Child
    url: str

    async def pid(self, client: httpx.AsyncClient) -> int:
        return int((await client.get(f"{self.url}/healthz")).json()["pid"])

    async def pids(self, requests: int = 40) -> set[int]:
        """The pids that answered ``requests`` requests, each on a new connection."""
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=no_reuse) as client:
            return {await self.pid(client) for _ in range(requests)}

    async def client_of(self, wanted: Callable[[int], bool]) -> tuple[httpx.AsyncClient, int]:
        """A client whose (kept-alive) connection is held by a process ``wanted(pid)``."""
        for _ in range(100):
            client = httpx.AsyncClient(base_url=self.url)
            pid = await self.pid(client)
            if wanted(pid):
                return client, pid
            await client.aclose()
        raise AssertionError("no connection reached the process wanted")

    async def ingest(self, packets: list[dict[str, Any]]) -> None:
        """POST each packet on a new connection: both processes ingest."""
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.url, limits=no_reuse) as client:
            for packet in packets:
                answer = await client.post("/ingest", content=orjson.dumps(packet))
                assert answer.status_code == 200, answer.text
                assert answer.json()["rejected"] == [], answer.text


@pytest.fixture
def workers(settings: Settings, redis: Redis, spawn: Spawn, tmp_path: Path) -> Callable[..., Any]:
    async def start(**extra: str) -> Workers:
        port = free_port()
        no_amqp = dataclasses.replace(settings, amqp_url=None, objects_url=None)
        env = server_env(
            no_amqp,
            LATEST_PORT=str(port),
            LATEST_ES_PORT="0",
            LATEST_WORKERS="2",
            OBJECTS_URL=(tmp_path / "objects").as_uri(),
            **extra,
        )
        child = latest_server(spawn, "serve", env, "serve-workers")
        running = Workers(child, f"http://127.0.0.1:{port}")

        async def both_answer() -> bool:
            try:
                return len(await running.pids()) == 2
            except httpx.TransportError:
                return False

        await until("two processes answering", both_answer, 60, child)
        return running

    return start


async def test_two_processes_answer_and_share_the_live_feed(workers: Any) -> None:
    running: Workers = await workers()
    first = psutil.Process(running.child.pid)
    spawned = [p.pid for p in first.children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(spawned) == 1  # (the other child is multiprocessing's resource tracker)
    assert await running.pids() == {first.pid, *spawned}

    async with websockets.connect(running.url.replace("http", "ws") + "/ws") as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "ids": ["w"]}).decode())
        while orjson.loads(await ws.recv())["type"] != "live":
            pass
        holder = _process_holding(ws.local_address[1], await running.pids())
        client, other = await running.client_of(lambda pid: pid != holder)
        try:
            for n in range(5):
                answer = await client.post(
                    f"{running.url}/ingest", json={"id": "w", "ts": T0 + n, "n": n}
                )
                assert answer.json()["accepted"] == 1
            assert await running.pid(client) == other != holder
        finally:
            await client.aclose()
        seen = []  # entries of a variable that had none come as a backlog, then live
        while len(seen) < 5:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            entries = frame["entries"] if frame["type"] == "backlog" else [frame]
            seen += [(e["seq"], e["doc"]["n"]) for e in entries if "doc" in e]
        assert seen == [(n + 1, n) for n in range(5)]


def _process_holding(client_port: int, pids: set[int]) -> int:
    """The server process whose socket is connected to ``client_port`` on loopback."""
    holders = {
        pid
        for pid in pids
        for connection in psutil.Process(pid).net_connections(kind="tcp")
        if connection.raddr and connection.raddr.port == client_port
    }
    assert len(holders) == 1, holders
    return holders.pop()


async def test_a_session_ends_once_and_another_completes_once(workers: Any) -> None:
    with CaptureServer() as webhook:
        running: Workers = await workers(
            LATEST_COMPLETION_WEBHOOK=f"{webhook.url}/hook", LATEST_COMPLETION_DELAY="0.4"
        )
        packets = [doc("ended", "open"), doc("quiet", "open")]
        for i in range(10):
            packets += [sample("ended", "e", T0 + i), sample("quiet", "q", T0 + i)]
        await running.ingest([*packets, doc("ended", "closed", ts=T0 + 20)])

        def events() -> list[tuple[str, str]]:
            hooks = [orjson.loads(body) for _, path, body in webhook.received() if path == "/hook"]
            return sorted((h["session"]["id"], h["event"]) for h in hooks)

        await until("both sessions notified", lambda: len(events()) >= 2, 30, running.child)
        await asyncio.sleep(3)  # several detector and end-step ticks of both processes
        assert events() == [("ended", "session.closed"), ("quiet", "session.complete")]


async def test_offload_jobs_of_both_processes_move_each_entry_once(
    workers: Any, redis: Redis, tmp_path: Path
) -> None:
    used = int((await redis.info("memory"))["used_memory"])
    running: Workers = await workers(
        LATEST_OFFLOAD_MAX_BYTES=str(used + 1_500_000),
        LATEST_OFFLOAD_CHECK_INTERVAL="0.05",
    )
    variables = [f"o{i}" for i in range(20)]
    per_variable = 150
    filler = "x" * 400

    async def ingest(start: int) -> None:
        await running.ingest(
            [
                {"id": v, "ts": T0 + n, "n": n, "pad": filler}
                for n in range(start, per_variable, 5)
                for v in variables
            ]
        )

    await asyncio.gather(*(ingest(start) for start in range(5)))  # 5 clients at once
    objects = tmp_path / "objects"
    await until("offloads", lambda: len(list(objects.rglob("*.parquet"))) > 20, 60, running.child)

    seqs: dict[str, list[int]] = {}
    for path in objects.rglob("transfer/*.parquet"):
        seqs.setdefault(path.parts[-3], []).extend(pq.read_table(path, columns=["seq"])["seq"])
    assert seqs, "nothing offloaded"
    for key, found in seqs.items():
        assert len(found) == len(set(found)), f"{key}: an entry moved twice"
    async with httpx.AsyncClient(base_url=running.url) as client:
        for v in variables:
            answer = (await client.get(f"/history/{v}", params={"limit": 1000})).json()
            assert sorted(e["doc"]["n"] for e in answer["entries"]) == list(range(per_variable))


async def test_a_worker_that_dies_is_started_again(workers: Any) -> None:
    running: Workers = await workers()
    first = running.child.pid
    (worker,) = await running.pids() - {first}
    psutil.Process(worker).kill()

    async def replaced() -> bool:
        pids = await running.pids()
        return len(pids) == 2 and worker not in pids

    await until("a new worker answering", replaced, 60, running.child)
    assert first in await running.pids()
    assert await running.child.terminate() == 0, running.child.describe()


async def test_with_the_embedded_valkey_the_first_process_owns_it(
    spawn: Spawn, tmp_path: Path
) -> None:
    """No REDIS_URL: the first process runs the Valkey and holds the data directory; the worker
    uses its socket. Stopped, both exit, and the directory is free for the next server."""
    port = free_port()
    env = server_env(
        None,
        LATEST_DATA_DIR=str(tmp_path / "data"),
        LATEST_PORT=str(port),
        LATEST_ES_PORT="0",
        LATEST_WORKERS="2",
    )
    env.pop("REDIS_URL", None)
    env.pop("AMQP_URL", None)
    child = latest_server(spawn, "serve", env, "embedded-workers")
    running = Workers(child, f"http://127.0.0.1:{port}")

    async def both_answer() -> bool:
        try:
            return len(await running.pids()) == 2
        except httpx.TransportError:
            return False

    await until("two processes answering", both_answer, 60, child)
    valkeys = [
        p for p in psutil.Process(child.pid).children(recursive=True) if "valkey" in p.name()
    ]
    assert valkeys, "the first process runs the Valkey"
    await running.ingest([{"id": f"e{i}", "ts": T0 + i} for i in range(20)])
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=running.url, limits=no_reuse) as client:
        for i in range(20):  # read back through both processes
            assert (await client.get(f"/latest/e{i}")).json() == {"id": f"e{i}", "ts": T0 + i}
    assert await child.terminate() == 0, child.describe()
    assert not any(p.is_running() for p in valkeys)
    again = latest_server(spawn, "serve", env, "embedded-again")
    await until("the next server answering", lambda: _answers(running.url), 60, again)
    assert (await _get(f"{running.url}/latest/e7")) == {"id": "e7", "ts": T0 + 7}
    assert await again.terminate() == 0, again.describe()  # and its Valkey with it


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def _get(url: str) -> Any:
    async with httpx.AsyncClient() as client:
        return (await client.get(url)).json()


@pytest.mark.parametrize("when", ["serving", "starting"])
async def test_workers_stop_when_the_first_process_is_killed(
    settings: Settings, redis: Redis, spawn: Spawn, when: str
) -> None:
    """SIGKILLed, the first process cannot stop its workers: each notices and stops by itself,
    also one that was still starting when it happened."""
    port = free_port()
    env = server_env(
        dataclasses.replace(settings, amqp_url=None),
        LATEST_PORT=str(port),
        LATEST_ES_PORT="0",
        LATEST_WORKERS="2",
    )
    child = latest_server(spawn, "serve", env, "serve-workers")
    first = psutil.Process(child.pid)

    def worker() -> psutil.Process | None:
        spawned = [p for p in first.children() if "spawn_main" in " ".join(p.cmdline())]
        return spawned[0] if spawned else None

    await until("a worker started", lambda: worker() is not None, 60, child)
    found = worker()
    assert found is not None
    if when == "serving":
        running = Workers(child, f"http://127.0.0.1:{port}")

        async def both_answer() -> bool:
            try:
                return len(await running.pids()) == 2
            except httpx.TransportError:
                return False

        await until("two processes answering", both_answer, 60, child)
    child.kill()
    await asyncio.to_thread(found.wait, 30)  # psutil.TimeoutExpired if it keeps running
