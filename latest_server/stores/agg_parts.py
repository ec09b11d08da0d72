"""The parts of an aggregation: rows of one tier read as numbers, de-duplicated, turned into a
partial (partials.py). A ``Task`` (some row groups of an object, or the objects of one cluster
with the hot rows of its time span) runs here in-process, in a thread, or in a worker process
of the query pool: it is picklable and opens its own object store.

Rows travel as Arrow tables with the columns ``ts``, ``seq``, ``hash`` and ``v:<field>`` (float64,
NaN where an entry holds no number at the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from latest_server.settings import Settings
from latest_server.stores import buckets, open_object_store, partials, segments
from latest_server.stores.base import ObjectStore
from latest_server.stores.segments import NUMBER_PREFIX, Window

VALUE = "v:"
KEYS = ("ts", "seq", "hash")
# A hole worth reading rather than a request more: ~10 ms a request (S3's first byte, or a
# loaded moto) at ~200 MB/s is 2 MB.
HOLE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Spec:
    """What every part of one query computes: its window, fields and buckets."""

    lo: int
    hi: int
    fields: tuple[str, ...]
    interval: buckets.Interval | None  # None: one bucket, keyed 0
    tz: str = "UTC"
    values: bool = False  # keep each bucket's values (cardinality, percentiles)

    @property
    def window(self) -> Window:
        return Window(self.lo, self.hi)


@dataclass(frozen=True)
class Task:
    """Row-group slice ``part`` = (k, K) of one object, or whole objects (several, or with
    ``hot`` entries of their time span: ts, seq, hash, doc), to be de-duplicated together."""

    objects_url: str
    settings: Settings
    names: tuple[str, ...]
    spec: Spec
    part: tuple[int, int] = (0, 1)
    hot: pa.Table | None = None
    hashes: bool = False  # keep the hash column, even of one object alone
    whole: bool = False  # small objects: one GET of each, not a footer's and the columns'


_STORES: dict[tuple[str, Settings], ObjectStore] = {}


def _store(url: str, settings: Settings) -> ObjectStore:
    """The object store of a worker process, opened once."""
    found = _STORES.get((url, settings))
    if found is None:
        found = _STORES[(url, settings)] = open_object_store(url, settings)
    return found


def run(task: Task, store: ObjectStore | None = None) -> partials.Partial:
    """The partial of a task (in a worker process, or in the parent with its ``store``)."""
    return partial_of(rows_of(task, store), task.spec)


def rows_of(task: Task, store: ObjectStore | None = None) -> pa.Table:
    store = store or _store(task.objects_url, task.settings)
    alone = len(task.names) == 1 and task.hot is None and not task.hashes
    # One object alone in its span is sorted and holds no duplicates (see aggregate.py): its
    # hashes (20 incompressible bytes a row, most of what a read of numbers would fetch) are
    # not needed.
    tables = [
        read_object(store, n, task.spec, task.part, hashes=not alone, whole=task.whole)
        for n in task.names
    ]
    if task.hot is not None:
        tables.append(hot_rows(task.hot, task.spec.fields))
    if alone:
        return tables[0]
    return deduplicate(pa.concat_tables(tables))


def read_object(
    store: ObjectStore,
    name: str,
    spec: Spec,
    part: tuple[int, int],
    *,
    hashes: bool = True,
    whole: bool = False,
) -> pa.Table:
    """Slice ``part`` of the row groups of object ``name`` that overlap the window: ts, seq,
    hash (unless not ``hashes``) and the ``n:`` columns of the fields (the documents only for
    a field without one)."""
    window = spec.window
    opened = pa.BufferReader(store.get(name)) if whole else store.open(name)
    with opened as source:
        parquet = pq.ParquetFile(source, pre_buffer=True)
        present = set(parquet.schema_arrow.names)
        stored = [f for f in spec.fields if NUMBER_PREFIX + f in present]
        keys = KEYS if hashes else KEYS[:2]
        columns = [*keys, *(NUMBER_PREFIX + f for f in stored)]
        if len(stored) < len(spec.fields):
            columns.append("doc")
        meta = parquet.metadata
        groups, inside = segments.window_groups(parquet, window)
        k, of = part
        groups = groups[k * len(groups) // of : (k + 1) * len(groups) // of]
        if not groups:
            return empty_rows(spec.fields, hashes)
        prefetch = getattr(source, "prefetch", None)
        if prefetch is not None:  # a remote object: every chunk needed, side by side
            indices = [parquet.schema_arrow.get_field_index(c) for c in columns]
            prefetch(spans(segments._chunk_ranges(meta, groups, indices)))
        table = parquet.read_row_groups(groups, columns=columns)
    if not inside:
        table = table.filter(window.mask(table))
    numbers = {}
    for f in spec.fields:
        if f in stored:
            numbers[f] = table.column(NUMBER_PREFIX + f)
        else:
            numbers[f] = segments.numbers(table.column("doc"), tuple(f.split(".")))
    return _rows(table, numbers, hashes)


def spans(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, length) ranges joined across holes under HOLE_BYTES: a few columns of many row
    groups are many small ranges, and a request costs more than the bytes of such a hole
    (the documents between two row groups' numbers) take to arrive."""
    out: list[list[int]] = []
    for start, length in sorted(ranges):
        if out and start - out[-1][1] <= HOLE_BYTES:
            out[-1][1] = max(out[-1][1], start + length)
        else:
            out.append([start, start + length])
    return [(a, b - a) for a, b in out]


