from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import hiredis
import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.errors import StoreUnavailable
from latest_server.packets import Packet, PacketParser
from latest_server.redis_client import connect
from latest_server.settings import Settings
from latest_server.stores.latest_redis import MODES, RedisLatestStore
from tests.conftest import REDIS_URL, free_port

PARSER = PacketParser(Settings())


def packet(variable: str, ts: int, **fields: object) -> Packet:
    item = PARSER.parse_document(0, {"id": variable, "ts": ts, **fields})
    assert isinstance(item, Packet)
    return item


async def history(redis: Redis, variable: str) -> list[tuple[int, int, bytes]]:
    k = keys.key_for(variable)
    entries = await redis.xrange(keys.history(k))
    return [
        (int(entry_id.split(b"-")[0]), int(fields[b"t"]), fields[b"d"])
        for entry_id, fields in entries
    ]


async def latest_doc(redis: Redis, variable: str) -> dict[str, object]:
    raw = await redis.hget(keys.latest(keys.key_for(variable)), "doc")
    assert raw is not None
    return orjson.loads(raw)  # type: ignore[no-any-return]


async def test_newer_wins_older_is_stale_but_kept_in_history(redis: Redis) -> None:
    store = await RedisLatestStore.open(redis)
    outcomes = await store.write_batch(
        [packet("a", 1_700_000_002), packet("a", 1_700_000_001), packet("a", 1_700_000_003)]
    )
    assert [o.applied for o in outcomes] == [True, False, True]
    assert [o.seq for o in outcomes] == [1, 2, 3]
    assert len({o.epoch for o in outcomes}) == 1
    assert (await latest_doc(redis, "a"))["ts"] == 1_700_000_003
    assert [ts for _, ts, _ in await history(redis, "a")] == [
        1_700_000_002_000_000,
        1_700_000_001_000_000,
        1_700_000_003_000_000,
    ]
    [found] = await store.mget(["a"])
    assert found is not None
    assert found.version == 1_700_000_003_000_000


async def test_ties_first_writer_wins_in_external(redis: Redis) -> None:
    store = await RedisLatestStore.open(redis)
    outcomes = await store.write_batch(
        [packet("a", 1_700_000_000, n=1), packet("a", 1_700_000_000, n=2)]
    )
    assert [o.applied for o in outcomes] == [True, False]
    assert (await latest_doc(redis, "a"))["n"] == 1
    assert len(await history(redis, "a")) == 2


async def test_ties_last_writer_wins_in_external_gte(redis: Redis) -> None:
    store = await RedisLatestStore.open(redis, version_type="external_gte")
    outcomes = await store.write_batch(
        [
            packet("a", 1_700_000_000, n=1),
            packet("a", 1_700_000_000, n=2),
            packet("a", 1_600_000_000),
        ]
    )
    assert [o.applied for o in outcomes] == [True, True, False]
    assert (await latest_doc(redis, "a"))["n"] == 2


async def test_redelivery_neither_duplicates_history_nor_takes_a_seq(redis: Redis) -> None:
    store = await RedisLatestStore.open(redis)
    first = packet("a", 1_700_000_001)
    second = packet("a", 1_700_000_002)
    await store.write_batch([first, second])
    outcomes = await store.write_batch([first, second, first, packet("a", 1_700_000_003)])
    assert [(o.applied, o.seq) for o in outcomes] == [(False, 0), (False, 0), (False, 0), (True, 3)]
    assert [seq for seq, _, _ in await history(redis, "a")] == [1, 2, 3]


async def test_a_refused_write_never_blocks_a_later_one(redis: Redis) -> None:
    """A packet refused by the compare-and-set (an Elasticsearch write whose `version` is
    older) is in history; the same packet sent again with a version that wins must become the
    latest document, not be taken for a redelivery."""
    store = await RedisLatestStore.open(redis)
    await store.write_batch([packet("a", 1_700_000_005, n=0)])
    late = packet("a", 1_700_000_009, n=1)
    refused = dataclasses.replace(late, version=1_700_000_001_000_000, version_type="external")
    [outcome] = await store.write_batch([refused])
    assert (outcome.applied, outcome.seq, outcome.current) == (False, 2, 1_700_000_005_000_000)
    [again] = await store.write_batch([late])
    assert (again.applied, again.seq, again.entry) == (True, 0, 2)  # no second history entry
    assert (await latest_doc(redis, "a"))["n"] == 1
    [found] = await store.mget(["a"])
    assert found is not None and found.version == 1_700_000_009_000_000
    assert [seq for seq, _, _ in await history(redis, "a")] == [1, 2]
    # and a true redelivery of it is still one: not applied, no new entry, in both modes
    for mode in ("external", "external_gte"):
        gte = await RedisLatestStore.open(redis, version_type=mode)
        [redelivered] = await gte.write_batch([late])
        assert (redelivered.applied, redelivered.seq, redelivered.entry) == (False, 0, 2)


async def test_latest_hash_holds_id_and_seq_after_updates_and_a_delete(redis: Redis) -> None:
    """write.lua sets the id only when the hash has none (it never changes for a key): after a
    delete, whose tombstone keeps only the version, the next newer packet sets it again."""
    store = await RedisLatestStore.open(redis)
    k = keys.key_for("a")
    await store.write_batch([packet("a", 1_700_000_001), packet("a", 1_700_000_002)])
    [doc] = await store.read_keys([k])
    assert doc is not None and (doc.variable_id, doc.seq) == ("a", 2)
    await store.delete("a", k, None, "external")
    assert list(await redis.hgetall(keys.latest(k))) == [b"v"]
    [outcome] = await store.write_batch([packet("a", 1_700_000_003)])
    assert (outcome.applied, outcome.existed, outcome.seq) == (True, False, 3)
    [doc] = await store.read_keys([k])
    assert doc is not None and (doc.variable_id, doc.seq) == ("a", 3)


