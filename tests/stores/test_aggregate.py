"""Aggregations over every tier equal a brute-force computation over the entries history reads
return: seeded random data written out of order (late arrivals), redelivered before and after
its first copy left Redis, spread over transfer objects, a merged object and Redis, in several
time zones, over a DST change and calendar weeks and months. The reference buckets each entry
with zoneinfo in plain Python, one entry at a time; the engine does it vectorised."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pytest

from latest_server import keys
from latest_server.packets import Packet
from latest_server.resources import Resources
from latest_server.stores import agg_plan, aggregate, buckets, segments
from latest_server.stores.aggregate import AggQuery, Aggregator
from latest_server.stores.segments import Window
from tests.conftest import PARSER, Churn

EVERYTHING = Window(-(2**62), 2**62)
START_MS = int(datetime(2026, 10, 20, tzinfo=UTC).timestamp() * 1000)  # DST ends Oct 25, Nov 1
SPAN_MS = 16 * 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
FIELDS = ("x", "deep.y")
AGGS = ("min", "max", "avg", "sum", "count", "first", "last", "cardinality", "extended_stats")


def make_packet(variable: str, ms: int, rng: random.Random, mixed: bool) -> Packet:
    doc: dict[str, Any] = {"id": variable, "ts": ms, "deep": {"y": rng.randrange(-50, 50)}}
    if rng.random() < 0.85:
        doc["x"] = round(rng.uniform(-100, 100), 3)
    elif mixed:
        doc["x"] = "n/a"  # not a number: the object then has no n: columns at all
    item = PARSER.parse_document(0, doc)
    assert isinstance(item, Packet)
    return item


async def spread(stores: Resources, variable: str, seed: int, mixed: bool = False) -> None:
    """About 500 entries of ``variable`` in two transfer objects, one merged object and Redis,
    with late arrivals and redeliveries in each step."""
    rng = random.Random(seed)
    times = sorted(rng.sample(range(START_MS, START_MS + SPAN_MS), 480))
    times += times[:6]  # entries of one time, different content
    made = [make_packet(variable, ms, rng, mixed) for ms in times]
    steps = [made[:150], made[150:300], made[300:420], made[420:]]
    steps = [rng.sample(step, len(step)) for step in steps]  # out of order: late arrivals
    sent: list[Packet] = []
    for n, step in enumerate(steps):
        again = rng.sample(sent, min(len(sent), 15))  # redeliveries, in Redis or gone from it
        await stores.ingestor.write_batch(step + again + step[:5])
        sent += step
        if n < 3:
            await stores.offloader.run_job(everything=True)
        if n == 1:
            await stores.merger.merge_variable(variable)
    listed = stores.objects.list(keys.history_prefix(keys.key_for(variable)))
    assert {o.name.split("/")[2] for o in listed} == {"merged", "transfer"}
    assert await stores.redis.xlen(keys.history(keys.key_for(variable)))


async def entries(stores: Resources, variable: str) -> list[tuple[int, int, dict[str, Any]]]:
    page = await stores.history.read(keys.key_for(variable), EVERYTHING)
    table = page.entries
    return list(
        zip(
            table.column("ts").to_pylist(),
            table.column("seq").to_pylist(),
            [orjson.loads(d) for d in table.column("doc").to_pylist()],
            strict=True,
        )
    )


def zone_of(name: str) -> tzinfo:
    if name == "UTC":
        return UTC
    if name[0] in "+-":
        hours, minutes = name[1:].split(":")
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        return timezone(-delta if name[0] == "-" else delta)
    return ZoneInfo(name)


def reference_start(ts: int, interval: str, tz: tzinfo) -> int:
    """The bucket of ``ts`` by zoneinfo, one entry at a time."""
    moment = (EPOCH + ts * ONE_US).astimezone(tz)
    midnight = {"hour": 0, "minute": 0, "second": 0, "microsecond": 0}
    if interval == "day":
        start = moment.replace(**midnight)
    elif interval == "week":
        start = (moment - timedelta(days=moment.weekday())).replace(**midnight)
    elif interval == "month":
        start = moment.replace(day=1, **midnight)
    elif interval == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
    else:  # fixed: the local wall time floored, read back in the zone (the entry's fold)
        width = buckets.parse_interval(interval, "fixed").fixed
        assert width is not None
        offset = moment.utcoffset()
        assert offset is not None
        local = ts + offset // ONE_US
        naive = datetime(1970, 1, 1) + (local - local % width) * ONE_US
        start = naive.replace(tzinfo=tz, fold=moment.fold)
    return (start - EPOCH) // ONE_US


def number(doc: dict[str, Any], path: str) -> float | None:
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def reference(rows: list[tuple[int, int, dict[str, Any]]], interval: str | None, tz: str) -> Any:
    """start → (docs, field → agg → value), with numpy over each bucket's entries."""
    zone = zone_of(tz)
    grouped: dict[int, list[tuple[int, int, dict[str, Any]]]] = {}
    for row in rows:
        start = 0 if interval is None else reference_start(row[0], interval, zone)
        grouped.setdefault(start, []).append(row)
    out = {}
    for start, members in sorted(grouped.items()):
        members.sort(key=lambda r: (r[0], r[1]))
        values: dict[str, Any] = {}
        for path in FIELDS:
            held = [v for v in (number(r[2], path) for r in members) if v is not None]
            a = np.array(held)
            some = len(a) > 0
            values[path] = {
                "min": a.min() if some else None,
                "max": a.max() if some else None,
                "avg": a.mean() if some else None,
                "sum": a.sum() if some else 0.0,
                "count": len(a),
                "first": held[0] if some else None,
                "last": held[-1] if some else None,
                "cardinality": len(set(held)),
                "std": a.std() if some else None,
                "p50": float(np.percentile(a, 50)) if some else None,
            }
        out[start] = (len(members), values)
    return out


