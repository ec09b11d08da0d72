"""LATEST_BACKEND=redisjson refuses, at start and in one line, a Redis without the JSON module
and a Redis Cluster; the group rule and its settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakeredis import FakeAsyncRedis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from latest_server.errors import ConfigError
from latest_server.settings import Settings
from latest_server.stores.latest_redisjson import GroupRule, check_json_redis
from tests.cluster import Node, cluster_port
from tests.conftest import REDIS_URL
from tests.services import free_port
from tests.test_startup import serve, the_error

ITEM = "iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86/rs.iudx.io/pune-env-flood/FWR055"
GROUP = "iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86/rs.iudx.io/pune-env-flood"


@pytest.mark.timeout(90)
def test_serve_refuses_a_redis_without_the_json_module_in_one_line(tmp_path: Path) -> None:
    """The suite's redis-server has no JSON module."""
    code, stderr = serve(tmp_path, REDIS_URL=REDIS_URL, LATEST_BACKEND="redisjson")
    assert code != 0, stderr
    line = the_error(stderr)
    assert "LATEST_BACKEND=redisjson needs the JSON module" in line, line
    assert "Redis Stack" in line and "valkey-json" in line, line


async def test_the_check_passes_with_the_json_module_and_refuses_without() -> None:
    """In-process fakeredis (Lua and JSON) stands in for Redis Stack: it has no MODULE LIST, so
    the check's probe (JSON.GET of a missing key) decides."""
    await check_json_redis(FakeAsyncRedis(), "redis://fake")
    plain = Redis.from_url(REDIS_URL)
    try:
        with pytest.raises(ConfigError, match="Redis Stack"):
            await check_json_redis(plain, REDIS_URL)
    finally:
        await plain.aclose()


async def test_a_redis_cluster_is_refused(tmp_path: Path) -> None:
    """One redis-server in cluster mode (tests/cluster.py's node; no slots needed to say so)."""
    node = Node(cluster_port(), tmp_path)
    node.start()
    client = Redis.from_url(f"redis://{node.address}/0")
    try:
        with pytest.raises(ConfigError, match="does not run on a Redis Cluster"):
            await check_json_redis(client, f"redis://{node.address}/0")
    finally:
        await client.aclose()
        node.stop()


async def test_a_cluster_client_is_refused_before_it_connects() -> None:
    client = RedisCluster(host="127.0.0.1", port=free_port())  # nothing listens there
    with pytest.raises(ConfigError, match="does not run on a Redis Cluster"):
        await check_json_redis(client, "redis://127.0.0.1")  # type: ignore[arg-type]


def test_the_group_of_an_iudx_id_is_its_first_four_segments() -> None:
    rule = GroupRule.from_settings(Settings())
    assert rule.group_of(ITEM) == GROUP
    assert rule.group_of(GROUP) == GROUP  # a group's own id
    assert rule.group_of("short/id") == "short/id"  # fewer segments: a group of its own


def test_a_pattern_overrides_the_segments() -> None:
    settings = Settings.from_env({"LATEST_IUDX_GROUP_PATTERN": r"^[^/]+/[^/]+/[^/]+/([^/]+)"})
    rule = GroupRule.from_settings(settings)
    assert rule.group_of(ITEM) == "pune-env-flood"
    assert rule.group_of("no-slashes") == "no-slashes"  # no match: a group of its own
    assert GroupRule(2).group_of(ITEM) == "iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86"


@pytest.mark.parametrize("pattern", ["no-group", "(a)(b)", "(unclosed"])
def test_a_pattern_needs_exactly_one_group(pattern: str) -> None:
    with pytest.raises(ConfigError, match="LATEST_IUDX_GROUP_PATTERN"):
        Settings.from_env({"LATEST_IUDX_GROUP_PATTERN": pattern})


def test_the_backend_is_a_choice_of_latest_backend() -> None:
    assert Settings.from_env({"LATEST_BACKEND": "redisjson"}).backend == "redisjson"
