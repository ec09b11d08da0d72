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
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from cachetools import LRUCache, TTLCache

from latest_server import keys
from latest_server.errors import BadRequest, ObjectMissing, StoreUnavailable
from latest_server.redis_client import redis_bounded
from latest_server.settings import Settings
from latest_server.stores import agg_parts, agg_plan, agg_points, buckets, partials, tiers
from latest_server.stores.agg_parts import Spec
from latest_server.stores.agg_remote import RemoteParts
from latest_server.stores.history import ALL, RELIST_ATTEMPTS, HistoryStore
from latest_server.stores.partials import AGGS, DEFAULT_PERCENTS, NEEDS_VALUES, Partial
from latest_server.stores.segments import Window

EDGE = 2**62
THREADS = 4  # tasks at once in-process
VARIABLES_AT_ONCE = 16  # variables whose tiers are read side by side


@dataclass(frozen=True)
class AggQuery:
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    aggs: tuple[str, ...] = ("avg",)  # () with fields=(): only each bucket's docs
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
        if unknown or (self.fields and not self.aggs):
            raise BadRequest(
                f"unknown aggregation {', '.join(unknown) or '(none)'}: takes {', '.join(AGGS)}",
                reason="bad_aggregation",
            )
        # no fields: the entries' counts only (a log volume, Grafana's Count), no document read
        if any(not f or f.startswith(".") or ".." in f for f in self.fields):
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
        # object sizes from the last listings (names are never reused for other content)
        self._sizes: LRUCache[str, int] = LRUCache(100_000)
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="aggregate")
        self.remote: RemoteParts | None = None  # query workers (LATEST_QUERY_REMOTE)
        if settings.query_remote and settings.amqp_url:
            self.remote = RemoteParts(
                settings.amqp_url, settings.query_queue, settings.query_remote_timeout
            )

    async def aclose(self) -> None:
        self.close()
        if self.remote is not None:
            await self.remote.close()

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
        found, tasks = await self._collect(query.keys, spec)
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
        return AggResult(series, entries, tasks)

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
        if len(partial.starts) > buckets.MAX_BUCKETS:
            raise BadRequest(
                f"more than {buckets.MAX_BUCKETS} buckets: widen the interval or narrow the range",
                reason="too_many_buckets",
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

    async def _collect(
        self, variables: tuple[str, ...], spec: Spec
    ) -> tuple[list[tuple[str, Partial]], int]:
        """(variable, partial) of every part of ``variables``' tiers, and the tasks run.

        Readers read upstream first (an entry moving down in between is met twice, never
        missed): here the object tasks start on a first LIST, then the hot tier is read, then a
        second LIST must name the same objects (else nothing moved down unseen is possible:
        all again), so the objects are read while Redis is. Clusters that hot entries fall in
        are read again with them (see agg_plan.with_hot)."""
        for _attempt in range(RELIST_ATTEMPTS):
            listed = await self._list(variables, spec)
            clusters = {
                key: agg_plan.clusters_of(
                    key, chosen, spec, self.objects_url, self.settings, self._sizes
                )
                for key, chosen in listed.items()
            }
            every = [c for found in clusters.values() for c in found]
            rows = sum(c.rows for c in every)
            tasks = sum(len(c.tasks) for c in every)
            large = rows >= self.parallel_rows and tasks > 1
            parallel = self.workers > 0 and large
            executor: Executor = self.pool() if parallel else self._threads
            store = None if parallel else self.history.objects
            loop = asyncio.get_running_loop()
            remote = self.remote if large else None
            started = {
                id(c): [
                    asyncio.ensure_future(remote.run_or_here(t, executor, store))
                    if remote is not None
                    else loop.run_in_executor(executor, agg_parts.run, t, store)
                    for t in c.tasks
                ]
                for c in every
            }
            try:
                hot = await self._hot(variables, spec)
            except BaseException:
                await _settle([f for futures in started.values() for f in futures])
                raise
            owners: list[str] = []
            pending: list[Any] = []
            dropped: list[Any] = []
            for key in variables:  # the hot entries start too, before the second listing
                redone, rest = agg_plan.with_hot(clusters[key], hot[key], spec)
                for cluster, task in redone:
                    pending.append(loop.run_in_executor(executor, agg_parts.run, task, store))
                    owners.append(key)
                    tasks += 1
                    dropped += started.pop(id(cluster))
                if rest.num_rows:
                    pending.append(loop.run_in_executor(self._threads, _hot_partial, rest, spec))
                    owners.append(key)
            for cluster in every:
                if id(cluster) in started:
                    pending += started[id(cluster)]
                    owners += [cluster.key] * len(started[id(cluster)])
            try:
                again = await self._list(variables, spec)
            except BaseException:
                await _settle(pending + dropped)
                raise
            if {k: [s.name for s in v] for k, v in again.items()} != {
                k: [s.name for s in v] for k, v in listed.items()
            }:
                await _settle(pending + dropped)
                continue  # objects came or went: list again
            try:
                parts = await asyncio.gather(*pending)
            except ObjectMissing:
                await _settle(pending)
                continue  # a merge replaced an object: list again
            except BrokenProcessPool:
                self._pool = None  # a worker died (killed, out of memory): a new pool next time
                raise StoreUnavailable("a query worker died; try again") from None
            finally:
                await _settle(dropped)
            return list(zip(owners, parts, strict=True)), tasks
        raise StoreUnavailable(f"history kept moving during {RELIST_ATTEMPTS} reads")

    async def _list(
        self, variables: tuple[str, ...], spec: Spec
    ) -> dict[str, list[tiers.StoredObject]]:
        bound = asyncio.Semaphore(VARIABLES_AT_ONCE)

        async def one(key: str) -> list[tiers.StoredObject]:
            # One LIST of both kinds (merged sorts first): the second listing of _collect
            # catches a merge that one listing saw half of, as it catches any other move.
            async with bound:
                found = await asyncio.to_thread(self.history.objects.list, keys.history_prefix(key))
            listed = [
                tiers.StoredObject(o.name, *keys.parse_object(o.name))
                for o in found
                if o.name.rsplit("/", 2)[-2] in ("merged", "transfer")
            ]
            for o in found:
                self._sizes[o.name] = o.size
            return [s for s in listed if spec.window.overlaps(s.min_ts, s.max_ts)]

        found = await asyncio.gather(*(one(key) for key in variables))
        return dict(zip(variables, found, strict=True))

    async def _hot(self, variables: tuple[str, ...], spec: Spec) -> dict[str, pa.Table]:
        """Each variable's hot entries (documents parsed later, beside the object tasks)."""
        bound = asyncio.Semaphore(VARIABLES_AT_ONCE)

        async def one(key: str) -> pa.Table:
            async with bound:
                return await self.history.read_hot(key, spec.window, ALL)

        found = await asyncio.gather(*(one(key) for key in variables))
        return dict(zip(variables, found, strict=True))

    async def last(
        self, variables: tuple[str, ...], fields: tuple[str, ...], window: Window, n: int
    ) -> dict[str, pa.Table]:
        """Per variable, its last ``n`` entries of ``window`` (by ts, then seq) holding a number
        at one of ``fields`` at least: columns ts, seq, v:<field> (NaN: none), in time order.
        Objects are read newest first, only while they may hold one of the last ``n``."""
        found = await asyncio.gather(
            *(
                agg_points.last(self.history, self.objects_url, self.settings, k, fields, window, n)
                for k in variables
            )
        )
        return dict(zip(variables, found, strict=True))

    async def at(
        self, variables: tuple[str, ...], fields: tuple[str, ...], moment: int
    ) -> dict[str, dict[str, tuple[int, int, float] | None]]:
        """Per variable and field, the (ts, seq, value) in force at ``moment`` (µs): the entry
        with a number there of greatest ts <= moment, ties by greatest seq; None if none."""
        found = await asyncio.gather(
            *(
                agg_points.at(self.history, self.objects_url, self.settings, k, fields, moment)
                for k in variables
            )
        )
        return dict(zip(variables, found, strict=True))


def _hot_partial(entries: pa.Table, spec: Spec) -> Partial:
    rows = agg_parts.hot_rows(entries, spec.fields)
    return agg_parts.partial_of(agg_parts.deduplicate(rows), spec)


async def _settle(futures: list[Any]) -> None:
    """Wait for tasks whose results are not wanted (a process-pool task cannot be cancelled)."""
    await asyncio.gather(*futures, return_exceptions=True)
