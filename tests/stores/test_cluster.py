"""The write path on a real Redis Cluster (tests/cluster.py: three primaries, a replica each):
a batch over every primary is one pass of per-node calls with the outcomes one Redis gives; a
slot the client places on the wrong node, and a node without the scripts, cost a resend, never a
packet; connect, the safety check, memory and PING visit every primary."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import AskError, MovedError, ResponseError

from latest_server import keys
from latest_server.errors import ConfigError, StoreRefused, StoreUnavailable, UnsafeRedisConfig
from latest_server.offload import Offloader
from latest_server.packets import Packet, PacketParser
from latest_server.redact import redact
from latest_server.redis_client import (
    check_server,
    connect,
    each_primary,
    load_scripts,
    store_error,
)
from latest_server.redis_wire import node_of, ready, slot_of, tag_slot
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores.latest_cluster import ClusterLatestStore
from latest_server.stores.latest_redis import FIRST_CHUNK, WRITE_CHUNK, RedisLatestStore
from latest_server.stores.objects_file import FileObjectStore
from tests.cluster import Cluster
from tests.conftest import REDIS_URL

PARSER = PacketParser(Settings())


@pytest.fixture
async def cluster_client(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = connect(redis_cluster_url)
    assert isinstance(client, RedisCluster)
    await client.flushdb()  # every primary: the cluster is the tests' own
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def single() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def randomized(seed: int, variables: int = 90, per_variable: int = 12) -> list[Packet]:
    """Packets of many variables, shuffled, some sent twice (in other bytes or the same), some
    older than what came before, some with an explicit version type."""
    rng = random.Random(seed)
    docs: list[dict[str, Any]] = []
    for v in range(variables):
        for n in range(per_variable):
            docs.append({"id": f"c{seed}/{v}", "ts": 1_700_000_000 + rng.randrange(50), "n": n})
    rng.shuffle(docs)
    docs += rng.sample(docs, len(docs) // 5)  # redeliveries
    rng.shuffle(docs)
    packets = []
    for doc in docs:
        item = PARSER.parse_document(0, doc)
        assert isinstance(item, Packet)
        if rng.random() < 0.1:
            item = dataclasses.replace(item, version_type=rng.choice(["external_gte", "create"]))
        packets.append(item)
    return packets


def comparable(outcome: Any) -> tuple[Any, ...]:
    """An outcome without its epoch (each Redis starts epochs from its own clock)."""
    return (outcome.applied, outcome.seq, outcome.current, outcome.existed, outcome.entry)


def calls_for(count: int) -> int:
    """write.lua calls for ``count`` packets of one node: chunks of 20, 30, 45, 67, then 100."""
    calls, size = 0, FIRST_CHUNK
    while count > 0:
        count -= size
        calls += 1
        size = min(size * 3 // 2, WRITE_CHUNK)
    return calls


async def evalsha_calls(client: RedisCluster) -> dict[str, int]:
    stats = await each_primary(client, "INFO", "commandstats")
    return {
        node: int(info.get("cmdstat_evalsha", {}).get("calls", 0)) for node, info in stats.items()
    }


async def test_a_batch_over_every_primary_is_one_call_per_chunk_of_each_node(
    cluster_client: RedisCluster, single: Redis, redis_cluster_nodes: Cluster
) -> None:
    packets = randomized(seed=3)
    await ready(cluster_client)
    on_node: dict[str, int] = {}
    sample: dict[str, str] = {}
    for p in packets:
        node = node_of(cluster_client, keys.latest(p.key)).name
        on_node[node] = on_node.get(node, 0) + 1
        sample[node] = keys.latest(p.key)
    assert len(on_node) == 3  # the batch spans all three primaries
    assert all(tag_slot(p.key) == slot_of(keys.latest(p.key)) for p in packets)
    for node, name in sample.items():  # as the cluster itself says (CLUSTER KEYSLOT, SLOTS)
        assert redis_cluster_nodes.primary_of(name).address == node

    one = await RedisLatestStore.open(single)
    expected = await one.write_batch(packets)
    store = await ClusterLatestStore.open(cluster_client)
    before = await evalsha_calls(cluster_client)
    outcomes = await store.write_batch(packets)
    after = await evalsha_calls(cluster_client)

    assert [comparable(o) for o in outcomes] == [comparable(o) for o in expected]
    assert {node: after[node] - before[node] for node in after} == {
        node: calls_for(count) for node, count in on_node.items()
    }  # one pass: no call sent twice, none per slot
    ids = sorted({p.variable_id for p in packets})
    assert await store.mget(ids) == await one.mget(ids)
    for variable in ids[:10]:
        k = keys.key_for(variable)
        assert [fields for _, fields in await cluster_client.xrange(keys.history(k))] == [
            fields for _, fields in await single.xrange(keys.history(k))
        ]


async def test_grouping_by_slot_gives_the_same_outcomes(
    cluster_client: RedisCluster, single: Redis
) -> None:
    packets = randomized(seed=4, variables=30, per_variable=5)
    expected = await (await RedisLatestStore.open(single)).write_batch(packets)
    store = ClusterLatestStore(cluster_client, await load_scripts(cluster_client), cross_slot=False)
    outcomes = await store.write_batch(packets)
    assert [comparable(o) for o in outcomes] == [comparable(o) for o in expected]


@pytest.mark.parametrize("cross_slot", [True, False], ids=["by-node", "by-slot"])
async def test_a_slot_placed_on_the_wrong_node_is_resent_to_its_own(
    cluster_client: RedisCluster, single: Redis, cross_slot: bool
) -> None:
    """The client's slot map is wrong for some slots (as after a failover or a reshard the
    client has not seen): those packets are refused before they are written (MOVED, or a key
    that is not local) and sent again once the map is corrected. All of a variable's packets
    are refused or none, so the outcomes are one Redis' outcomes, order-dependent ones (ties,
    create) included."""
    packets = randomized(seed=5, variables=40, per_variable=6)
    one = await RedisLatestStore.open(single)
    expected = await one.write_batch(packets)
    store = ClusterLatestStore(
        cluster_client, await load_scripts(cluster_client), cross_slot=cross_slot
    )
    await ready(cluster_client)
    cache = cluster_client.nodes_manager.slots_cache
    primaries = cluster_client.get_primaries()
    misplaced = {slot_of(keys.latest(p.key)) for p in packets[:15]}
    for slot in misplaced:
        right = cache[slot][0]
        cache[slot] = [next(node for node in primaries if node != right)]
    outcomes = await store.write_batch(packets)

    assert [comparable(o) for o in outcomes] == [comparable(o) for o in expected]
    refused = sum(1 for p in packets if slot_of(keys.latest(p.key)) in misplaced)
    assert store.resent == refused  # those packets only, once
    ids = sorted({p.variable_id for p in packets})
    assert await store.mget(ids) == await one.mget(ids)
    for k in {p.key for p in packets}:
        entries = [fields for _, fields in await cluster_client.xrange(keys.history(k))]
        assert entries == [fields for _, fields in await single.xrange(keys.history(k))]


async def test_a_primary_without_the_scripts_loads_them_and_takes_the_batch(
    cluster_client: RedisCluster, single: Redis
) -> None:
    """A replica promoted to primary has no scripts (they are not replicated): NOSCRIPT from one
    node loads them there and resends that node's calls only."""
    packets = randomized(seed=6, variables=30, per_variable=4)
    expected = await (await RedisLatestStore.open(single)).write_batch(packets)
    store = await ClusterLatestStore.open(cluster_client)
    flushed = cluster_client.get_primaries()[1]
    await cluster_client.execute_command("SCRIPT FLUSH", target_nodes=flushed)
    outcomes = await store.write_batch(packets)
    assert [comparable(o) for o in outcomes] == [comparable(o) for o in expected]
    on_flushed = sum(1 for p in packets if node_of(cluster_client, keys.latest(p.key)) == flushed)
    assert store.resent == on_flushed  # that node's packets only, once
    (loaded,) = await cluster_client.script_exists(store.scripts.shas["write"])
    assert loaded  # on every primary again


