"""The format of transfer and merged objects: Parquet, sorted by (ts, seq), zstd, delta-encoded
integers, row groups small enough that a time window reads only the groups it overlaps.

Entries travel as Arrow tables with the columns of ``SCHEMA``, never as Python objects per row:
a million-entry read stays a handful of vectorised steps.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("hash", pa.binary(20), nullable=False),  # sha1(doc): with ts, the entry's identity
        pa.field("doc", pa.binary(), nullable=False),
    ]
)
ROW_GROUP_ROWS = 16_384


@dataclass(frozen=True, slots=True)
class Window:
    """Entries with ``lo <= ts < hi``, strictly after ``after`` = (ts, seq) in reading order."""

    lo: int
    hi: int
    after: tuple[int, int] | None = None
    desc: bool = False

    def mask(self, table: pa.Table) -> Any:
        ts = table.column("ts")
        mask = pc.and_(pc.greater_equal(ts, self.lo), pc.less(ts, self.hi))
        if self.after is not None:
            a_ts, a_seq = self.after
            seq = table.column("seq")
            beyond = pc.less if self.desc else pc.greater
            later = pc.or_(beyond(ts, a_ts), pc.and_(pc.equal(ts, a_ts), beyond(seq, a_seq)))
            mask = pc.and_(mask, later)
        return mask

    def contains(self, min_ts: int, max_ts: int) -> bool:
        return self.after is None and self.lo <= min_ts and max_ts < self.hi

    def overlaps(self, min_ts: int, max_ts: int) -> bool:
        """Could an object or row group spanning [min_ts, max_ts] hold entries of the window?"""
        if max_ts < self.lo or min_ts >= self.hi:
            return False
        if self.after is not None:
            if self.desc and min_ts > self.after[0]:
                return False
            if not self.desc and max_ts < self.after[0]:
                return False
        return True


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def from_columns(
    ts: Sequence[int], seq: Sequence[int], hashes: Sequence[bytes], docs: Sequence[bytes]
) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array(ts, pa.int64()),
            pa.array(seq, pa.int64()),
            pa.array(hashes, pa.binary(20)),
            pa.array(docs, pa.binary()),
        ],
        schema=SCHEMA,
    )


def _order(table: pa.Table, desc: bool) -> Any:
    """Indices that sort ``table`` by (ts, seq), or None when it already is in that order."""
    ts = table.column("ts").to_numpy()
    seq = table.column("seq").to_numpy()
    if len(ts) < 2:
        return None
    if desc:
        ts, seq = -ts, -seq
    step_ts = np.diff(ts)
    if np.all((step_ts > 0) | ((step_ts == 0) & (np.diff(seq) > 0))):
        return None
    return np.lexsort((seq, ts))


def sort(table: pa.Table, desc: bool = False) -> pa.Table:
    order = _order(table, desc)
    return table if order is None else table.take(pa.array(order))


def deduplicate(table: pa.Table) -> pa.Table:
    """Keep one row per seq (the same entry read from two tiers) and one row per (ts, hash) (a
    packet redelivered after its first copy left Redis): the lowest seq in both cases.
    The result is sorted by (ts, seq)."""
    table = sort(table)
    n = table.num_rows
    if n < 2:
        return table
    keep = np.ones(n, dtype=bool)
    seq = table.column("seq").to_numpy()
    # Seqs growing with time (entries written in time order) are unique: skip sorting them.
    if not np.all(seq[1:] > seq[:-1]):
        _, first = np.unique(seq, return_index=True)  # first occurrence: lowest (ts, seq)
        if len(first) != n:
            keep[:] = False
            keep[first] = True
    # Equal content implies equal ts, so only runs of tied ts among the rows kept so far need
    # their hashes compared.
    ts = table.column("ts").to_numpy()
    kept = np.nonzero(keep)[0]
    kept_ts = ts[kept]
    tied = np.nonzero(kept_ts[1:] == kept_ts[:-1])[0]
    if len(tied):
        rows = kept[np.unique(np.concatenate([tied, tied + 1]))]  # in (ts, seq) order
        hashes = table.column("hash").take(pa.array(rows)).to_pylist()
        seen: set[tuple[int, bytes]] = set()
        for i, digest in zip(rows.tolist(), hashes, strict=True):
            identity = (int(ts[i]), digest)
            if identity in seen:
                keep[i] = False  # a later seq of the same packet
            else:
                seen.add(identity)
    if keep.all():
        return table
    return table.filter(pa.array(keep))


def encode(table: pa.Table, metadata: dict[str, str] | None = None) -> bytes:
    """Parquet bytes of ``table`` (sorted here by (ts, seq))."""
    table = sort(table.cast(SCHEMA))
    if metadata:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        row_group_size=ROW_GROUP_ROWS,
        compression="zstd",
        use_dictionary=False,
        column_encoding={"ts": "DELTA_BINARY_PACKED", "seq": "DELTA_BINARY_PACKED"},
        write_statistics=["ts", "seq"],
    )
    return sink.getvalue()


def read(source: Any, window: Window, limit: int | None = None) -> pa.Table:
    """The entries of ``window`` in one object, sorted in the window's direction, at most
    ``limit``. Row groups outside the window are never fetched."""
    parquet = pq.ParquetFile(source, pre_buffer=True)
    meta = parquet.metadata
    groups = []
    inside = True  # every chosen group lies wholly inside the window: no row filter needed
    for index in range(meta.num_row_groups):
        stats = meta.row_group(index).column(0).statistics
        if stats is None or not stats.has_min_max:
            groups.append(index)
            inside = False
        elif window.overlaps(stats.min, stats.max):
            groups.append(index)
            inside = inside and window.contains(stats.min, stats.max)
    if window.desc:
        groups.reverse()
    if limit is None:
        if not groups:
            return empty()
        table = parquet.read_row_groups(groups)
        if not inside:
            table = _filter(table, window)
        return _reverse(table) if window.desc else table
    parts: list[pa.Table] = []
    found = 0
    for index in groups:
        table = _filter(parquet.read_row_group(index, use_threads=False), window)
        parts.append(_reverse(table) if window.desc else table)
        found += table.num_rows
        if found >= limit:
            break
    if not parts:
        return empty()
    return pa.concat_tables(parts).slice(0, limit)


def _filter(table: pa.Table, window: Window) -> pa.Table:
    """Rows of the window; objects are stored sorted, so the order is kept."""
    mask = window.mask(table)
    if pc.all(mask).as_py():
        return table
    return table.filter(mask)


def _reverse(table: pa.Table) -> pa.Table:
    return table.take(pa.array(np.arange(table.num_rows - 1, -1, -1)))
