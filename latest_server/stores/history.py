"""History reads by time (a Window: the REST API's pages and series) across every tier, upstream
first; reads by seq, for subscribers, are ranges.py's (tiers.py says what the two share).

Data only moves downstream -- live stream → job-owned copy → transfer object → merged object --
and each downstream copy is durable before its upstream copy is deleted. So a reader that reads
upstream first (Redis, the live stream and its job copies as of one moment -- see read_hot; then a
fresh LIST of transfer objects; then a fresh LIST of merged objects) can see an entry twice, never
zero times.
Duplicates are removed by seq and by (ts, sha1(doc)); a listed object that has vanished (a merge
deleted it) means "list again".
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from latest_server import keys
from latest_server.errors import ObjectMissing, StoreUnavailable
from latest_server.redis_client import Client, Scripts, redis_bounded, send_raw
from latest_server.stores import segments, tiers
from latest_server.stores.base import ObjectStore
from latest_server.stores.segments import SCHEMA, Window

ALL = 2**31 - 1
RELIST_ATTEMPTS = 8
COLD_THREADS = 4  # objects read at once
HOT_ATTEMPTS = 3  # reads of the hot tier by ranges before the atomic script
HOT_SPAN = 50_000  # stream ids per XRANGE (bounds the size of one reply)
HOT_SPARSE = 4  # seq spans longer than this many times the entries (+ HOT_SPAN): the script


@dataclass(frozen=True, slots=True)
class Page:
    entries: pa.Table  # columns ts, seq, hash, doc; ordered by (ts, seq) in the asked direction
    next: tuple[int, int] | None  # resume after this (ts, seq), or None at the end


class HistoryStore:
    """Every read of a route goes through ``redis_bounded``: Client out of reach is
    StoreUnavailable (503), never a redis-py error."""

    def __init__(self, redis: Client, scripts: Scripts, objects: ObjectStore) -> None:
        self.redis = redis
        self.scripts = scripts
        self.objects = objects

    @redis_bounded
    async def exists(self, key: str) -> bool:
        if await self.redis.exists(keys.meta(key), keys.history(key)):
            return True
        found = await asyncio.to_thread(self.objects.list, keys.history_prefix(key))
        return bool(found)

    @redis_bounded
    async def read(self, key: str, window: Window, limit: int | None = None) -> Page:
        """Entries of ``window``; with ``limit``, the first ``limit`` of them and a cursor."""
        per_source = ALL if limit is None else limit + 1
        hot = await self.read_hot(key, window, per_source)
        cold = await self._cold(key, window, limit and per_source)

        def lowest(part: pa.Table) -> tuple[int, int]:  # a part is sorted in either direction
            return min(_position(part, 0), _position(part, part.num_rows - 1))

        # Tiers seldom overlap in time: in the order of their lowest entries their concatenation
        # is usually sorted already, and deduplicate() need not reorder (copy) every row.
        parts = sorted((t for t in [hot, *cold] if t.num_rows), key=lowest) or [hot]
        table = segments.deduplicate(pa.concat_tables(parts))
        if window.desc:
            table = segments.sort(table, desc=True)
        if limit is None or table.num_rows <= limit:
            more = limit is not None and any(t.num_rows >= per_source for t in [hot, *cold])
            last = _position(table, table.num_rows - 1) if more and table.num_rows else None
            return Page(table, last)
        page = table.slice(0, limit)
        return Page(page, _position(page, limit - 1))

    @redis_bounded
    async def series(self, key: str, window: Window, path: str) -> tuple[Any, Any]:
        """(ts, value) numpy arrays of the entries of ``window`` whose document holds a number
        at ``path`` (dotted), in (ts, seq) order, from every tier and de-duplicated like
        ``read`` (see segments.deduplicate_series). Objects give the number from their ``n:``
        column, without their documents."""
        hot = await self.read_hot(key, window, ALL)
        hot = pa.Table.from_arrays(
            [
                hot.column("ts"),
                hot.column("seq"),
                segments.numbers(hot.column("doc"), tuple(path.split("."))),
            ],
            names=["ts", "seq", "value"],
        )
        cold = await self._cold(key, window, None, path)
        parts = [t for t in [hot, *cold] if t.num_rows] or [hot]
        return segments.deduplicate_series(pa.concat_tables(parts))

    @redis_bounded
    async def read_hot(self, key: str, window: Window, limit: int) -> pa.Table:
        """Live stream plus job-owned copies.

        The time indexes say which entries (the live one in a transaction with the set of jobs),
        then an XRANGE per source and span of seqs fetches them. Data only moves downstream, so
        a source that an offload renamed or dropped in between leaves a seq unfound: read again.
        After a few tries, or when a window's seqs are too scattered for ranges, read_hot.lua
        reads everything in one atomic step; it costs Redis a stream lookup per entry (~8 µs, a
        range ~0.4 µs), during which Redis serves nobody else."""
        for _attempt in range(HOT_ATTEMPTS):
            try:
                found = await _read_hot_ranges(self.redis, key, window, limit)
            except _Moved:
                continue
            if found is not None:
                return found
            break
        after_ts, after_seq = ("", 0) if window.after is None else window.after
        flat = await self.scripts.call(
            self.redis,
            "read_hot",
            [keys.history(key), keys.history_index(key), keys.jobs(key)],
            [window.lo, window.hi, after_ts, after_seq, limit, 1 if window.desc else 0],
        )
        if not flat:
            return segments.empty()
        return segments.from_columns(
            [int(v) for v in flat[1::4]],
            flat[0::4],
            [bytes.fromhex(h.decode()) for h in flat[3::4]],
            flat[2::4],
        )

    async def _cold(
        self, key: str, window: Window, limit: int | None, number: str | None = None
    ) -> list[pa.Table]:
        """The object tiers' part of a read. A listed object that vanished (a merge replaced
        it) means list again."""
        for _attempt in range(RELIST_ATTEMPTS):
            try:
                return await asyncio.to_thread(self._read_cold, key, window, limit, number)
            except ObjectMissing:
                continue
        raise StoreUnavailable(f"history of {key} kept moving during {RELIST_ATTEMPTS} reads")

    def _read_cold(
        self, key: str, window: Window, limit: int | None, number: str | None
    ) -> list[pa.Table]:
        chosen = [
            stored.name
            for stored in tiers.list_objects(self.objects, key)
            if window.overlaps(stored.min_ts, stored.max_ts)
        ]

        def read(name: str) -> pa.Table:
            with self.objects.open(name) as source:
                return segments.read(source, window, limit, number=number)

        if len(chosen) < 2:
            return [read(name) for name in chosen]
        # Side by side: one object downloads while another decodes (pyarrow releases the GIL).
        with ThreadPoolExecutor(min(len(chosen), COLD_THREADS)) as pool:
            return list(pool.map(read, chosen))


class _Moved(Exception):
    """A hot source changed between reading its index and its stream (an offload moved it)."""


async def _read_hot_ranges(redis: Client, key: str, window: Window, limit: int) -> pa.Table | None:
    """read_hot without the script: None when the seqs are too scattered for ranges."""
    queries = _index_queries(keys.history_index(key), window, limit)
    replies = await send_raw(redis, [("MULTI",), *queries, ("SMEMBERS", keys.jobs(key)), ("EXEC",)])
    *answers, jobs = replies[-1]
    sources = [(keys.history(key), _members(answers, window))]
    if jobs:
        # A job copy only ever disappears whole (its entries are in an object by then), so its
        # index needs no transaction with the rest.
        names = sorted(job.decode() for job in jobs)
        per_job = [_index_queries(keys.history_index_job(key, job), window, limit) for job in names]
        replies = await send_raw(redis, [q for job_queries in per_job for q in job_queries])
        for n, job in enumerate(names):
            found = replies[n * len(queries) : (n + 1) * len(queries)]
            sources.append((keys.history_job(key, job), _members(found, window)))
    commands: list[tuple[Any, ...]] = []
    wanted = []
    for stream, members in sources:
        if not members:
            continue
        seqs = np.fromiter((int(m[:16]) for m in members), np.int64, len(members))
        first, last = int(seqs.min()), int(seqs.max())
        if last - first + 1 > HOT_SPARSE * len(members) + HOT_SPAN:
            return None
        spans = [(a, min(a + HOT_SPAN - 1, last)) for a in range(first, last + 1, HOT_SPAN)]
        commands += [("XRANGE", stream, f"{a}-0", f"{b}-0") for a, b in spans]
        wanted.append((members, seqs, len(spans)))
    if not commands:
        return segments.empty()
    replies = await send_raw(redis, commands)  # no transaction: a source that moved shows below
    tables = []
    for members, seqs, count in wanted:
        entries = [entry for reply in replies[:count] for entry in reply]
        replies = replies[count:]
        stored = np.fromiter((int(e[0].partition(b"-")[0]) for e in entries), np.int64)
        at = np.minimum(np.searchsorted(stored, seqs), max(len(stored) - 1, 0))
        if not len(stored) or not np.array_equal(stored[at], seqs):
            raise _Moved  # renamed (an offload began) or dropped (its job finished)
        fields = [entry[1] for entry in entries]
        if not all(f[0] == b"t" and f[2] == b"d" for f in fields):
            return None  # not the layout of write.lua: let the script read it
        ts = np.fromiter((int(f[1]) for f in fields), np.int64, len(fields))
        docs = pa.array([f[3] for f in fields], pa.binary())
        if not np.array_equal(at, np.arange(len(stored))):
            ts, docs = ts[at], docs.take(pa.array(at))
        digests = bytes.fromhex(b"".join(m[16:] for m in members).decode())
        if len(digests) != 20 * len(members):
            return None  # not the index layout of write.lua: let the script read it
        hashes = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(20), len(members), [None, pa.py_buffer(digests)]
        )
        tables.append(
            pa.Table.from_arrays([pa.array(ts), pa.array(seqs), hashes, docs], schema=SCHEMA)
        )
    return pa.concat_tables(tables)


def _index_queries(index: str, window: Window, limit: int) -> list[tuple[Any, ...]]:
    """The time index commands of read_hot.lua for one source."""
    lo, hi = window.lo, window.hi
    if window.after is None:
        if window.desc:
            return [("ZREVRANGEBYSCORE", index, f"({hi}", lo, "LIMIT", 0, limit)]
        return [("ZRANGEBYSCORE", index, lo, f"({hi}", "LIMIT", 0, limit)]
    after_ts = window.after[0]
    # entries tied with the cursor's ts come first (they sort by seq), then the rest
    ties = ("ZRANGEBYSCORE", index, after_ts, after_ts)
    if window.desc:
        return [ties, ("ZREVRANGEBYSCORE", index, f"({after_ts}", lo, "LIMIT", 0, limit)]
    return [ties, ("ZRANGEBYSCORE", index, f"({after_ts}", f"({hi}", "LIMIT", 0, limit)]


def _members(replies: list[Any], window: Window) -> list[bytes]:
    """Index members (``<seq, 16 digits><sha1 hex>``) in reading order, from _index_queries."""
    if window.after is None:
        return list(replies[0])
    ties, rest = replies
    after_seq = window.after[1]
    if window.desc:
        kept = [m for m in reversed(ties) if int(m[:16]) < after_seq]
    else:
        kept = [m for m in ties if int(m[:16]) > after_seq]
    return kept + list(rest)


def _position(table: pa.Table, row: int) -> tuple[int, int]:
    return int(table.column("ts")[row].as_py()), int(table.column("seq")[row].as_py())
