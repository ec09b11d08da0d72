"""The live feed on a real 3-primary Redis Cluster (tests/cluster.py): one pub/sub connection per
primary, each channel on the node that owns its slot, and a channel whose node fails over, is
stopped, or answers MOVED is subscribed again where its slot is served, with ``confirmed`` for
its listeners only. Messages are published the way write.lua does: SPUBLISH from a script that
runs on the channel's node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from latest_server import keys
from latest_server.feed import LiveFeed
from tests.cluster import Cluster, Node, redis_cluster

PUBLISH = "return redis.call('SPUBLISH', ARGV[1], ARGV[2])"  # as write.lua: channel in ARGV


class Recorder:
    """A listener: what the feed gave it, and how often it was told to refill."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.confirms = 0
        self.events: list[bytes] = []

    def entry(self, epoch: int, seq: int, ts: int, doc: bytes) -> None:
        assert (epoch, ts, doc) == (1, seq * 10, b'{"n": %d}' % seq)
        self.seqs.append(seq)

    def confirmed(self) -> None:
        self.confirms += 1

    def session_event(self, payload: bytes) -> None:
        self.events.append(payload)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with redis_cluster() as running:
        yield running


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[RedisCluster]:
    cluster.wait_ok()  # a test that stopped a node has it back, as a replica
    rc = RedisCluster.from_url("redis://" + cluster.primaries()[0].address)
    await rc.initialize()
    yield rc
    await rc.aclose()


def keys_by_primary(rc: RedisCluster, per_node: int = 2) -> dict[str, list[str]]:
    """Variable keys whose feed channels are served by each primary, ``per_node`` each."""
    found: dict[str, list[str]] = {node.name: [] for node in rc.get_primaries()}
    n = 0
    while any(len(names) < per_node for names in found.values()):
        key = keys.key_for(f"var-{n}")
        n += 1
        node = rc.get_node_from_key(keys.feed(key))
        assert node is not None
        if len(found[node.name]) < per_node:
            found[node.name].append(key)
    return found


async def publish(rc: RedisCluster, key: str, seq: int) -> None:
    """One feed message, SPUBLISHed by a script on the node of ``key``'s slot."""
    message = b'1 %d %d {"n": %d}' % (seq, seq * 10, seq)
    await rc.eval(PUBLISH, 1, keys.meta(key), keys.feed(key), message)  # type: ignore[misc]


