"""The ObjectStore contract, on a directory and on S3 (moto's server over HTTP)."""

from __future__ import annotations

import pytest

from latest_server.errors import ObjectMissing
from latest_server.stores import open_object_store


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
