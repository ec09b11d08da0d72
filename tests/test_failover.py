"""A primary of the Redis Cluster dies mid-run (SIGKILL) and its replica is promoted by the
cluster: a real server (uvicorn) on the tests' 3-primary cluster (tests/cluster.py), producers
writing continuously through ``POST /ingest`` and websocket subscribers
(``ingest_client.subscribe``)
on variables spread over the three primaries.

What must hold: writes pause (503 or slow answers) and resume; every packet whose write was
acknowledged (HTTP 200) is in history and the latest document is the newest one; each subscriber
got every history entry of its variables exactly once, in seq order, or a ``reset`` naming what
was lost (never a silent gap)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from ingest_client import Reset
from latest_server import keys
from latest_server.settings import Settings
from tests.cluster import Cluster, Node, redis_cluster
from tests.conftest import ServerThread, hub_of, ws_url
from tests.web.test_ws_faults import Client, cancel

T0 = 1_700_000_000
RUN_BEFORE, RUN_AFTER = 1.5, 2.5  # seconds of writes before the kill and after writes resume


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with redis_cluster() as running:
        yield running


@dataclasses.dataclass
class Producer:
    """Writes packet n = 1, 2, ... of each of its variables, one request per n, retrying a
    request until it is acknowledged (a retry is a duplicate the write path drops)."""

    url: str
    variables: list[str]
    acked: dict[str, set[int]] = dataclasses.field(default_factory=dict)
    refused: int = 0  # 503 answers
    failed: int = 0  # transport errors
    slowest: float = 0.0  # seconds, from a request's first try to its acknowledgement
    acked_at: float = 0.0  # monotonic time of the last acknowledgement

    async def run(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        self.acked = {v: set() for v in self.variables}
        n = 0
        while not stop.is_set():
            n += 1
            body = orjson.dumps([{"id": v, "ts": T0 + n / 1000, "n": n} for v in self.variables])
            started = time.monotonic()
            while True:
                try:
                    answer = await http.post(f"{self.url}/ingest", content=body, timeout=15)
                except httpx.TransportError:
                    self.failed += 1
                    await asyncio.sleep(0.05)
                    continue
                if answer.status_code == 200:
                    assert answer.json()["rejected"] == [], answer.text
                    break
                assert answer.status_code == 503, answer.text  # unavailable: try again
                self.refused += 1
                await asyncio.sleep(0.05)
            self.acked_at = time.monotonic()
            self.slowest = max(self.slowest, self.acked_at - started)
            for v in self.variables:
                self.acked[v].add(n)
            await asyncio.sleep(0.01)


def spread(cluster: Cluster, per_primary: int) -> dict[int, list[str]]:
    """Variable ids whose keys are on each primary (by port), ``per_primary`` each."""
    found: dict[int, list[str]] = {node.port: [] for node in cluster.primaries()}
    n = 0
    while any(len(ids) < per_primary for ids in found.values()):
        variable = f"fo/{n}"
        n += 1
        port = cluster.primary_of(keys.meta(keys.key_for(variable))).port
        if len(found[port]) < per_primary:
            found[port].append(variable)
    return found


def serving(cluster: Cluster, key: str) -> Node | None:
    """The primary of ``key`` now; None while its slot's primary is a stopped node."""
    try:
        return cluster.primary_of(key)
    except (StopIteration, RuntimeError):
        return None


def kill(node: Node) -> None:
    """A crash, not a shutdown: no chance to hand anything to the replica first."""
    assert node.process is not None
    node.process.kill()
    node.process.wait(10)
    node.process = None


async def history(http: httpx.AsyncClient, url: str, variable: str) -> list[tuple[int, int, int]]:
    """(seq, ts, n) of every history entry of ``variable``, in seq order."""
    answer = await http.get(f"{url}/history/{variable}", params={"limit": 10_000}, timeout=30)
    assert answer.status_code == 200, answer.text
    return sorted((e["seq"], e["ts"], e["doc"]["n"]) for e in answer.json()["entries"])


