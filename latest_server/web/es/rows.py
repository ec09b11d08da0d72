"""The documents a search covers: which variables (named, or listed), and their history
entries in the plan's time window, read from every tier (stores/history.py: Redis, transfer and
merged objects, de-duplicated), as one set of rows with the numbers of each field on demand.

Without a filter naming ids, the main index's variables are listed from the index of variables
kept by the write path (stores/variables.py: one sorted set, paged by prefix), another index's
by a bounded SCAN of the latest hashes (``lv:*:latest``); at most LATEST_ES_SEARCH_MAX_VARIABLES
of them: past that the search is a 400 asking for a filter on the id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from latest_server import keys
from latest_server.redis_client import redis_bounded
from latest_server.stores import segments
from latest_server.stores.history import HistoryStore
from latest_server.stores.segments import Window
from latest_server.stores.variables import VariableIndex
from latest_server.web.es.errors import IllegalArgument
from latest_server.web.es.query import Plan

READS_AT_ONCE = 8  # variables read side by side
SCAN_COUNT = 1000


@dataclass(frozen=True, slots=True)
class Variable:
    index: str
    id: str
    key: str


@redis_bounded
async def variables(
    redis: Any,
    plan: Plan,
    index: str,
    namespace: str,
    limit: int,
    *,
    listed: bool = True,
    allowed: Callable[[str], bool] = lambda variable: True,
    catalog: VariableIndex | None = None,
    prefixes: tuple[str, ...] | None = None,
) -> list[Variable]:
    """The variables of ``index`` that ``plan`` covers and ``allowed`` lets the request see
    (the principal's ``prefixes``: others are left out, as by Elasticsearch's document-level
    security), sorted by id; a 400 past ``limit``.

    Listed from the index of variables (``catalog``, stores/variables.py) for the main index,
    under the longest literal prefix of the plan's id globs; for another index (a namespace,
    which that index does not hold) by a bounded SCAN of the latest hashes. Without ``listed``
    (LATEST_BACKEND=elasticsearch: no latest hash in Redis) such an index needs its ids named."""
    named = plan.exact_ids()
    if named is not None:
        named = {v for v in named if allowed(v)}
        if len(named) > limit:
            raise _too_many(limit)
        return [Variable(index, v, keys.key_for(v, namespace)) for v in sorted(named)]
    if catalog is not None and not namespace:
        return await _catalogued(catalog, plan, index, limit, allowed, prefixes)
    if not listed:
        raise IllegalArgument(
            "with LATEST_BACKEND=elasticsearch the latest documents of this index are in "
            "Elasticsearch and cannot be listed here: a filter naming the ids is required "
            "(term, terms, or query_string id:<value> without wildcards)"
        )
    found: list[Variable] = []
    batch: list[str] = []

    async def check() -> None:
        ids = await _ids(redis, batch)
        for key, variable in zip(batch, ids, strict=True):
            if variable is None or keys.key_for(variable, namespace) != key:
                continue  # deleted, or another index's
            if plan.matches(variable) and allowed(variable):
                found.append(Variable(index, variable, key))
                if len(found) > limit:
                    raise _too_many(limit)
        batch.clear()

    async for name in redis.scan_iter(match=f"{keys.PREFIX}:*:latest", count=SCAN_COUNT):
        batch.append(keys.key_of(name.decode() if isinstance(name, bytes) else name))
        if len(batch) >= SCAN_COUNT:
            await check()
    if batch:
        await check()
    return sorted(found, key=lambda v: v.id)


async def _catalogued(
    catalog: VariableIndex,
    plan: Plan,
    index: str,
    limit: int,
    allowed: Callable[[str], bool],
    prefixes: tuple[str, ...] | None,
) -> list[Variable]:
    found: list[Variable] = []
    for prefix in _prefixes(plan.prefix(), prefixes):
        async for variable in catalog.every(prefix):
            if plan.matches(variable) and allowed(variable):
                found.append(Variable(index, variable, keys.key_for(variable)))
                if len(found) > limit:
                    raise _too_many(limit)
    return sorted(found, key=lambda v: v.id)


def _prefixes(wanted: str, granted: tuple[str, ...] | None) -> list[str]:
    """The prefixes to list: ``wanted`` within each of the ``granted`` ones (None: every id)."""
    if granted is None:
        return [wanted]
    found = set()
    for prefix in granted:
        if prefix.startswith(wanted):
            found.add(prefix)
        elif wanted.startswith(prefix):
            found.add(wanted)
    # a prefix inside another lists nothing new
    return sorted(p for p in found if not any(p != q and p.startswith(q) for q in found))


async def _ids(redis: Any, batch: list[str]) -> list[str | None]:
    async with redis.pipeline(transaction=False) as pipe:
        for key in batch:
            pipe.hget(keys.latest(key), "id")
        replies = await pipe.execute()
    return [None if r is None else r.decode() if isinstance(r, bytes) else str(r) for r in replies]


def _too_many(limit: int) -> IllegalArgument:
    return IllegalArgument(
        f"this search covers more than {limit} variables (LATEST_ES_SEARCH_MAX_VARIABLES): "
        "a filter on the id is required (term, terms, or query_string id:<value>)"
    )


@dataclass
class Rows:
    """History entries of several variables: row ``i`` is entry ``seq[i]`` of
    ``variables[var[i]]`` at ``ts[i]`` µs."""

    variables: list[Variable]
    var: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    docs: pa.Array
    complete: bool  # every entry of the window (not the first few of each variable)
    _numbers: dict[str, np.ndarray] = field(default_factory=dict)
    _columns: dict[str, pa.Array] | None = None

    @classmethod
    def none(cls, chosen: list[Variable]) -> Rows:
        """No rows read (the aggregations were the engine's, no hit was asked)."""
        nothing = np.empty(0, np.int64)
        return cls(chosen, nothing, nothing, nothing, pa.array([], pa.binary()), False)

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def ts_ms(self) -> np.ndarray:
        ms: np.ndarray = self.ts // 1000
        return ms

    def numbers(self, path: str) -> np.ndarray:
        """The number at dotted ``path`` of every row, NaN where there is none."""
        found = self._numbers.get(path)
        if found is not None:
            return found
        if self._columns is None:
            self._columns = segments.number_columns(self.docs) if len(self.docs) else {}
        column = self._columns.get(path)
        if column is None:  # not one table, or not a number in any document: look in each
            column = segments.numbers(self.docs, tuple(path.split(".")))
        values: np.ndarray = column.to_numpy(zero_copy_only=False).astype(np.float64)
        self._numbers[path] = values
        return values

    def leaves(self, path: str, rows: np.ndarray) -> list[Any]:
        """The value at ``path`` of each of ``rows`` (None where there is none), any JSON type."""
        parts = path.split(".")
        out: list[Any] = []
        for doc in self.docs.take(pa.array(rows, pa.int64())).to_pylist():
            value: Any = orjson.loads(doc)
            for part in parts:
                value = value.get(part) if isinstance(value, dict) else None
            out.append(value)
        return out


@dataclass(frozen=True, slots=True)
class After:
    """``search_after``: hits past the entry at ``ts`` µs, seq ``seq`` of variable ``id``, in
    the order (ts, id, seq); without ``id``, past the millisecond of ``ts``."""

    ts: int
    seq: int = 0
    id: str | None = None


def window_of(plan: Plan, desc: bool, variable: Variable, after: After | None) -> Window | None:
    """The window of ``variable``'s entries a page may hold (None: nothing)."""
    lo, hi, past = plan.lo, plan.hi, None
    mark = None if after is None else after.id
    if after is not None and mark is None:  # past a millisecond
        if desc:
            hi = min(hi, after.ts // 1000 * 1000)
        else:
            lo = max(lo, (after.ts // 1000 + 1) * 1000)
    elif after is not None and mark is not None:
        if variable.id == mark:
            past = (after.ts, after.seq)
        elif (variable.id > mark) != desc:  # its entries at ts come after the mark
            lo, hi = (lo, min(hi, after.ts + 1)) if desc else (max(lo, after.ts), hi)
        else:
            lo, hi = (lo, min(hi, after.ts)) if desc else (max(lo, after.ts + 1), hi)
    return Window(lo, hi, past, desc) if lo < hi else None


async def read(
    history: HistoryStore,
    chosen: list[Variable],
    plan: Plan,
    limit: int | None,
    desc: bool,
    after: After | None = None,
) -> Rows:
    """The entries of ``plan``'s window of each variable (past ``after``); with ``limit``, the
    first ``limit`` of each in the direction asked (enough for any page of at most ``limit``
    hits)."""
    gate = asyncio.Semaphore(READS_AT_ONCE)

    async def one(variable: Variable) -> pa.Table:
        window = window_of(plan, desc, variable, after)
        if window is None:
            return segments.empty()
        async with gate:
            page = await history.read(variable.key, window, limit)
        return page.entries

    tables = await asyncio.gather(*(one(v) for v in chosen))
    complete = limit is None or all(t.num_rows < limit for t in tables)
    lengths = [t.num_rows for t in tables]
    var = np.repeat(np.arange(len(chosen), dtype=np.int64), lengths)
    if tables and sum(lengths):
        table = pa.concat_tables(tables)
        ts = table.column("ts").to_numpy()
        seq = table.column("seq").to_numpy()
        docs = table.column("doc").combine_chunks()
    else:
        ts = seq = np.empty(0, np.int64)
        docs = pa.array([], pa.binary())
    return Rows(chosen, var, ts, seq, docs, complete)