async def test_feed_carries_epoch_seq_ts_and_doc(redis: Redis) -> None:
    store = await RedisLatestStore.open(redis)
    k = keys.key_for("a")
    pubsub = redis.pubsub()
    await pubsub.ssubscribe(keys.feed(k))
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    p = packet("a", 1_700_000_001)
    [outcome] = await store.write_batch([p])
    message = None
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            break
    assert message is not None
    epoch, seq, ts, doc = message["data"].split(b" ", 3)
    assert (int(epoch), int(seq), int(ts), doc) == (outcome.epoch, 1, p.ts_us, p.raw)
    await pubsub.aclose()


async def test_lost_counter_starts_a_new_epoch_without_reusing_seqs(redis: Redis) -> None:
    store = await RedisLatestStore.open(redis)
    [first] = await store.write_batch([packet("a", 1_700_000_001)])
    await redis.delete(keys.meta(keys.key_for("a")))
    await asyncio.sleep(0.002)
    [second] = await store.write_batch([packet("a", 1_700_000_002)])
    assert second.epoch != first.epoch
    assert second.seq == 2


async def test_script_cache_flush_is_survived(redis: Redis) -> None:
    store = await RedisLatestStore.open(redis)
    await redis.script_flush()
    [outcome] = await store.write_batch([packet("a", 1_700_000_001)])
    assert outcome.applied


async def test_script_cache_flush_is_survived_by_a_batch_built_as_it_is_sent(
    redis: Redis,
) -> None:
    """The packets come from a generator, read once; the retry after NOSCRIPT must send every
    one of them again, and each exactly once."""
    store = await RedisLatestStore.open(redis)
    await redis.script_flush()
    outcomes = await store.write_batch(packet("a", 1_700_000_000 + i) for i in range(250))
    assert [o.seq for o in outcomes] == list(range(1, 251))
    assert [seq for seq, _, _ in await history(redis, "a")] == list(range(1, 251))


async def test_a_batch_over_many_calls_keeps_its_order(redis: Redis) -> None:
    """A batch is sent as several write.lua calls (small ones first), each as soon as it is
    built; one variable's packets across them still get seqs in batch order, and the last one
    written is the latest."""
    store = await RedisLatestStore.open(redis)
    built: list[int] = []

    def packets() -> Iterator[Packet]:
        for i in range(750):
            built.append(i)
            yield packet("a", 1_700_000_000 + i, n=i)

    outcomes = await store.write_batch(packets())
    assert built == list(range(750))
    assert [o.seq for o in outcomes] == list(range(1, 751))
    assert all(o.applied for o in outcomes)
    entries = await history(redis, "a")
    assert [orjson.loads(doc)["n"] for _, _, doc in entries] == list(range(750))
    assert (await latest_doc(redis, "a"))["n"] == 749


def test_write_calls_are_packed_as_hiredis_packs_their_arguments() -> None:
    """The write path packs its EVALSHA itself; hiredis's packer is the reference."""
    plain = packet("city/aqm-1", 1_700_000_000, pm25=7)
    accented = packet("capteur/é-ü ☃", 1_700_000_001, note="ünïcode ✓")
    chunk = [plain, accented, plain]
    for version_type, version, shown in [
        ("external", 1_700_000_000_123_000, 1_700_000_000_123),
        ("create", None, None),
    ]:
        es_packet = packet("es/1", 1_700_000_002)
        es_packet.version, es_packet.version_type = version, version_type
        es_packet.es_version = shown
        chunk.append(es_packet)
    for gte in (b"0", b"1"):
        expected = ["EVALSHA", "f" * 40, 4 * len(chunk)]
        args: list[object] = []
        for p in chunk:
            expected += keys.write_keys(p.key)
            mode = gte if p.version_type is None else MODES[p.version_type]
            version = b"" if p.version is None else p.version
            shown = b"" if p.es_version is None else p.es_version
            args += [p.variable_id, p.ts_us, p.raw, p.digest, mode, keys.feed(p.key), version]
            args.append(shown)
        packed = RedisLatestStore._command("f" * 40, gte, chunk)
        assert packed == hiredis.pack_command(tuple(expected + args))


async def test_many_variables_in_one_batch_and_mget(redis: Redis) -> None:
    store = await RedisLatestStore.open(redis)
    await store.write_batch([packet(f"v{i}", 1_700_000_000 + i) for i in range(99)])
    await store.write_batch([packet("v99 ☃", 1_700_000_099)])
    docs = await store.mget(["v3", "missing", "v99 ☃"])
    assert [d.variable_id if d else None for d in docs] == ["v3", None, "v99 ☃"]
    assert docs[0] is not None
    assert orjson.loads(docs[0].doc)["id"] == "v3"


async def test_unreachable_redis_raises_store_unavailable() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    async with Redis.from_url(REDIS_URL) as working:
        store = await RedisLatestStore.open(working)
    store.redis = client
    with pytest.raises(StoreUnavailable):
        await store.write_batch([packet("a", 1_700_000_001)])
    assert not await store.ping()
    await client.aclose()