def test_cluster_urls_are_parsed_and_unsupported_ones_refused() -> None:
    client = connect("redis+cluster://user:secret@10.0.0.1:7000,10.0.0.2:7001/0?socket_timeout=2")
    assert isinstance(client, RedisCluster)
    assert [(n.host, n.port) for n in client.startup_nodes] == [
        ("10.0.0.1", 7000),
        ("10.0.0.2", 7001),
    ]
    kwargs = client.startup_nodes[0].connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["socket_timeout"]) == (
        "user",
        "secret",
        2.0,
    )
    secure = connect("rediss+cluster://10.0.0.1:7000")
    assert isinstance(secure, RedisCluster)
    assert secure.startup_nodes[0].connection_class.__name__ == "SSLConnection"
    assert "secret" not in redact("redis+cluster://user:secret@10.0.0.1:7000,10.0.0.2:7001")
    with pytest.raises(ConfigError, match="database 0"):
        connect("redis+cluster://10.0.0.1:7000/2")
    with pytest.raises(ConfigError, match="at least one"):
        connect("redis+cluster:///0")


async def test_a_plain_url_to_a_cluster_node_is_refused(redis_cluster_nodes: Cluster) -> None:
    node = redis_cluster_nodes.primaries()[0]
    client = connect(f"redis://{node.address}/0")
    try:
        with pytest.raises(ConfigError, match=r"redis\+cluster://"):
            await check_server(client)
    finally:
        await client.aclose()


