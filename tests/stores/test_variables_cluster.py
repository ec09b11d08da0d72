"""The index of variables on a real Redis Cluster (tests/cluster.py: three primaries): its one
key lives in one slot and no per-variable script touches it, so the write path's upkeep (a batch
written node by node), the pages, a page's reads (each sent to its node) and a reindex (a SCAN
of every primary) work across the nodes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import pytest

from latest_server import keys
from latest_server.redis_wire import node_name
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores.variables import Variable
from tests.cluster import Cluster, redis_cluster
from tests.conftest import packet

IDS = [f"site/{n % 7}/{n:04d}" for n in range(300)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with redis_cluster(primaries=3, replicas=0) as running:
        yield running


@pytest.fixture
async def resources(cluster: Cluster, settings: Settings) -> AsyncIterator[Resources]:
    opened = await Resources.open(dataclasses.replace(settings, redis_url=cluster.url))
    await opened.redis.flushall(target_nodes="primaries")  # type: ignore[call-arg]
    yield opened
    await opened.close()


async def test_the_index_works_across_the_nodes(resources: Resources) -> None:
    index = resources.variables
    await resources.ingestor.write_batch([packet(i, 1) for i in IDS])
    await resources.ingestor.write_batch([packet(i, 2) for i in IDS[:10]])
    # the variables' keys are on every primary, the index on one
    nodes = {node_name(resources.redis, keys.meta(keys.key_for(i))) for i in IDS}
    assert len(nodes) == 3

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
    described = await index.describe(under)
    assert described == [
        Variable(i, packet(i, 2 if i in IDS[:10] else 1).ts_us, 1 + (i in IDS[:10]), False)
        for i in under
    ]

    # a reindex from the metas of every primary
    await resources.redis.delete(keys.VARIABLES)
    assert await index.ids("site/") == ([], None)
    assert await index.ensure() == len(IDS)
    assert (await index.ids("site/", limit=1_000))[0] == sorted(IDS)
    assert await index.ensure() is None  # the key is there: nothing to do
