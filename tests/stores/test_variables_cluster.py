"""The index of variables on a real Redis Cluster (tests/cluster.py: three primaries, each with
a replica): its one key lives in one slot and no per-variable script touches it, so listing,
upkeep, the page's reads and a reindex (a SCAN of every primary) work across the nodes.

The variables' hashes are set here as write.lua leaves them (one slot per variable): the write
path's own grouping of a batch by node is not this test's subject."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from latest_server import keys
from latest_server.redis_client import load_scripts
from latest_server.stores.base import WriteOutcome
from latest_server.stores.variables import Variable, VariableIndex
from tests.cluster import Cluster, redis_cluster
from tests.conftest import packet

IDS = [f"site/{n % 7}/{n:04d}" for n in range(300)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with redis_cluster(primaries=3, replicas=0) as running:
        yield running


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[RedisCluster]:
    first = cluster.primaries()[0]
    redis = RedisCluster(host="127.0.0.1", port=first.port)
    await redis.initialize()
    await redis.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield redis
    await redis.aclose()


async def written(client: RedisCluster, index: VariableIndex, ids: list[str]) -> None:
    """Each variable with one entry, as write.lua leaves it, then the ingestor's upkeep."""
    packets = [packet(i, 1) for i in ids]
    for p in packets:
        await client.hset(keys.meta(p.key), mapping={"e": 1, "s": 1, "b": 0, "id": p.variable_id})
        await client.hset(
            keys.latest(p.key), mapping={"v": p.ts_us, "doc": p.raw, "id": p.variable_id, "s": 1}
        )
    await index.written(packets, [WriteOutcome(True, 1, 1) for _ in packets])


async def test_the_index_works_across_the_nodes(client: RedisCluster, cluster: Cluster) -> None:
    index = VariableIndex(client, await load_scripts(client))  # type: ignore[arg-type]
    await written(client, index, IDS)
    # the variables' keys are on every primary, the index on one
    owners = {cluster.primary_of(keys.meta(keys.key_for(i))).port for i in IDS}
    assert len(owners) == 3

    under = sorted(i for i in IDS if i.startswith("site/3/"))
    seen: list[str] = []
    after = None
    while True:
        page, after = await index.ids("site/3/", limit=9, after=after)
        seen += page
        if after is None:
            break
    assert seen == under
    assert [i async for i in index.every("site/3/", page=4)] == under
    described = await index.describe(under[:5])
    assert described == [Variable(i, packet(i, 1).ts_us, 1, False) for i in under[:5]]

    # a reindex from the metas of every primary
    await client.delete(keys.VARIABLES)
    assert await index.ids("site/") == ([], None)
    assert await index.ensure() == len(IDS)
    assert (await index.ids("site/", limit=1_000))[0] == sorted(IDS)
    assert await index.ensure() is None  # the key is there: nothing to do