async def test_the_safety_check_and_ping_visit_every_primary(
    cluster_client: RedisCluster,
) -> None:
    store = await ClusterLatestStore.open(cluster_client)
    assert await store.ping()
    last = cluster_client.get_primaries()[-1]
    await cluster_client.config_set("maxmemory-policy", "allkeys-lru", target_nodes=last)
    try:
        with pytest.raises(UnsafeRedisConfig):
            await check_server(cluster_client)
    finally:
        await cluster_client.config_set("maxmemory-policy", "noeviction", target_nodes=last)
    warnings = await check_server(cluster_client)
    assert warnings and "3 of 3 primaries" in warnings[0]


async def test_offload_moves_the_fullest_primarys_variables_first(
    cluster_client: RedisCluster, tmp_path: Path
) -> None:
    """One primary past the ratio is enough to offload; the variables moved are that
    primary's, and the other primaries' history stays in Redis."""
    packets = randomized(seed=7, variables=60, per_variable=20)
    store = await ClusterLatestStore.open(cluster_client)
    await store.write_batch(packets)
    full = cluster_client.get_primaries()[0]
    used = int((await cluster_client.info("memory", target_nodes=full))["used_memory"])
    await cluster_client.config_set("maxmemory", used * 3 // 2, target_nodes=full)
    try:
        offloader = Offloader(
            cluster_client,
            store.scripts,
            FileObjectStore(tmp_path.as_uri()),
            ratio=0.3,  # that primary is at about 0.67
            target_ratio=0.2,  # not reachable by moving history alone: every variable of it moves
        )
        ratios = await offloader.memory_ratios()
        assert set(ratios) == {full.name}  # the others have no limit
        report = await offloader.run_job()
        assert report is not None and report.variables
        left = {p.key for p in packets if await cluster_client.exists(keys.history(p.key))}
        moved = {p.key for p in packets} - left
        assert {node_of(cluster_client, keys.history(k)).name for k in moved} == {full.name}
        assert all(node_of(cluster_client, keys.history(k)).name != full.name for k in left)
    finally:
        await cluster_client.config_set("maxmemory", 0, target_nodes=full)


async def test_a_cluster_out_of_reach_stops_the_start_in_one_line(tmp_path: Path) -> None:
    settings = Settings(redis_url="redis+cluster://127.0.0.1:1,127.0.0.1:2", data_dir=str(tmp_path))
    with pytest.raises(
        StoreUnavailable, match=r"cannot reach Redis at redis\+cluster://.*REDIS_URL"
    ):
        await Resources.open(settings)


async def test_a_primary_failing_over_is_unavailability_then_its_replica_takes_the_writes(
    cluster_client: RedisCluster, single: Redis, redis_cluster_nodes: Cluster
) -> None:
    """While a primary is down, a batch touching it is StoreUnavailable (the edges retry it:
    nothing acknowledged); once its replica took over (without the scripts, and the client's
    slot map still naming the old primary), the same batch is written whole: every packet once,
    the latest documents and history one Redis has."""
    packets = randomized(seed=8, variables=30, per_variable=4)
    expected = await (await RedisLatestStore.open(single)).write_batch(packets)
    store = await ClusterLatestStore.open(cluster_client)
    await ready(cluster_client)
    victim = redis_cluster_nodes.primary_of(keys.latest(packets[0].key))
    replica = redis_cluster_nodes.replica_of(victim)
    victim_slots = {
        slot
        for slot, nodes in cluster_client.nodes_manager.slots_cache.items()
        if nodes[0].port == victim.port
    }
    victim.stop()
    try:
        # At once, before the replica can take over (cluster-node-timeout is 1 s here):
        assert not await store.ping()  # /readyz: not ready while a primary is out of reach
        with pytest.raises(StoreUnavailable):
            await store.write_batch(packets)
        deadline = time.monotonic() + 30
        while "master" not in replica.cli("role").split("\n", 1)[0]:
            assert time.monotonic() < deadline, "the replica did not take over"
            await asyncio.sleep(0.1)
        outcomes = None
        while outcomes is None:  # the edges' retry: until the cluster is ok again
            try:
                outcomes = await store.write_batch(packets)
            except StoreUnavailable:
                assert time.monotonic() < deadline, "writes did not resume after the failover"
                await asyncio.sleep(0.2)
        # The other primaries took their packets in the first try (as one Redis may take part
        # of a batch before it goes away): the retry finds those as redeliveries. The failed
        # over primary's packets are written now, with one Redis' outcomes.
        moved = [i for i, p in enumerate(packets) if slot_of(keys.latest(p.key)) in victim_slots]
        assert await store.ping()
        assert moved and [comparable(outcomes[i]) for i in moved] == [
            comparable(expected[i]) for i in moved
        ]
        ids = sorted({p.variable_id for p in packets})
        assert await store.mget(ids) == await (await RedisLatestStore.open(single)).mget(ids)
        for k in {p.key for p in packets}:
            assert await cluster_client.xlen(keys.history(k)) == await single.xlen(keys.history(k))
    finally:
        victim.start()  # back as a replica of its former one
        redis_cluster_nodes.wait_ok()


def test_a_slot_still_moving_or_a_cluster_down_is_a_refusal_for_now() -> None:
    """MOVED or ASK met after the resends (a reshard, a failover in progress), and a script
    meeting a cluster that is down, are StoreRefused: a 503 or a nack, retried, never a 500."""
    for exc in (MovedError("3999 127.0.0.1:6381"), AskError("3999 127.0.0.1:6381")):
        error = store_error(exc)
        assert isinstance(error, StoreRefused) and error.condition == "TRYAGAIN"
    # a script's command on a node that sees the cluster down (what Redis 7 answers then)
    down = ResponseError(
        "user_script:124: ERR Script attempted to execute a command while the cluster is down "
        "script: d4a6f3d1438dffb21d0190cd0714a1582ee8a94c, on @user_script:124."
    )
    error = store_error(down)
    assert isinstance(error, StoreRefused) and error.condition == "CLUSTERDOWN"
