"""The ObjectStore contract, on a directory and on S3 (moto's server over HTTP)."""

from __future__ import annotations

import pytest

from latest_server.errors import ObjectMissing
from latest_server.stores import open_object_store
from tests.conftest import S3_BUCKET, unique


def test_put_is_create_only_and_reads_are_ranged(objects_url: str) -> None:
    store = open_object_store(objects_url)
    assert store.put("history/k1/transfer/a.parquet", b"0123456789")
    assert not store.put("history/k1/transfer/a.parquet", b"something else")
    assert store.get("history/k1/transfer/a.parquet") == b"0123456789"
    assert store.get_range("history/k1/transfer/a.parquet", 3, 4) == b"3456"
    with store.open("history/k1/transfer/a.parquet") as handle:
        handle.seek(-2, 2)
        assert handle.read() == b"89"
        handle.seek(1)
        assert handle.read(2) == b"12"


def test_list_by_prefix_and_directories(objects_url: str) -> None:
    store = open_object_store(objects_url)
    for name in [
        "history/k1/transfer/b",
        "history/k1/transfer/a",
        "history/k1/merged/m",
        "history/k2/transfer/c",
    ]:
        store.put(name, name.encode())
    assert [o.name for o in store.list("history/k1/transfer/")] == [
        "history/k1/transfer/a",
        "history/k1/transfer/b",
    ]
    assert [o.size for o in store.list("history/k1/merged/")] == [len("history/k1/merged/m")]
    assert store.list("history/nothing/") == []
    assert store.list_dirs("history/") == ["k1", "k2"]


def test_missing_objects_raise_and_delete_is_idempotent(objects_url: str) -> None:
    store = open_object_store(objects_url)
    store.put("x/y", b"1")
    store.delete("x/y")
    store.delete("x/y")
    with pytest.raises(ObjectMissing):
        store.get("x/y")
    with pytest.raises(ObjectMissing):
        store.get_range("x/y", 0, 1)
    with pytest.raises(ObjectMissing):
        store.open("x/y")


def test_unknown_scheme_names_it() -> None:
    from latest_server.errors import ConfigError

    with pytest.raises(ConfigError, match="gopher"):
        open_object_store("gopher://x/y")


def test_prefetched_ranges_are_served_from_memory(s3_endpoint: str) -> None:
    """Remote objects only: the file store reads the disk, with nothing to prefetch."""
    store = open_object_store(f"s3://{S3_BUCKET}/{unique('prefetch')}")
    data = bytes(range(256)) * (40 * 1024)  # 10 MiB: more than one prefetch part
    assert store.put("history/k/merged/1.parquet", data)
    with store.open("history/k/merged/1.parquet") as handle:
        ranges = [(0, 100), (200, 100), (1_000_000, 9_000_000)]  # the first two coalesce
        handle.prefetch(ranges)
        assert len(handle.pieces) == 4  # [0, 300) and the long one in 4 MiB parts
        before = store.requests
        for start, length in [(0, 300), (1_000_000, 9_000_000), (5_000_000, 10), (250, 10)]:
            handle.seek(start)
            assert handle.read(length) == data[start : start + length]
        assert store.requests == before  # nothing fetched again
        handle.seek(500_000)
        assert handle.read(10) == data[500_000:500_010]  # not prefetched: a ranged GET
        assert store.requests == before + 1
