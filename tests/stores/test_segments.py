from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq

from latest_server.stores import segments
from latest_server.stores.segments import Window


def table(rows: list[tuple[int, int, bytes]]) -> pa.Table:
    return segments.from_columns(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [hashlib.sha1(r[2]).digest() for r in rows],
        [r[2] for r in rows],
    )


def test_encode_sorts_and_compresses_in_small_row_groups() -> None:
    rows = [(1_000 + (i * 7919) % 50_000, i + 1, b'{"v":%d}' % i) for i in range(50_000)]
    data = segments.encode(table(rows))
    parquet = pq.ParquetFile(io.BytesIO(data))
    assert parquet.metadata.num_row_groups == 4  # 16 384 rows each
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    stored = parquet.read()
    pairs = list(
        zip(stored.column("ts").to_pylist(), stored.column("seq").to_pylist(), strict=True)
    )
    assert pairs == sorted(pairs)


def test_window_reads_only_overlapping_row_groups() -> None:
    rows = [(i, i + 1, b"x%d" % i) for i in range(100_000)]
    data = segments.encode(table(rows))

    class Counting(io.BytesIO):
        fetched = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            Counting.fetched += len(chunk)
            return chunk

    source = Counting(data)
    window = segments.read(source, Window(50_000, 51_000))
    assert window.column("seq").to_pylist() == list(range(50_001, 51_001))
    assert Counting.fetched < len(data) / 3


def test_window_after_cursor_and_limit_in_both_directions() -> None:
    rows = [(10, 1, b"a"), (10, 2, b"b"), (20, 3, b"c"), (30, 4, b"d"), (40, 5, b"e")]
    data = segments.encode(table(rows))
    ascending = segments.read(io.BytesIO(data), Window(10, 40, after=(10, 1)), limit=2)
    assert ascending.column("seq").to_pylist() == [2, 3]
    descending = segments.read(io.BytesIO(data), Window(0, 100, after=(30, 4), desc=True), limit=10)
    assert descending.column("seq").to_pylist() == [3, 2, 1]


def test_deduplicate_by_seq_and_by_content() -> None:
    base = table([(10, 1, b"a"), (20, 2, b"b"), (20, 3, b"c")])
    again = table([(20, 2, b"b"), (10, 7, b"a"), (5, 8, b"z")])  # seq 2 twice; "a" redelivered as 7
    merged = segments.deduplicate(pa.concat_tables([again, base]))
    assert list(
        zip(merged.column("ts").to_pylist(), merged.column("seq").to_pylist(), strict=True)
    ) == [
        (5, 8),
        (10, 1),
        (20, 2),
        (20, 3),
    ]


def test_numeric_leaves_are_stored_as_columns_and_read_without_the_documents() -> None:
    docs = [
        b'{"id": "v", "value": %d, "m": {"t": %d.5, "s": "x", "d": {"x": 1}}, "ok": true, "a.b": 1}'
        % (i, i)
        for i in range(1_000)
    ]
    docs[10] = b'{"id": "v", "m": {"t": null}}'  # no value, a null where a number was
    rows = [(i, i + 1, d) for i, d in enumerate(docs)]
    data = segments.encode(table(rows))
    stored = pq.ParquetFile(io.BytesIO(data)).schema_arrow.names
    # numbers only (not the bool, the string or the object), and no dotted key: a field
    # "a.b" could not be told from {"a": {"b": ...}}
    assert [n for n in stored if n.startswith("n:")] == ["n:value", "n:m.t", "n:m.d.x"]

    whole = Window(0, 2**62)
    got = segments.read(io.BytesIO(data), whole, number="m.t")
    assert got.column_names == ["ts", "seq", "value"]
    expected = [None if i == 10 else i + 0.5 for i in range(1_000)]
    assert got.column("value").to_pylist() == expected
    assert got.column("seq").to_pylist() == list(range(1, 1_001))
    window = segments.read(io.BytesIO(data), Window(100, 200), number="value")
    assert window.column("value").to_pylist() == [float(i) for i in range(100, 200)]
    # a path with no column is read from the documents, with the same answer
    assert segments.read(io.BytesIO(data), whole, number="id").column("value").null_count == 1000


def test_integers_too_large_for_a_float_are_rounded_not_refused() -> None:
    rows = [(i, i + 1, b'{"big": %d}' % (2**53 + 1 + i)) for i in range(3)]
    data = segments.encode(table(rows))  # an offload must never fail on a document's number
    got = segments.read(io.BytesIO(data), Window(0, 2**62), number="big")
    assert got.column("value").to_pylist() == [float(2**53 + 1 + i) for i in range(3)]


def test_a_document_larger_than_a_megabyte_keeps_the_columns() -> None:
    rows = [(1, 1, b'{"v": 1, "pad": "%s"}' % (b"x" * 3_000_000)), (2, 2, b'{"v": 2}')]
    data = segments.encode(table(rows))
    assert "n:v" in pq.ParquetFile(io.BytesIO(data)).schema_arrow.names


def test_documents_that_differ_in_type_keep_no_number_columns_and_are_read_all_the_same() -> None:
    rows = [(i, i + 1, b'{"value": %s}' % (b'"n/a"' if i == 3 else b"%d" % i)) for i in range(10)]
    data = segments.encode(table(rows))
    assert not [n for n in pq.ParquetFile(io.BytesIO(data)).schema_arrow.names if "n:" in n]
    got = segments.read(io.BytesIO(data), Window(0, 2**62), number="value")
    assert got.column("value").to_pylist() == [None if i == 3 else float(i) for i in range(10)]
    # the ordinary read is unchanged: the schema's columns only
    assert segments.read(io.BytesIO(data), Window(0, 2**62)).schema == segments.SCHEMA


def test_a_series_keeps_one_point_per_seq_and_per_time_and_value() -> None:
    rows = pa.Table.from_pydict(
        {
            "ts": [5, 1, 2, 2, 2, 3, 3, 4],
            "seq": [8, 1, 2, 2, 6, 3, 4, 5],  # seq 2 read from two tiers
            "value": [5.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.5, None],
        },
        schema=pa.schema([("ts", pa.int64()), ("seq", pa.int64()), ("value", pa.float64())]),
    )
    ts, values = segments.deduplicate_series(rows)
    # seq 6 repeats (ts 2, value 2.0): a packet redelivered with a new seq; ts 3 holds two
    # different numbers and keeps both; seq 5 has no number
    assert ts.tolist() == [1, 2, 3, 3, 5]
    assert values.tolist() == [1.0, 2.0, 3.0, 3.5, 5.0]