def assert_close(got: Any, want: Any) -> None:
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def check(series: aggregate.Series, expected: dict[int, Any]) -> None:
    assert [b.start for b in series.buckets] == list(expected)
    for bucket in series.buckets:
        docs, values = expected[bucket.start]
        assert bucket.docs == docs
        for path in FIELDS:
            got, want = bucket.values[path], values[path]
            for agg in ("min", "max", "avg", "sum", "first", "last"):
                assert_close(got[agg], want[agg])
            assert got["count"] == want["count"]
            assert got["cardinality"] == want["cardinality"]
            assert_close(got["extended_stats"]["std_deviation"], want["std"])


@pytest.mark.parametrize(
    ("interval", "tz"),
    [
        ("1h", "UTC"),
        ("15m", "+05:30"),
        ("1d", "Europe/Paris"),
        ("hour", "America/New_York"),
        ("day", "Europe/Paris"),
        ("week", "Europe/Paris"),
        ("month", "America/New_York"),
        (None, "UTC"),
    ],
)
async def test_aggregates_equal_brute_force_over_every_tier(
    stores: Resources, interval: str | None, tz: str
) -> None:
    await spread(stores, "a", seed=1)
    await spread(stores, "b", seed=2, mixed=True)
    assert stores.aggregates is not None
    rows = {v: await entries(stores, v) for v in ("a", "b")}
    # what was written, each packet once: history reads keep exactly the distinct packets
    assert len({(ts, orjson.dumps(d)) for ts, _, d in rows["a"]}) == len(rows["a"]) == 486
    query = AggQuery(
        (keys.key_for("a"), keys.key_for("b")),
        FIELDS,
        AGGS,
        interval=None if interval is None else buckets.parse_interval(interval),
        tz=tz,
    )
    result = await stores.aggregates.aggregate(query)
    for series, variable in zip(result.series, ("a", "b"), strict=True):
        assert series.key == keys.key_for(variable)
        check(series, reference(rows[variable], interval, tz))
    merged = await stores.aggregates.aggregate(dataclasses.replace(query, per_variable=False))
    check(merged.series[0], reference(rows["a"] + rows["b"], interval, tz))
    counted = await stores.aggregates.aggregate(dataclasses.replace(query, fields=(), aggs=()))
    want = reference(rows["a"], interval, tz)
    assert [(b.start, b.docs, b.values) for b in counted.series[0].buckets] == [
        (start, docs, {}) for start, (docs, _) in want.items()
    ]


async def test_a_window_percentiles_and_empty_buckets(stores: Resources) -> None:
    await spread(stores, "a", seed=3)
    assert stores.aggregates is not None
    lo, hi = (START_MS + 3 * 86_400_000) * 1000, (START_MS + 9 * 86_400_000) * 1000
    rows = [r for r in await entries(stores, "a") if lo <= r[0] < hi]
    query = AggQuery(
        (keys.key_for("a"),),
        ("x",),
        ("percentiles", "count"),
        lo=lo,
        hi=hi,
        interval=buckets.parse_interval("1h"),
        percents=(50.0,),
        min_doc_count=0,
        bounds=(lo - 86_400_000_000, hi),
    )
    series = (await stores.aggregates.aggregate(query)).series[0]
    starts = [b.start for b in series.buckets]
    assert starts == list(range(lo - 86_400_000_000, hi + 1, 3_600_000_000))
    expected = reference(rows, "1h", "UTC")
    for bucket in series.buckets:
        docs, values = expected.get(bucket.start, (0, None))
        assert bucket.docs == docs
        if values is None:
            assert bucket.values["x"] == {"percentiles": {"50.0": None}, "count": 0}
        else:
            assert_close(bucket.values["x"]["percentiles"]["50.0"], values["x"]["p50"])


