"""Aggregation of variables' history over every tier: ``Aggregator.aggregate(AggQuery)`` →
``AggResult``; ``Aggregator.last`` (the last N entries) and ``Aggregator.at`` (the value in force
at an instant).

The interface, for every reader (``GET /history?agg=``, the Elasticsearch ``_search``)::

    query = AggQuery(
        keys=(keys.key_for("sensor-1"), ...),   # variables, by key
        fields=("temperature", "wind.speed"),    # numeric leaves, dotted
        aggs=("avg", "max"),                     # partials.AGGS
        lo=from_us, hi=to_us,                    # the window, lo <= ts < hi (µs)
        interval=buckets.parse_interval("1m"),   # or None: one bucket over the window
        tz="Europe/Paris",
        per_variable=True,                       # False: every variable in one series
        min_doc_count=0, bounds=(lo_us, hi_us),  # empty buckets too (extended_bounds)
    )
    result = await resources.aggregates.aggregate(query)
    for series in result.series:                 # per key in the order asked (or one, key None)
        for bucket in series.buckets:            # in time order
            bucket.start, bucket.docs            # UTC µs; entries in the bucket (doc_count)
            bucket.values["temperature"]["avg"]  # None where the bucket holds no number

Values: ``min``, ``max``, ``avg``, ``first``, ``last`` (by ts, ties by seq) a float or None;
``sum`` a float (0.0 when empty); ``count`` (value_count) and ``cardinality`` an int;
``percentiles`` ``{"50.0": v, ...}`` (``percents``); ``extended_stats`` Elasticsearch's object.
Unknown aggs, bad intervals and zones raise ``BadRequest`` (400).

How: each variable's hot tier is read first (Redis, one script or ranges), then its objects are
listed; objects whose time ranges overlap form a cluster (and take the hot rows of their span),
since a duplicate -- the same entry in two tiers, or a packet redelivered after its first copy
left Redis -- always has the same ts. A cluster of one object is split by row groups into tasks
that need no de-duplication at all; every byte of row-group data is read once. Tasks run in
threads, or, for large queries, in a bounded process pool (LATEST_QUERY_WORKERS); each returns
a partial (partials.py), merged here. Results are cached (LATEST_QUERY_CACHE_*), keyed by the
query and each variable's epoch and last seq: a new entry changes the key.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from cachetools import TTLCache

from latest_server import keys
from latest_server.errors import BadRequest, ObjectMissing, StoreUnavailable
from latest_server.redis_client import redis_bounded
from latest_server.settings import Settings
from latest_server.stores import agg_parts, buckets, partials, tiers
from latest_server.stores.agg_parts import Spec, Task
from latest_server.stores.history import ALL, RELIST_ATTEMPTS, HistoryStore
from latest_server.stores.partials import AGGS, DEFAULT_PERCENTS, NEEDS_VALUES, Partial
from latest_server.stores.segments import ROW_GROUP_ROWS, Window

EDGE = 2**62
ROWS_PER_TASK = 4 * ROW_GROUP_ROWS  # a task's share of an object
MAX_TASKS_PER_OBJECT = 64
THREADS = 4  # tasks at once in-process
VARIABLES_AT_ONCE = 16  # variables whose tiers are read side by side


@dataclass(frozen=True)
class AggQuery:
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    aggs: tuple[str, ...] = ("avg",)
    lo: int = -EDGE
    hi: int = EDGE
    interval: buckets.Interval | None = None
    tz: str = "UTC"
    per_variable: bool = True
    percents: tuple[float, ...] = DEFAULT_PERCENTS
    min_doc_count: int = 1  # 0: empty buckets too, from the data's (or bounds') first to last
    bounds: tuple[int, int] | None = None  # extended_bounds (µs, inclusive), with min_doc_count 0

    def check(self) -> None:
        unknown = [a for a in self.aggs if a not in AGGS]
        if unknown or not self.aggs:
            raise BadRequest(
                f"unknown aggregation {', '.join(unknown) or '(none)'}: takes {', '.join(AGGS)}",
                reason="bad_aggregation",
            )
        if not self.fields or any(not f or f.startswith(".") or ".." in f for f in self.fields):
            raise BadRequest("name the numeric field(s): field=<dotted path>", reason="bad_field")
        if not all(0 <= p <= 100 for p in self.percents):
            raise BadRequest("percents must be between 0 and 100", reason="bad_aggregation")
        buckets.zone(self.tz)  # raises on an unknown zone
        if self.lo >= self.hi:
            raise BadRequest("empty time range", reason="bad_range")


@dataclass(frozen=True)
class Bucket:
    start: int  # UTC µs (0 without an interval)
    docs: int  # entries in the bucket
    values: dict[str, dict[str, Any]]  # field → agg → value


@dataclass(frozen=True)
class Series:
    key: str | None  # the variable's key; None when every variable is in one series
    buckets: list[Bucket]


@dataclass(frozen=True)
class AggResult:
    series: list[Series]
    entries: int = 0  # de-duplicated entries aggregated
    tasks: int = 0  # parts run (threads or processes)
    cached: bool = False

    @property
    def nbytes(self) -> int:
        size = 64
        for series in self.series:
            for bucket in series.buckets:
                size += 64 + sum(32 * len(v) + 32 for v in bucket.values.values())
        return size


@dataclass
class _Plan:
    tasks: list[tuple[str, Task]] = field(default_factory=list)  # (key, task)
    local: list[tuple[str, pa.Table]] = field(default_factory=list)  # hot entries alone
    rows: int = 0  # estimated rows to read


class Aggregator:
    """Aggregations over ``history``'s tiers; objects at ``objects_url`` (workers reopen it)."""

    def __init__(self, history: HistoryStore, objects_url: str, settings: Settings) -> None:
        self.history = history
        self.objects_url = objects_url
        self.settings = settings
        workers = settings.query_workers
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers
        self.parallel_rows = settings.query_parallel_rows
        self.cache: TTLCache[Any, AggResult] | None = None
        if settings.query_cache_bytes and settings.query_cache_ttl:
            self.cache = TTLCache(
                settings.query_cache_bytes,
                settings.query_cache_ttl,
                getsizeof=lambda result: result.nbytes,
            )
        self._pool: ProcessPoolExecutor | None = None
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="aggregate")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._threads.shutdown(wait=False, cancel_futures=True)

    def pool(self) -> ProcessPoolExecutor:
        """The query pool, started on first use (spawned: no fork of a threaded server)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    async def aggregate(self, query: AggQuery) -> AggResult:
        query.check()
        cache_key = None
        if self.cache is not None:
            cache_key = (query, await self._versions(query.keys))
            found = self.cache.get(cache_key)
            if found is not None:
                return AggResult(found.series, found.entries, 0, cached=True)
        result = await self._aggregate(query)
        if self.cache is not None and result.nbytes <= self.cache.maxsize:
            self.cache[cache_key] = result
        return result

    @redis_bounded
    async def _versions(self, variables: tuple[str, ...]) -> tuple[Any, ...]:
        """Each variable's (epoch, last seq): a new entry anywhere in it changes them."""
        pipe = self.history.redis.pipeline(transaction=False)
        for key in variables:
            pipe.hmget(keys.meta(key), "e", "s")
        return tuple(tuple(reply) for reply in await pipe.execute())

    async def _aggregate(self, query: AggQuery) -> AggResult:
        spec = Spec(
            query.lo,
            query.hi,
            query.fields,
            query.interval,
            query.tz,
            values=any(a in NEEDS_VALUES for a in query.aggs),
        )
        for _attempt in range(RELIST_ATTEMPTS):
            plan = await self._plan(query.keys, spec)
            try:
                found = await self._run(plan, spec)
            except ObjectMissing:
                continue  # a merge replaced an object: list again
            break
        else:
            raise StoreUnavailable(f"history kept moving during {RELIST_ATTEMPTS} reads")
        by_key: dict[str, list[Partial]] = {key: [] for key in query.keys}
        for key, part in found:
            by_key[key].append(part)
        empty = partials.empty_partial(query.fields, spec.values)
        merged = {key: partials.merge(parts) if parts else empty for key, parts in by_key.items()}
        entries = sum(int(p.docs.sum()) for p in merged.values())
        if query.per_variable:
            series = [self._series(key, merged[key], query) for key in query.keys]
        else:
            series = [self._series(None, partials.merge(list(merged.values())), query)]
        return AggResult(series, entries, len(plan.tasks))

    def _series(self, key: str | None, partial: Partial, query: AggQuery) -> Series:
        if query.interval is not None and query.min_doc_count == 0:
            starts = partial.starts
            lo = int(starts[0]) if len(starts) else None
            hi = int(starts[-1]) if len(starts) else None
            if query.bounds is not None:
                lo = query.bounds[0] if lo is None else min(lo, query.bounds[0])
                hi = query.bounds[1] if hi is None else max(hi, query.bounds[1])
            if lo is not None and hi is not None:
                tz = buckets.zone(query.tz)
                partial = partials.with_buckets(
                    partial, buckets.bucket_range(lo, hi, query.interval, tz)
                )
        out = []
        for i, start in enumerate(partial.starts.tolist()):
            docs = int(partial.docs[i])
            if docs < query.min_doc_count:
                continue
            values = {
                name: partials.finish(part, i, query.aggs, query.percents)
                for name, part in partial.fields.items()
            }
            out.append(Bucket(start, docs, values))
        return Series(key, out)

    async def _plan(self, variables: tuple[str, ...], spec: Spec) -> _Plan:
        """Each variable's hot entries, then a fresh LIST of its objects (upstream first, as
        every reader: an entry moving down in between is met twice, never missed); variables
        side by side, VARIABLES_AT_ONCE at a time."""
        bound = asyncio.Semaphore(VARIABLES_AT_ONCE)

        async def tiers_of(key: str) -> tuple[pa.Table, list[tiers.StoredObject]]:
            async with bound:
                # documents parsed later, by the tasks and beside them (see _run)
                hot = await self.history.read_hot(key, spec.window, ALL)
                listed = await asyncio.to_thread(tiers.list_objects, self.history.objects, key)
            return hot, [s for s in listed if spec.window.overlaps(s.min_ts, s.max_ts)]

        found = await asyncio.gather(*(tiers_of(key) for key in variables))
        plan = _Plan()
        for key, (hot, chosen) in zip(variables, found, strict=True):
            self._plan_variable(plan, key, hot, chosen, spec)
        return plan

    def _plan_variable(
        self,
        plan: _Plan,
        key: str,
        rows: pa.Table,
        chosen: list[tiers.StoredObject],
        spec: Spec,
    ) -> None:
        """Tasks for ``rows`` (the hot entries: ts, seq, hash, doc) and the objects chosen."""
        ts = rows.column("ts").to_numpy()
        taken = np.zeros(len(ts), dtype=bool)
        for cluster in _clusters(chosen):
            lo = min(s.min_ts for s in cluster)
            hi = max(s.max_ts for s in cluster)
            inside = (ts >= lo) & (ts <= hi)
            estimate = sum(_estimate(s, spec.window) for s in cluster)
            plan.rows += estimate
            names = tuple(s.name for s in cluster)
            if len(cluster) == 1 and not inside.any():
                # one object, alone in its span: its row groups can be split freely
                count = max(1, min(MAX_TASKS_PER_OBJECT, math.ceil(estimate / ROWS_PER_TASK)))
                for k in range(count):
                    task = Task(self.objects_url, self.settings, names, spec, (k, count))
                    plan.tasks.append((key, task))
                continue
            hot = rows.filter(pa.array(inside)) if inside.any() else None
            taken |= inside
            plan.tasks.append((key, Task(self.objects_url, self.settings, names, spec, hot=hot)))
        rest = rows.filter(pa.array(~taken)) if taken.any() else rows
        if rest.num_rows:
            plan.local.append((key, rest))

    async def _run(self, plan: _Plan, spec: Spec) -> list[tuple[str, Partial]]:
        loop = asyncio.get_running_loop()
        parallel = self.workers > 0 and plan.rows >= self.parallel_rows and len(plan.tasks) > 1
        executor: Executor = self.pool() if parallel else self._threads
        store = None if parallel else self.history.objects
        fields = spec.fields

        def alone(entries: pa.Table) -> Partial:
            rows = agg_parts.hot_rows(entries, fields)
            return agg_parts.partial_of(agg_parts.deduplicate(rows), spec)

        # the tasks first: the hot entries' documents are parsed while they run
        cold = [
            loop.run_in_executor(executor, agg_parts.run, task, store) for _, task in plan.tasks
        ]
        hot = [loop.run_in_executor(self._threads, alone, entries) for _, entries in plan.local]
        try:
            parts = await asyncio.gather(*cold, *hot)
        except BrokenProcessPool:
            self._pool = None  # a worker died (killed, out of memory): a fresh pool next time
            raise StoreUnavailable("a query worker died; try again") from None
        owners = [key for key, _ in plan.tasks] + [key for key, _ in plan.local]
        return list(zip(owners, parts, strict=True))

    async def last(
        self, variables: tuple[str, ...], fields: tuple[str, ...], window: Window, n: int
    ) -> dict[str, pa.Table]:
        """Per variable, its last ``n`` entries of ``window`` (by ts, then seq) holding a number
        at one of ``fields`` at least: columns ts, seq, v:<field> (NaN: none), in time order.
        Objects are read newest first, only while they may hold one of the last ``n``."""
        spec = Spec(window.lo, window.hi, fields, None)
        out = {}
        for key in variables:
            hot = await self.history.read_hot(key, spec.window, ALL)
            rows = await asyncio.to_thread(agg_parts.hot_rows, hot, fields)
            listed = await asyncio.to_thread(tiers.list_objects, self.history.objects, key)
            chosen = sorted(
                (s for s in listed if spec.window.overlaps(s.min_ts, s.max_ts)),
                key=lambda s: s.max_ts,
                reverse=True,
            )
            tables = [rows]
            for stored in chosen:
                held = _numbered(agg_parts.deduplicate(pa.concat_tables(tables)), fields)
                if held.num_rows >= n and stored.max_ts < held.column("ts")[-n].as_py():
                    break
                task = Task(self.objects_url, self.settings, (stored.name,), spec, hashes=True)
                tables.append(
                    await asyncio.to_thread(agg_parts.rows_of, task, self.history.objects)
                )
            table = _numbered(agg_parts.deduplicate(pa.concat_tables(tables)), fields)
            table = table.slice(max(0, table.num_rows - n))
            out[key] = table.drop_columns(["hash"])
        return out

    async def at(
        self, variables: tuple[str, ...], fields: tuple[str, ...], moment: int
    ) -> dict[str, dict[str, tuple[int, int, float] | None]]:
        """Per variable and field, the (ts, seq, value) in force at ``moment`` (µs): the entry
        with a number there of greatest ts <= moment, ties by greatest seq; None if none."""
        query = AggQuery(variables, fields, ("last",), hi=moment + 1)
        spec = Spec(query.lo, query.hi, fields, None)
        plan = await self._plan(variables, spec)
        found = await self._run(plan, spec)
        out: dict[str, dict[str, tuple[int, int, float] | None]] = {}
        for key in variables:
            parts = [p for k, p in found if k == key]
            merged = partials.merge(parts) if parts else partials.empty_partial(fields, False)
            out[key] = {}
            for name, part in merged.fields.items():
                if not len(merged.starts) or not part.count[0]:
                    out[key][name] = None
                    continue
                ts, seq, value = part.last[0]
                out[key][name] = (int(ts), int(seq), float(value))
        return out


