"""LATEST_REDIS_WAIT_REPLICAS: a batch is acknowledged only once that many replicas have it
(WAIT on the batch's connection, per node on a cluster). On the tests' single Redis, which has
no replica, every batch is refused (and written: a retry is deduplicated); on the tests' cluster,
one replica per primary confirms it, two cannot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.errors import StoreRefused
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.cluster import Cluster
from tests.conftest import packet


async def test_without_a_replica_a_batch_is_refused_and_its_retry_adds_nothing(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    config = dataclasses.replace(
        settings,
        objects_url=(tmp_path / "objects").as_uri(),
        redis_wait_replicas=1,
        redis_wait_timeout=0.05,
    )
    stores = await Resources.open(config)
    try:
        batch = [packet("w/a", n) for n in range(5)]
        for _ in range(2):
            with pytest.raises(StoreRefused) as refused:
                await stores.ingestor.write_batch(batch)
            assert refused.value.condition == "NOREPLICAS"
        assert await redis.xlen(keys.history(keys.key_for("w/a"))) == 5  # once, not twice
    finally:
        await stores.close()


@pytest.mark.parametrize(("replicas", "acknowledged"), [(1, True), (2, False)])
async def test_on_the_cluster_each_primary_s_replica_confirms_the_batch(
    redis_cluster_nodes: Cluster,
    settings: Settings,
    tmp_path: Path,
    replicas: int,
    acknowledged: bool,
) -> None:
    config = dataclasses.replace(
        settings,
        redis_url=redis_cluster_nodes.url,
        objects_url=(tmp_path / "objects").as_uri(),
        redis_wait_replicas=replicas,
        redis_wait_timeout=0.2,
    )
    stores = await Resources.open(config)
    try:
        variables = [f"w/{replicas}/{n}" for n in range(30)]  # on every primary
        nodes = {
            redis_cluster_nodes.primary_of(keys.latest(keys.key_for(v))).port for v in variables
        }
        assert len(nodes) == 3
        batch = [packet(v, n) for v in variables for n in range(3)]
        if acknowledged:
            result = await stores.ingestor.write_batch(batch)
            assert all(outcome.seq > 0 for outcome in result.outcomes)
        else:
            with pytest.raises(StoreRefused) as refused:
                await stores.ingestor.write_batch(batch)
            assert refused.value.condition == "NOREPLICAS"
    finally:
        await stores.close()