async def test_parts_in_worker_processes_and_row_group_slices(
    stores: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects of disjoint times (written in time order) in small row groups, split into
    slices run by a pool of two processes: the same answer as the reference, from more tasks
    than objects; then from the cache, until a new entry."""
    monkeypatch.setattr(segments, "ROW_GROUP_ROWS", 32)
    monkeypatch.setattr(agg_plan, "ROWS_PER_TASK", 40)
    rng = random.Random(4)
    for step in range(3):
        base = START_MS + step * 86_400_000 * 3
        made = [make_packet("a", base + n * 600_000, rng, False) for n in range(200)]
        await stores.ingestor.write_batch(made + made[:3])
        await stores.offloader.run_job(everything=True)
    await stores.ingestor.write_batch(made[-10:])  # redelivered after they left Redis
    settings = dataclasses.replace(stores.settings, query_workers=2, query_parallel_rows=1)
    engine = Aggregator(stores.history, stores.aggregates.objects_url, settings)  # type: ignore[union-attr]
    try:
        query = AggQuery((keys.key_for("a"),), FIELDS, AGGS, interval=buckets.parse_interval("1d"))
        result = await engine.aggregate(query)
        objects = len(stores.objects.list(keys.history_prefix(keys.key_for("a"))))
        assert objects == 3 and result.tasks > objects
        assert result.entries == 600
        check(result.series[0], reference(await entries(stores, "a"), "1d", "UTC"))
        again = await engine.aggregate(query)
        assert again.cached and again.series == result.series
        await stores.ingestor.write_batch([make_packet("a", START_MS + 5, random.Random(0), False)])
        fresh = await engine.aggregate(query)  # a new entry: not the cached answer
        assert (
            not fresh.cached
            and fresh.series[0].buckets[0].docs == result.series[0].buckets[0].docs + 1
        )
    finally:
        engine.close()


async def test_last_entries_and_the_value_at_an_instant(stores: Resources) -> None:
    await spread(stores, "a", seed=5)
    assert stores.aggregates is not None
    rows = await entries(stores, "a")
    key = keys.key_for("a")
    last = (await stores.aggregates.last((key,), ("x",), EVERYTHING, 7))[key]
    held = [r for r in rows if number(r[2], "x") is not None]
    assert last.column("seq").to_pylist() == [r[1] for r in held[-7:]]
    assert last.column("v:x").to_pylist() == [number(r[2], "x") for r in held[-7:]]
    for moment in (rows[100][0], rows[100][0] - 1, rows[-1][0] + 10, rows[0][0] - 1):
        found = (await stores.aggregates.at((key,), ("x",), moment))[key]["x"]
        before = [r for r in held if r[0] <= moment]
        if not before:
            assert found is None
        else:
            ts, seq, doc = before[-1]
            assert found == (ts, seq, number(doc, "x"))


async def test_answers_stay_exact_while_offloads_and_merges_move_history(
    stores: Resources,
) -> None:
    """History moving down (offloads, merges) beside aggregations: each answer is the
    reference's (nothing counted twice, nothing missed), however the tiers were met."""
    await spread(stores, "a", seed=6)
    await stores.ingestor.write_batch(
        [
            make_packet("a", START_MS + SPAN_MS + n * 1000, random.Random(n), False)
            for n in range(300)
        ]
    )
    assert stores.aggregates is not None
    query = AggQuery(
        (keys.key_for("a"),),
        FIELDS,
        AGGS,
        interval=buckets.parse_interval("day"),
        tz="Europe/Paris",
    )
    expected = reference(await entries(stores, "a"), "day", "Europe/Paris")
    stores.offloader.max_bytes = 1  # every job moves everything
    done = asyncio.Event()
    churn = Churn(stores, ["a"], random.Random(6), done)
    movers = [asyncio.create_task(churn.offload(0.01)), asyncio.create_task(churn.merge(0.02))]
    try:
        for _ in range(12):
            check((await stores.aggregates.aggregate(query)).series[0], expected)
    finally:
        done.set()
        await asyncio.gather(*movers)
    assert churn.merged + churn.moved_entries > 0
    check((await stores.aggregates.aggregate(query)).series[0], expected)
