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
