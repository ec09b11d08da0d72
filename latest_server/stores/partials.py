"""Partial aggregates: what one part of a query (some row groups, the hot tier, a variable)
knows of each bucket, mergeable with the partials of the other parts in any order, then
finished into the values asked for. Pure numpy; the rows a partial is made of are already
de-duplicated (see aggregate.py).

Per bucket (its start, UTC µs): the number of entries (``docs``); per field, of the entries
holding a number there: count, sum, sum of squares, min, max, the first and the last by
(ts, seq) with their (ts, seq), and, only for ``cardinality`` and ``percentiles``, the values
themselves (exact, where Elasticsearch estimates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

AGGS = (
    "min",
    "max",
    "avg",
    "sum",
    "count",
    "first",
    "last",
    "cardinality",
    "percentiles",
    "extended_stats",
)
NEEDS_VALUES = frozenset({"cardinality", "percentiles"})
DEFAULT_PERCENTS = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
SIGMA = 2.0  # extended_stats' std_deviation_bounds, as Elasticsearch's default


@dataclass
class FieldPartial:
    count: Any
    sum: Any
    sumsq: Any
    min: Any
    max: Any
    first: Any  # (n, 3) float64 rows: ts, seq, value (ts -inf where count is 0)
    last: Any
    values: list[Any] | None = None  # per bucket, its values (only when NEEDS_VALUES)


@dataclass
class Partial:
    starts: Any  # sorted unique bucket starts, int64
    docs: Any  # entries per bucket, int64
    fields: dict[str, FieldPartial] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        size = int(self.starts.nbytes) * 2
        for part in self.fields.values():
            size += int(self.starts.nbytes) * 11
            if part.values is not None:
                size += sum(int(v.nbytes) for v in part.values)
        return size


def empty_partial(fields: tuple[str, ...], values: bool) -> Partial:
    none = np.zeros(0, np.int64)
    return from_rows(none, none, none, {f: np.zeros(0) for f in fields}, values)


def from_rows(
    starts: Any, ts: Any, seq: Any, numbers: dict[str, Any], values: bool = False
) -> Partial:
    """The partial of rows sorted by (ts, seq), ``starts`` their bucket starts and
    ``numbers`` per field a float64 array (NaN: no number)."""
    n = len(starts)
    if n and not np.all(starts[1:] >= starts[:-1]):  # buckets not in time order: group them
        order = np.argsort(starts, kind="stable")  # stable: (ts, seq) order within a bucket
        starts, ts, seq = starts[order], ts[order], seq[order]
        numbers = {name: column[order] for name, column in numbers.items()}
    cuts = np.flatnonzero(starts[1:] != starts[:-1]) + 1 if n else np.zeros(0, np.int64)
    bounds = np.concatenate([[0], cuts]).astype(np.int64) if n else np.zeros(0, np.int64)
    keys = starts[bounds]
    docs = np.diff(np.append(bounds, n))
    out = Partial(keys, docs.astype(np.int64))
    rows = np.arange(n)
    for name, column in numbers.items():
        column = np.asarray(column, np.float64)
        valid = ~np.isnan(column)
        if not n:
            out.fields[name] = _empty_field(0, values)
            continue
        count = np.add.reduceat(valid.astype(np.int64), bounds)
        zeroed = np.where(valid, column, 0.0)
        first_i = np.minimum.reduceat(np.where(valid, rows, n), bounds)
        last_i = np.maximum.reduceat(np.where(valid, rows, -1), bounds)
        part = FieldPartial(
            count,
            np.add.reduceat(zeroed, bounds),
            np.add.reduceat(zeroed * zeroed, bounds),
            np.minimum.reduceat(np.where(valid, column, np.inf), bounds),
            np.maximum.reduceat(np.where(valid, column, -np.inf), bounds),
            _picked(first_i, count, ts, seq, column, np.inf),
            _picked(last_i, count, ts, seq, column, -np.inf),
        )
        if values:
            part.values = [
                column[a:b][valid[a:b]]
                for a, b in zip(bounds, np.append(bounds[1:], n), strict=True)
            ]
        out.fields[name] = part
    return out


def _picked(index: Any, count: Any, ts: Any, seq: Any, column: Any, missing: float) -> Any:
    safe = np.clip(index, 0, max(len(ts) - 1, 0))
    rows = np.stack([ts[safe], seq[safe], column[safe]], axis=1).astype(np.float64)
    rows[count == 0] = (missing, missing, np.nan)
    return rows


def _empty_field(n: int, values: bool) -> FieldPartial:
    none = np.zeros(n)
    blank = np.tile([np.inf, np.inf, np.nan], (n, 1))
    return FieldPartial(
        np.zeros(n, np.int64),
        none,
        none.copy(),
        np.full(n, np.inf),
        np.full(n, -np.inf),
        blank,
        blank * [-1, -1, 1],
        [np.zeros(0)] * n if values else None,
    )


def merge(parts: list[Partial]) -> Partial:
    """One partial of many (of disjoint entries), in any order."""
    parts = [p for p in parts if len(p.starts)] or parts[:1]
    if len(parts) == 1:
        return parts[0]
    keys, where = np.unique(np.concatenate([p.starts for p in parts]), return_inverse=True)
    m = len(keys)
    docs = np.zeros(m, np.int64)
    np.add.at(docs, where, np.concatenate([p.docs for p in parts]))
    out = Partial(keys, docs)
    for name in parts[0].fields:
        pieces = [p.fields[name] for p in parts]
        values = pieces[0].values is not None
        merged = _empty_field(m, values)
        np.add.at(merged.count, where, np.concatenate([f.count for f in pieces]))
        np.add.at(merged.sum, where, np.concatenate([f.sum for f in pieces]))
        np.add.at(merged.sumsq, where, np.concatenate([f.sumsq for f in pieces]))
        np.minimum.at(merged.min, where, np.concatenate([f.min for f in pieces]))
        np.maximum.at(merged.max, where, np.concatenate([f.max for f in pieces]))
        merged.first = _extreme(where, m, np.concatenate([f.first for f in pieces]), first=True)
        merged.last = _extreme(where, m, np.concatenate([f.last for f in pieces]), first=False)
        if values:
            lists: list[list[Any]] = [[] for _ in range(m)]
            at = 0
            for piece in pieces:
                assert piece.values is not None
                for bucket_values in piece.values:
                    lists[where[at]].append(bucket_values)
                    at += 1
            merged.values = [np.concatenate(v) if v else np.zeros(0) for v in lists]
        out.fields[name] = merged
    return out


def _extreme(where: Any, m: int, rows: Any, *, first: bool) -> Any:
    """Per bucket, the row of least (ts, seq) (``first``) or greatest."""
    sign = 1.0 if first else -1.0
    order = np.lexsort((sign * rows[:, 1], sign * rows[:, 0], where))
    grouped = where[order]
    head = np.concatenate([[True], grouped[1:] != grouped[:-1]])
    out = np.tile([sign * np.inf, sign * np.inf, np.nan], (m, 1))
    out[grouped[head]] = rows[order[head]]
    return out


def with_buckets(partial: Partial, starts: Any) -> Partial:
    """``partial`` with every bucket of ``starts`` too (empty ones: min_doc_count 0)."""
    if not len(starts):
        return partial
    values = any(f.values is not None for f in partial.fields.values())
    blank = Partial(
        np.asarray(starts, np.int64),
        np.zeros(len(starts), np.int64),
        {name: _empty_field(len(starts), values) for name in partial.fields},
    )
    return merge([partial, blank]) if len(partial.starts) else blank


def finish(part: FieldPartial, i: int, aggs: tuple[str, ...], percents: tuple[float, ...]) -> Any:
    """The values of ``aggs`` for bucket ``i`` of a field: a float, or None where there is no
    number (``sum`` and ``count`` are 0 then, as in Elasticsearch)."""
    count = int(part.count[i])
    some = count > 0
    out: dict[str, Any] = {}
    for agg in aggs:
        if agg == "count":
            out[agg] = count
        elif agg == "sum":
            out[agg] = float(part.sum[i])
        elif agg == "min":
            out[agg] = float(part.min[i]) if some else None
        elif agg == "max":
            out[agg] = float(part.max[i]) if some else None
        elif agg == "avg":
            out[agg] = float(part.sum[i] / count) if some else None
        elif agg == "first":
            out[agg] = float(part.first[i, 2]) if some else None
        elif agg == "last":
            out[agg] = float(part.last[i, 2]) if some else None
        elif agg == "cardinality":
            assert part.values is not None
            out[agg] = len(np.unique(part.values[i]))
        elif agg == "percentiles":
            assert part.values is not None
            chosen = part.values[i]
            out[agg] = {
                str(float(p)): (float(np.percentile(chosen, p)) if some else None) for p in percents
            }
        elif agg == "extended_stats":
            out[agg] = _extended(count, float(part.sum[i]), float(part.sumsq[i]), part, i)
    return out


def _extended(count: int, total: float, squares: float, part: FieldPartial, i: int) -> Any:
    if not count:
        return {
            "count": 0,
            "min": None,
            "max": None,
            "avg": None,
            "sum": 0.0,
            "sum_of_squares": None,
            "variance": None,
            "std_deviation": None,
            "std_deviation_bounds": {"upper": None, "lower": None},
        }
    mean = total / count
    variance = max(squares / count - mean * mean, 0.0)
    deviation = float(np.sqrt(variance))
    return {
        "count": count,
        "min": float(part.min[i]),
        "max": float(part.max[i]),
        "avg": mean,
        "sum": total,
        "sum_of_squares": squares,
        "variance": variance,
        "std_deviation": deviation,
        "std_deviation_bounds": {
            "upper": mean + SIGMA * deviation,
            "lower": mean - SIGMA * deviation,
        },
    }
