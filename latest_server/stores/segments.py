"""The format of transfer and merged objects: Parquet, sorted by (ts, seq), zstd, delta-encoded
integers, row groups small enough that a time window reads only the groups it overlaps.

Entries travel as Arrow tables with the columns of ``SCHEMA``, never as Python objects per row:
a million-entry read stays a handful of vectorised steps.

Besides those columns an object holds every numeric leaf of its documents as a float64 column
``n:<dotted path>`` (null where a document has none there), extracted once when the object is
written: a downsampled series of a field then reads that column and the keys, not the
documents. Objects whose documents do not parse as one table (a field that is a number here and
a string there) have no such columns; readers then take the numbers from the documents.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from latest_server.canonical import stored_digest

SCHEMA = pa.schema(
    [
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("hash", pa.binary(20), nullable=False),  # canonical.digest: the identity, with ts
        pa.field("doc", pa.binary(), nullable=False),
    ]
)
ROW_GROUP_ROWS = 16_384
NUMBER_PREFIX = "n:"
MAX_NUMBER_COLUMNS = 64  # numeric leaves kept per object, the first in document order
MAX_DEPTH = 4  # of nested objects walked for them


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
    # their identities compared: the digest of each one's document, worked out again from the
    # document rather than taken from the hash column, which objects written before digests
    # came from the canonical form (canonical.canonical) hold as sha1 of the bytes.
    ts = table.column("ts").to_numpy()
    kept = np.nonzero(keep)[0]
    kept_ts = ts[kept]
    tied = np.nonzero(kept_ts[1:] == kept_ts[:-1])[0]
    if len(tied):
        rows = kept[np.unique(np.concatenate([tied, tied + 1]))]  # in (ts, seq) order
        docs = table.column("doc").take(pa.array(rows)).to_pylist()
        seen: set[tuple[int, bytes]] = set()
        for i, doc in zip(rows.tolist(), docs, strict=True):
            identity = (int(ts[i]), stored_digest(doc))
            if identity in seen:
                keep[i] = False  # a later seq of the same packet
            else:
                seen.add(identity)
    if keep.all():
        return table
    return table.filter(pa.array(keep))


def number_columns(docs: pa.Array | pa.ChunkedArray) -> dict[str, pa.Array]:
    """Every numeric leaf of ``docs`` (JSON objects) as a float64 array, by dotted path; empty
    when the documents do not parse as one table. pyarrow's JSON reader does the work in C++:
    about 1.5 µs per 200-byte document here, about what orjson alone takes to parse one."""
    if isinstance(docs, pa.ChunkedArray):
        docs = docs.combine_chunks()
    if len(docs) == 0:
        return {}
    # One newline-terminated line per document, laid end to end in one buffer.
    lines = pc.binary_join_element_wise(docs, pa.scalar(b"", pa.binary()), b"\n")
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[
        lines.offset : lines.offset + len(lines) + 1
    ]
    data = lines.buffers()[2][int(offsets[0]) : int(offsets[-1])]
    try:
        longest = pc.max(pc.binary_length(docs)).as_py() or 0
        options = pj.ReadOptions(block_size=max(1 << 20, 2 * longest))  # a document per block
        parsed = pj.read_json(pa.BufferReader(data), read_options=options)
    except pa.ArrowException:
        # types that differ between documents, a document larger than the reader's block, ...:
        # no columns, never a failed offload
        return {}
    if parsed.num_rows != len(docs):
        return {}
    found: dict[str, pa.Array] = {}

    def walk(
        prefix: str, fields: pa.StructType | pa.Schema, columns: list[Any], depth: int
    ) -> None:
        for field, column in zip(fields, columns, strict=True):
            if "." in field.name or len(found) >= MAX_NUMBER_COLUMNS:
                continue  # a dotted key could not be told from a nested path
            name = prefix + field.name
            kind = field.type
            if pa.types.is_integer(kind) or pa.types.is_floating(kind):
                # unsafe: integers past 2**53 round, as float() rounds them in a series read
                # from the documents, instead of failing the whole object
                found[name] = pc.cast(column, pa.float64(), safe=False)
            elif pa.types.is_struct(kind) and depth < MAX_DEPTH:
                children = [pc.struct_field(column, [i]) for i in range(kind.num_fields)]
                walk(name + ".", kind, children, depth + 1)

    walk("", parsed.schema, [c.combine_chunks() for c in parsed.columns], 1)
    return found


def numbers(docs: pa.Array | pa.ChunkedArray, path: tuple[str, ...]) -> pa.Array:
    """The number at ``path`` in each document (null where there is none), parsing each one:
    for what has no ``n:`` column (Redis, an object without them)."""
    values: list[float | None] = []
    for doc in docs.to_pylist():
        value: Any = orjson.loads(doc)
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
        else:
            values.append(None)
    return pa.array(values, pa.float64())


def encode(table: pa.Table, metadata: dict[str, str] | None = None) -> bytes:
    """Parquet bytes of ``table`` (sorted here by (ts, seq)), with its ``n:`` columns."""
    table = sort(table.select(SCHEMA.names).cast(SCHEMA))
    # The n: columns go first in each row group: a read of the entries then skips them as one
    # small hole before the keys, and a read of one number finds it next to the keys.
    for position, (name, column) in enumerate(number_columns(table.column("doc")).items()):
        table = table.add_column(position, pa.field(NUMBER_PREFIX + name, pa.float64()), column)
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


def read(
    source: Any, window: Window, limit: int | None = None, *, number: str | None = None
) -> pa.Table:
    """The entries of ``window`` in one object, sorted in the window's direction, at most
    ``limit``. Row groups outside the window are never fetched.

    With ``number`` (a dotted path), the columns are ts, seq and ``value``, the number at that
    path in each document (null where there is none), read from the object's ``n:`` column
    when it has one: the documents are then not fetched at all."""
    parquet = pq.ParquetFile(source, pre_buffer=True)
    columns = SCHEMA.names
    stored = None
    if number is not None:
        stored = NUMBER_PREFIX + number
        if stored in parquet.schema_arrow.names:
            columns = ["ts", "seq", stored]
        else:
            stored = None
    table = _read(source, parquet, window, limit, columns)
    if number is None:
        return table
    if stored is not None:
        value = table.column(stored)
    else:
        value = numbers(table.column("doc"), tuple(number.split(".")))
    return pa.Table.from_arrays(
        [table.column("ts"), table.column("seq"), value], names=["ts", "seq", "value"]
    )


def deduplicate_series(table: pa.Table) -> tuple[Any, Any]:
    """(ts, value) arrays of a table of ts, seq, value (null: no number), sorted by (ts, seq),
    one row per seq, and per (ts, value): a series has no document hashes to tell a packet
    redelivered after it left Redis (same ts, same content, another seq) from another packet
    of the same time, and on a plot the two are the same point anyway."""
    table = sort(table)
    value = table.column("value")
    if value.null_count:
        table = table.filter(pc.is_valid(value))
    ts = table.column("ts").to_numpy()
    seq = table.column("seq").to_numpy()
    values = table.column("value").to_numpy()
    keep = np.ones(len(ts), dtype=bool)
    if len(seq) > 1 and not np.all(seq[1:] > seq[:-1]):
        _, first = np.unique(seq, return_index=True)
        keep[:] = False
        keep[first] = True
    tied = np.nonzero(ts[1:] == ts[:-1])[0]
    if len(tied):
        rows = np.unique(np.concatenate([tied, tied + 1]))
        rows = rows[keep[rows]]
        # rows of equal (ts, value) side by side, the lowest seq (kept) first
        order = rows[np.lexsort((rows, values[rows], ts[rows]))]
        same = (ts[order][1:] == ts[order][:-1]) & (values[order][1:] == values[order][:-1])
        keep[order[1:][same]] = False
    return ts[keep], values[keep]


def window_groups(parquet: pq.ParquetFile, window: Window) -> tuple[list[int], bool]:
    """The row groups whose ts range overlaps ``window`` (by their statistics; a group without
    them is read), and whether each lies wholly inside it (then no row filter is needed)."""
    meta = parquet.metadata
    ts_column = parquet.schema_arrow.get_field_index("ts")
    groups = []
    inside = True
    for index in range(meta.num_row_groups):
        stats = meta.row_group(index).column(ts_column).statistics
        if stats is None or not stats.has_min_max:
            groups.append(index)
            inside = False
        elif window.overlaps(stats.min, stats.max):
            groups.append(index)
            inside = inside and window.contains(stats.min, stats.max)
    return groups, inside


def _read(
    source: Any, parquet: pq.ParquetFile, window: Window, limit: int | None, columns: list[str]
) -> pa.Table:
    meta = parquet.metadata
    groups, inside = window_groups(parquet, window)
    if window.desc:
        groups.reverse()
    if limit is None:
        if not groups:
            return parquet.schema_arrow.empty_table().select(columns)
        prefetch = getattr(source, "prefetch", None)
        if prefetch is not None:  # a remote object: fetch every chunk needed, side by side
            indices = [parquet.schema_arrow.get_field_index(name) for name in columns]
            prefetch(_chunk_ranges(meta, groups, indices))
        table = parquet.read_row_groups(groups, columns=columns)
        if not inside:
            table = _filter(table, window)
        return _reverse(table) if window.desc else table
    parts: list[pa.Table] = []
    found = 0
    for index in groups:
        table = _filter(parquet.read_row_group(index, columns=columns, use_threads=False), window)
        parts.append(_reverse(table) if window.desc else table)
        found += table.num_rows
        if found >= limit:
            break
    if not parts:
        return parquet.schema_arrow.empty_table().select(columns)
    return pa.concat_tables(parts).slice(0, limit)


def _chunk_ranges(meta: Any, groups: list[int], columns: list[int]) -> list[tuple[int, int]]:
    """(start, length) of the column chunks of ``columns`` in the row groups ``groups``."""
    ranges = []
    for group in groups:
        row_group = meta.row_group(group)
        for column in columns:
            chunk = row_group.column(column)
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
                start = min(start, chunk.dictionary_page_offset)
            ranges.append((start, chunk.total_compressed_size))
    return ranges


def _filter(table: pa.Table, window: Window) -> pa.Table:
    """Rows of the window; objects are stored sorted, so the order is kept."""
    mask = window.mask(table)
    if pc.all(mask).as_py():
        return table
    return table.filter(mask)


def _reverse(table: pa.Table) -> pa.Table:
    return table.take(pa.array(np.arange(table.num_rows - 1, -1, -1)))