def check_subscriber(client: Client, variable: str, stored: dict[int, int]) -> None:
    """``client`` got every stored entry (seq → ts) of ``variable`` once, in seq order, or a
    reset named its seq as lost. A reset's seqs may come again (history went back: the next
    entries took them), and then the later copy is the stored one."""
    lost = [r.lost for r in client.resets if r.id == variable and r.lost is not None]

    def named(seq: int) -> bool:
        return any(a <= seq <= b for a, b in lost)

    view: dict[int, int] = {}
    previous = None
    for seq, ts in zip(client.got[variable], client.ts[variable], strict=True):
        if previous is not None:
            if seq <= previous:  # back to the first seq of a reset
                assert any(a == seq for a, _ in lost), (client.name, variable, previous, seq)
            else:  # the next one, or past seqs a reset named
                assert all(named(s) for s in range(previous + 1, seq)), (client.name, previous, seq)
        view[seq] = ts
        previous = seq
    for seq, ts in stored.items():
        if seq in view or not named(seq):
            assert view.get(seq) == ts, (
                f"{client.name}/{variable}: seq {seq} missed or not as stored"
            )
    assert all(seq in stored or named(seq) for seq in view), (client.name, variable)


async def test_a_primary_killed_mid_run_loses_nothing_acknowledged_and_no_entry_silently(
    cluster: Cluster, settings: Settings, tmp_path: object
) -> None:
    by_port = spread(cluster, per_primary=2)
    variables = [v for ids in by_port.values() for v in ids]
    config = dataclasses.replace(
        settings,
        redis_url=cluster.url,
        objects_url=f"file://{tmp_path}/objects",
        ws_probe_interval=0.5,
        redis_wait_replicas=1,  # an acknowledged batch is on the replica that takes over
    )
    with ServerThread(config) as server:
        url = server.url
        producers = [Producer(url, variables[0::2]), Producer(url, variables[1::2])]
        clients = [
            Client("all", [ws_url(server)], variables),
            Client("even", [ws_url(server)], variables[0::2]),
            Client("odd", [ws_url(server)], variables[1::2]),
        ]
        done, stop = asyncio.Event(), asyncio.Event()
        readers = [
            asyncio.create_task(c.run(random.Random(i), None, done)) for i, c in enumerate(clients)
        ]
        async with httpx.AsyncClient() as http:
            writers = [asyncio.create_task(p.run(http, stop)) for p in producers]
            await asyncio.sleep(RUN_BEFORE)
            victim_port = next(iter(by_port))
            victim = next(node for node in cluster.running() if node.port == victim_port)
            replica = cluster.replica_of(victim)
            killed_at = time.monotonic()
            kill(victim)
            moved_key = keys.meta(keys.key_for(by_port[victim_port][0]))
            deadline = killed_at + 30
            while await asyncio.to_thread(serving, cluster, moved_key) is not replica:
                assert time.monotonic() < deadline, "the replica was not promoted"
                await asyncio.sleep(0.2)
            # Its supervisor starts the dead node again: it rejoins as the new primary's replica,
            # which the writes of that primary wait for (LATEST_REDIS_WAIT_REPLICAS).
            await asyncio.to_thread(victim.start)
            while not all(p.acked_at > killed_at + 0.5 for p in producers):
                assert time.monotonic() < deadline, "writes did not resume"
                await asyncio.sleep(0.05)
            await asyncio.sleep(RUN_AFTER)
            stop.set()
            await asyncio.gather(*writers)

            stored: dict[str, list[tuple[int, int, int]]] = {}
            for v in variables:
                stored[v] = await history(http, url, v)
                producer = next(p for p in producers if v in p.variables)
                in_history = {n for _, _, n in stored[v]}
                assert producer.acked[v] <= in_history, f"{v}: acknowledged and lost"
                latest = await http.get(f"{url}/latest/{v}")
                assert latest.json()["n"] == max(producer.acked[v]) == max(in_history)

            deadline = time.monotonic() + 30
            while any(
                (c.got[v] or [0])[-1] < stored[v][-1][0] for c in clients for v in c.variables
            ):
                assert time.monotonic() < deadline, [
                    (c.name, v, (c.got[v] or [0])[-1], stored[v][-1][0])
                    for c in clients
                    for v in c.variables
                ]
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)  # nothing more may come
            reconnects = hub_of(server).feed.reconnects
        done.set()
        await cancel(*readers)

    for client in clients:
        for v in client.variables:
            check_subscriber(client, v, {seq: ts for seq, ts, _ in stored[v]})
        assert all(isinstance(r, Reset) and r.lost is not None for r in client.resets)
    assert reconnects >= 1  # the dead primary's feed connection was lost and moved
    pause = max(p.slowest for p in producers)
    refused = sum(p.refused + p.failed for p in producers)
    print(f"writes paused {pause:.2f} s at most; {refused} refused or failed tries")
    assert pause > 0.5 or refused > 0  # the kill was felt by the writers
