"""The ObjectStore contract, on a directory and on S3 (moto's server over HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from latest_server.errors import ObjectMissing, StoreUnavailable
from latest_server.settings import Settings
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


def test_an_s3_that_never_answers_is_unavailable_once_its_tries_are_spent(silent_s3: str) -> None:
    """Each call gives up after LATEST_S3_ATTEMPTS tries of LATEST_S3_TIMEOUT (a PUT's try first
    waits a second for "100 Continue"; the backoff between two tries is under a second) with
    StoreUnavailable naming the store, instead of botocore's 60 s for each of its tries."""
    url = f"s3://{S3_BUCKET}/{unique('silent')}"
    store = open_object_store(url, Settings(s3_timeout=0.5, s3_attempts=2))
    for call in (
        lambda: store.put("a/b", b"1"),
        lambda: store.list("a/"),
        lambda: store.get("a/b"),
    ):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"the object store {url} is unavailable"):
            call()
        assert 1.0 <= time.monotonic() - started < 4.0  # two tries, then the answer


class SlowDown(BaseHTTPRequestHandler):
    """An overloaded S3: every request gets 503 SlowDown, S3's XML error body and all."""

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def slow_down_s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with ThreadingHTTPServer(("127.0.0.1", 0), SlowDown) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.server_port}")
        yield
        server.shutdown()


def test_an_s3_answering_503_to_every_try_is_unavailable(slow_down_s3: None) -> None:
    """5xx after every try means the store is unavailable (4xx answers keep their meaning:
    test_missing_objects_raise_and_delete_is_idempotent)."""
    url = f"s3://{S3_BUCKET}/{unique('slow')}"
    store = open_object_store(url, Settings(s3_timeout=0.5, s3_attempts=2))
    with pytest.raises(StoreUnavailable, match="SlowDown"):
        store.list("a/")
    with pytest.raises(StoreUnavailable, match="SlowDown"):
        store.put("a/b", b"1")