def hot_rows(entries: pa.Table, fields: tuple[str, ...]) -> pa.Table:
    """The rows of hot entries (ts, seq, hash, doc): numbers parsed from the documents by
    pyarrow's JSON reader, told to read only the fields (as float64) and skip the rest; one
    document at a time where that fails (a field that is text in some document)."""
    docs = entries.column("doc")
    numbers = {}
    for f in fields:
        column = json_numbers(docs, f) if entries.num_rows else None
        numbers[f] = segments.numbers(docs, tuple(f.split("."))) if column is None else column
    return _rows(entries, numbers)


def json_numbers(docs: pa.Array | pa.ChunkedArray, path: str) -> pa.Array | None:
    """The float64 at dotted ``path`` of each document (null where absent), or None if some
    document holds anything but a number (or an object on the way) there."""
    if isinstance(docs, pa.ChunkedArray):
        docs = docs.combine_chunks()
    parts = path.split(".")
    kind: pa.DataType = pa.float64()
    for part in reversed(parts[1:]):
        kind = pa.struct([pa.field(part, kind)])
    schema = pa.schema([pa.field(parts[0], kind)])
    lines = pc.binary_join_element_wise(docs, pa.scalar(b"", pa.binary()), b"\n")
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[
        lines.offset : lines.offset + len(lines) + 1
    ]
    data = lines.buffers()[2][int(offsets[0]) : int(offsets[-1])]
    longest = pc.max(pc.binary_length(docs)).as_py() or 0
    try:
        parsed = pj.read_json(
            pa.BufferReader(data),
            read_options=pj.ReadOptions(block_size=max(1 << 20, 2 * longest)),
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowException:
        return None
    if parsed.num_rows != len(docs):
        return None
    column: Any = parsed.column(0).combine_chunks()
    for _part in parts[1:]:
        column = pc.struct_field(column, [0])
    return column


def _rows(table: pa.Table, numbers: dict[str, Any], hashes: bool = True) -> pa.Table:
    names = list(KEYS if hashes else KEYS[:2])
    arrays = [table.column(k) for k in names]
    for f, column in numbers.items():
        filled = pc.fill_null(column, np.nan) if column.null_count else column
        arrays.append(filled)
        names.append(VALUE + f)
    return pa.Table.from_arrays(arrays, names=names)


def empty_rows(fields: tuple[str, ...], hashes: bool = True) -> pa.Table:
    keys = [pa.array([], pa.int64()), pa.array([], pa.int64()), pa.array([], pa.binary(20))]
    names = list(KEYS)
    if not hashes:
        keys, names = keys[:2], names[:2]
    return pa.Table.from_arrays(
        [*keys, *(pa.array([], pa.float64()) for _ in fields)],
        names=[*names, *(VALUE + f for f in fields)],
    )


def deduplicate(table: pa.Table) -> pa.Table:
    """Rows sorted by (ts, seq), one per seq (an entry read from two tiers) and one per
    (ts, hash) (a packet redelivered after its first copy left Redis): the lowest seq, as
    history reads keep (segments.deduplicate)."""
    table = segments.sort(table)
    n = table.num_rows
    if n < 2:
        return table
    keep = np.ones(n, dtype=bool)
    seq = table.column("seq").to_numpy()
    if not np.all(seq[1:] > seq[:-1]):
        _, first = np.unique(seq, return_index=True)
        if len(first) != n:
            keep[:] = False
            keep[first] = True
    ts = table.column("ts").to_numpy()
    kept = np.flatnonzero(keep)
    kept_ts = ts[kept]
    tied = np.flatnonzero(kept_ts[1:] == kept_ts[:-1])
    if len(tied):
        rows = kept[np.unique(np.concatenate([tied, tied + 1]))]
        hashes = table.column("hash").take(pa.array(rows)).to_pylist()
        seen: set[tuple[int, bytes]] = set()
        for i, digest in zip(rows.tolist(), hashes, strict=True):
            identity = (int(ts[i]), digest)
            if identity in seen:
                keep[i] = False
            else:
                seen.add(identity)
    return table if keep.all() else table.filter(pa.array(keep))


def partial_of(rows: pa.Table, spec: Spec) -> partials.Partial:
    ts = rows.column("ts").to_numpy()
    seq = rows.column("seq").to_numpy()
    if spec.interval is None:
        starts = np.zeros(len(ts), np.int64)
    else:
        starts = buckets.bucket_starts(ts, spec.interval, buckets.zone(spec.tz))
    numbers = {f: rows.column(VALUE + f).to_numpy() for f in spec.fields}
    return partials.from_rows(starts, ts, seq, numbers, spec.values)
