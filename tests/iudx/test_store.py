"""RedisJsonLatestStore on fakeredis' TCP server, standing in for Redis Stack (the JSON module
cannot run here): the unique attribute, deletes and their fence, a member RedisJSON refuses,
and how its script is built on write.lua's."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys, lua
from latest_server.redis_client import connect
from latest_server.settings import Settings
from latest_server.stores import open_latest_store
from latest_server.stores.latest_redisjson import RedisJsonLatestStore
from tests.conftest import packet

GROUP = "iisc.ac.in/89a3/rs.iudx.io/surat-itms"
BUS = f"{GROUP}/live-eta"


async def open_store(url: str, **settings: str) -> RedisJsonLatestStore:
    env = {"REDIS_URL": url, "LATEST_BACKEND": "redisjson", **settings}
    store = await open_latest_store(url, redis=connect(url), settings=Settings.from_env(env))
    assert isinstance(store, RedisJsonLatestStore)
    return store


@pytest.fixture
async def store(fake_url: str) -> AsyncIterator[RedisJsonLatestStore]:
    opened = await open_store(fake_url)
    yield opened
    await opened.close()


async def member(redis: Redis, group: str, name: str) -> object:
    raw = await redis.execute_command("JSON.GET", f"iudx:{group}", ".")  # type: ignore[no-untyped-call]
    return None if raw is None else orjson.loads(raw).get(name)


async def test_the_unique_attribute_names_the_member(fake_url: str) -> None:
    store = await open_store(fake_url, LATEST_IUDX_UNIQUE_ATTRIBUTE="vehicle.plate")
    try:
        first = packet(BUS, 1, vehicle={"plate": "GJ05BX1916"})
        without = packet(f"{GROUP}/other", 2)
        await store.write_batch([first, without])
        plate = "_" + hashlib.sha1(b"GJ05BX1916").hexdigest()
        assert await member(store.redis, GROUP, plate) == orjson.loads(first.raw)
        # no such attribute: the id names it
        by_id = f"_{keys.digest(without.variable_id)}"
        assert await member(store.redis, GROUP, by_id) == orjson.loads(without.raw)
        await store.delete(BUS, first.key, None, "external")
        assert await member(store.redis, GROUP, plate) is None
    finally:
        await store.close()


async def test_a_delete_leaves_a_member_written_after_it(store: RedisJsonLatestStore) -> None:
    """iudx_forget.lua removes the member only while the hash holds no document: a write that
    came between the delete and the removal keeps its member."""
    name = f"_{keys.digest(BUS)}"
    await store.write_batch([packet(BUS, 1)])
    latest = keys.latest(keys.key_for(BUS))
    await store.scripts.call(store.redis, "delete", [latest], ["", "0"])  # the delete alone
    newer = packet(BUS, 5)
    await store.write_batch([newer])
    group_key = keys.iudx_group("iudx:", GROUP)
    removed = await store.scripts.call(
        store.redis, "iudx_forget", [latest, group_key], [f".{name}"]
    )
    assert removed == -1
    assert await member(store.redis, GROUP, name) == orjson.loads(newer.raw)
    # named as the Elasticsearch API may name it: by the SHA-1 of its id
    outcome = await store.delete(keys.digest(BUS), keys.key_for(BUS), None, "external")
    assert outcome.result == "deleted"
    assert await member(store.redis, GROUP, name) is None
    assert await store.group_docs(GROUP) == []


async def test_a_member_redisjson_refuses_is_logged_and_the_packet_kept(
    store: RedisJsonLatestStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The group key holds a string (not JSON): RedisJSON refuses the member, the packet is
    still the latest and in history, and the refusal is logged."""
    await store.redis.set(f"iudx:{GROUP}", "not json")
    with caplog.at_level(logging.WARNING):
        [outcome] = await store.write_batch([packet(BUS, 1)])
    assert outcome.applied and outcome.seq == 1
    assert (await store.mget([BUS]))[0] is not None
    assert "RedisJSON refused a latest packet's member" in caplog.text


def test_iudx_write_is_write_lua_up_to_its_driver_then_its_own() -> None:
    write = lua.source("write")
    built = lua.source("iudx_write")
    functions = write.partition(f"\n{lua.DRIVER}")[0]
    assert built.startswith(functions)
    assert "local function write(K, A)" in built
    assert built.endswith(lua._read("iudx_write"))