def _numbered(table: pa.Table, fields: tuple[str, ...]) -> pa.Table:
    """Rows holding a number at one of ``fields`` at least."""
    held = np.zeros(table.num_rows, dtype=bool)
    for f in fields:
        held |= ~np.isnan(table.column(agg_parts.VALUE + f).to_numpy())
    return table if held.all() else table.filter(pa.array(held))


def _clusters(chosen: list[tiers.StoredObject]) -> list[list[tiers.StoredObject]]:
    """Objects grouped where their time ranges overlap (a duplicate shares its ts)."""
    out: list[list[tiers.StoredObject]] = []
    end = None
    for stored in sorted(chosen, key=lambda s: s.min_ts):
        if end is not None and stored.min_ts <= end:
            out[-1].append(stored)
            end = max(end, stored.max_ts)
        else:
            out.append([stored])
            end = stored.max_ts
    return out


def _estimate(stored: tiers.StoredObject, window: Window) -> int:
    """Rows of the window in an object, from its name: its seqs, by the share of its time."""
    rows = stored.max_seq - stored.min_seq + 1
    span = stored.max_ts - stored.min_ts + 1
    inside = min(stored.max_ts + 1, window.hi) - max(stored.min_ts, window.lo)
    return max(1, rows * max(inside, 1) // span)
