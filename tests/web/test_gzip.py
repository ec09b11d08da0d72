"""gzip request bodies on ``_bulk`` and ``POST /ingest`` through real uvicorn: every member of a
multi-member stream is read, a truncated or damaged stream is a 400 that writes nothing, and
the size limit holds on the decoded bytes."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest

from latest_server.settings import Settings
from tests.conftest import ServerThread

LIMIT = 100_000
GZIP = {"Content-Encoding": "gzip", "Content-Type": "application/json"}


@pytest.fixture
def clients(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    server = http_server(settings, amqp_url=None, es_prefix="/es", max_body_bytes=LIMIT)
    with (
        httpx.Client(base_url=server.url, timeout=10) as main,
        httpx.Client(base_url=server.url + "/es", timeout=10) as es,
    ):
        yield main, es


def bulk_lines(ids: list[str]) -> bytes:
    return b"".join(
        orjson.dumps({"index": {"_index": "latest", "_id": doc_id}})
        + b"\n"
        + orjson.dumps({"id": doc_id, "ts": 1_700_000_000 + n})
        + b"\n"
        for n, doc_id in enumerate(ids)
    )


def test_every_member_of_a_bulk_body_is_read(clients: tuple[httpx.Client, httpx.Client]) -> None:
    main, es = clients
    body = gzip.compress(bulk_lines(["a", "b"])) + gzip.compress(bulk_lines(["c"]))
    answer = es.post("/_bulk", content=body, headers=GZIP)
    assert answer.status_code == 200
    assert answer.json()["errors"] is False
    assert [item["index"]["_id"] for item in answer.json()["items"]] == ["a", "b", "c"]
    assert main.get("/latest/c").status_code == 200
    padded = gzip.compress(bulk_lines(["d"])) + b"\0" * 512  # gzip(1) allows zero padding
    assert es.post("/_bulk", content=padded, headers=GZIP).json()["errors"] is False


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda body: body[: len(body) - 6], "truncated"),  # the trailer cut off
        (lambda body: body[:40], "truncated"),  # the stream cut mid-member
        (lambda body: body[:20] + bytes([body[20] ^ 0xFF]) + body[21:], "not valid gzip"),
        (lambda body: body + b"trailing", "not valid gzip (member 2)"),
        (lambda body: body + gzip.compress(bulk_lines(["z"]))[:30], "member 2"),
    ],
)
def test_a_damaged_stream_is_a_400_that_writes_nothing(
    clients: tuple[httpx.Client, httpx.Client], damage: Callable[[bytes], bytes], words: str
) -> None:
    main, es = clients
    body = damage(gzip.compress(bulk_lines([f"x{n}" for n in range(20)])))
    answer = es.post("/_bulk", content=body, headers=GZIP)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "parse_exception"
    assert error["root_cause"][0]["type"] == "parse_exception"
    assert words in error["reason"]
    assert answer.headers["x-elastic-product"] == "Elasticsearch"
    assert main.get("/latest/x0").status_code == 404
    packets = orjson.dumps([{"id": f"y{n}", "ts": 1_700_000_000 + n} for n in range(20)])
    ingested = main.post("/ingest", content=damage(gzip.compress(packets)), headers=GZIP)
    assert ingested.status_code == 400
    assert ingested.json()["error"]["type"] == "bad_encoding"
    assert words in ingested.json()["error"]["reason"]
    assert main.get("/latest/y0").status_code == 404


def test_the_limit_holds_on_the_decoded_size(clients: tuple[httpx.Client, httpx.Client]) -> None:
    main, es = clients
    bomb = gzip.compress(b" " * (LIMIT * 50))  # ~5 kB that inflate to 5 MB
    assert len(bomb) < LIMIT
    answer = es.post("/_bulk", content=bomb, headers=GZIP)
    assert answer.status_code == 413
    assert answer.json()["error"]["type"] == "content_too_long_exception"
    # members each under the limit, together over it
    half = gzip.compress(b" " * (LIMIT // 2 + 1))
    assert es.post("/_bulk", content=half + half, headers=GZIP).status_code == 413
    too_large = main.post("/ingest", content=bomb, headers=GZIP)
    assert too_large.status_code == 413
    assert too_large.json()["error"]["type"] == "too_large"


def test_ingest_reads_gzip_and_names_what_it_cannot(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    main, _ = clients
    first = gzip.compress(b'[{"id": "g1", "ts": 1700000000}, ')
    second = gzip.compress(b'{"id": "g2", "ts": 1700000001}]')
    answer = main.post("/ingest", content=first + second, headers=GZIP)
    assert answer.json() == {"accepted": 2, "stale": 0, "duplicates": 0, "rejected": []}
    assert main.get("/latest/g2").json()["ts"] == 1_700_000_001
    deflated = zlib.compress(b'{"id": "g3", "ts": 1700000002}')
    refused = main.post("/ingest", content=deflated, headers={"Content-Encoding": "br"})
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "bad_encoding"
    assert "[br]" in refused.json()["error"]["reason"]


def test_latest_mget_reads_a_bounded_body_gzip_or_not(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    main, _ = clients
    main.post("/ingest", content=b'{"id": "m", "ts": 1700000000}')
    ids = orjson.dumps({"ids": ["m", "n"]})
    found = main.post("/latest/_mget", content=gzip.compress(ids), headers=GZIP).json()["docs"]
    assert [doc["found"] for doc in found] == [True, False]
    huge = orjson.dumps({"ids": ["x" * 100] * 2_000})  # 200 kB, over the limit
    assert main.post("/latest/_mget", content=huge).status_code == 413
    assert main.post("/latest/_mget", content=gzip.compress(huge), headers=GZIP).status_code == 413