async def until(predicate: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def publish_until(rc: RedisCluster, key: str, recorder: Recorder, first: int) -> int:
    """Publish seq first, first+1, ... on ``key`` (retrying while its slot has no primary)
    until ``recorder`` got one; the next seq."""
    seq = first
    deadline = time.monotonic() + 20
    while not recorder.seqs or recorder.seqs[-1] < first:
        assert time.monotonic() < deadline, "no message arrived"
        try:
            await publish(rc, key, seq)
            seq += 1
        except Exception:  # the node is down or its replica not promoted yet: the client retries
            await asyncio.sleep(0.1)
            continue
        await asyncio.sleep(0.05)
    return seq


def node_named(cluster: Cluster, name: str) -> Node:
    return next(node for node in cluster.running() if node.address == name)


async def test_each_channel_is_subscribed_on_the_primary_of_its_slot(
    client: RedisCluster,
) -> None:
    feed = LiveFeed(client)
    by_node = keys_by_primary(client)
    recorders = {key: Recorder() for names in by_node.values() for key in names}
    try:
        for key, recorder in recorders.items():
            await feed.subscribe(key, recorder)
        assert all(r.confirms == 1 for r in recorders.values())
        # one connection per primary, each carrying the channels of its slots
        assert sorted(feed._links) == sorted(by_node)
        for name, names in by_node.items():
            assert feed._links[name].channels == {keys.feed(k).encode() for k in names}
        for seq in range(1, 21):
            for key in recorders:
                await publish(client, key, seq)
        await until(lambda: all(len(r.seqs) == 20 for r in recorders.values()))
        assert all(r.seqs == list(range(1, 21)) for r in recorders.values())
    finally:
        await feed.close()


async def test_a_stale_slot_map_gets_moved_and_the_channel_lands_on_its_owner(
    client: RedisCluster,
) -> None:
    feed = LiveFeed(client)
    key = keys.key_for("moved")
    channel = keys.feed(key)
    owner = client.get_node_from_key(channel)
    wrong = next(node for node in client.get_primaries() if node is not owner)
    client.nodes_manager.slots_cache[client.keyslot(channel)] = [wrong]  # a stale map
    recorder = Recorder()
    try:
        await asyncio.wait_for(feed.subscribe(key, recorder), 10)
        assert recorder.confirms == 1
        assert channel.encode() in feed._links[owner.name].channels
        assert channel.encode() not in feed._links[wrong.name].channels
        await publish(client, key, 1)
        await until(lambda: recorder.seqs == [1])
    finally:
        await feed.close()


@pytest.mark.parametrize("how", ["failover", "stop"])
async def test_a_failed_over_primary_moves_its_channels_and_only_theirs_are_confirmed(
    cluster: Cluster, client: RedisCluster, how: str
) -> None:
    """``failover``: CLUSTER FAILOVER on the replica (the old primary pushes sunsubscribe);
    ``stop``: the primary is stopped and its replica promoted by the cluster (the connection is
    lost). Channels on the other primaries keep their subscription and their messages."""
    feed = LiveFeed(client)
    by_node = keys_by_primary(client)
    victim_name = sorted(by_node)[0]
    moved = by_node[victim_name]
    kept = [key for name, names in by_node.items() if name != victim_name for key in names]
    recorders = {key: Recorder() for key in [*moved, *kept]}
    events = Recorder()
    try:
        for key, recorder in recorders.items():
            await feed.subscribe(key, recorder)
        await feed.watch_sessions(events)
        events_link = feed.events.link
        victim = node_named(cluster, victim_name)
        replica = cluster.replica_of(victim)
        if how == "failover":
            replica.cli("cluster", "failover")
        else:
            victim.stop()
        seq = 1
        for key in moved:  # they resume, on the promoted replica
            seq = max(seq, await publish_until(client, key, recorders[key], seq))
            assert feed._links[replica.address].channels >= {keys.feed(key).encode()}
        for key in kept:  # they never stopped
            await publish(client, key, seq)
        await until(lambda: all(recorders[k].seqs[-1:] == [seq] for k in kept))
        assert all(recorders[k].confirms == 2 for k in moved)
        assert all(recorders[k].confirms == 1 for k in kept)
        assert all(recorders[k].seqs == [seq] for k in kept)  # nothing doubled
        # the session events channel still works, from another node if its own died
        if how == "stop" and events_link is not None and events_link.name == victim_name:
            await until(lambda: events.confirms == 2)
        await until(feed.events.ready.is_set)
        await client.execute_command("PUBLISH", keys.session_events(), b"ev")
        await until(lambda: events.events[-1:] == [b"ev"])
    finally:
        await feed.close()
        if how == "stop":
            victim.start()  # it rejoins as a replica of the promoted one


def set_slot(cluster: Cluster, slot: int, owner: Node) -> None:
    """Hand an empty ``slot`` to ``owner`` (CLUSTER SETSLOT ... NODE on it first, then on the
    others), as a resharding does once the slot's keys have moved."""
    owner_id = owner.cli("cluster", "myid").strip()
    for node in sorted(cluster.running(), key=lambda n: n is not owner):
        node.cli("cluster", "setslot", str(slot), "node", owner_id)


async def test_a_slot_moved_to_another_primary_takes_its_channel_along(
    cluster: Cluster, client: RedisCluster
) -> None:
    """The slot's old owner pushes an sunsubscribe when it loses the slot; the feed reads the
    slot map again and subscribes on the new owner. A channel of another slot stays put."""
    feed = LiveFeed(client)
    key, other_key = keys.key_for("migrating"), keys.key_for("staying")
    channel = keys.feed(key)
    slot = client.keyslot(channel)
    owner = client.get_node_from_key(channel)
    assert owner is not None
    target = next(node for node in client.get_primaries() if node.name != owner.name)
    moving, staying = Recorder(), Recorder()
    try:
        await feed.subscribe(key, moving)
        await feed.subscribe(other_key, staying)
        set_slot(cluster, slot, node_named(cluster, target.name))
        await until(lambda: moving.confirms == 2)
        assert channel.encode() in feed._links[target.name].channels
        assert channel.encode() not in feed._links[owner.name].channels
        await publish(client, key, 1)
        await publish(client, other_key, 1)
        await until(lambda: moving.seqs == [1] and staying.seqs == [1])
        assert staying.confirms == 1
    finally:
        await feed.close()
        set_slot(cluster, slot, node_named(cluster, owner.name))
        cluster.wait_ok()
