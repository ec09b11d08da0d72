"""GET /history through real uvicorn, with history spread over Redis and objects."""

from __future__ import annotations

import asyncio
import csv
import io
import math
from collections.abc import Callable, Iterator

import httpx
import orjson
import pyarrow.parquet as pq
import pytest

from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.conftest import S3_BUCKET, ServerThread, unique

T0 = 1_700_000_000


@pytest.fixture
def client(
    settings: Settings, objects_url: str, http_server: Callable[..., ServerThread]
) -> Iterator[httpx.Client]:
    server = http_server(settings, amqp_url=None, objects_url=objects_url)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def fill(client: httpx.Client, settings: Settings, objects_url: str, count: int) -> None:
    """Write ``count`` entries of "s/1"; the first half is offloaded to transfer objects."""
    half = count // 2
    body = [{"id": "s/1", "ts": T0 + n, "v": math.sin(n / 10)} for n in range(half)]
    assert client.post("/ingest", content=orjson.dumps(body)).json()["accepted"] == half

    async def offload() -> None:
        import dataclasses

        resources = await Resources.open(dataclasses.replace(settings, objects_url=objects_url))
        await resources.trigger.close()
        await resources.offloader.run_job(everything=True)
        await resources.close()

    asyncio.run(offload())
    body = [{"id": "s/1", "ts": T0 + n, "v": math.sin(n / 10)} for n in range(half, count)]
    client.post("/ingest", content=orjson.dumps(body))


@pytest.mark.redis_both
def test_pages_with_a_cursor_cover_every_tier_in_order(
    client: httpx.Client, settings: Settings, objects_url: str
) -> None:
    fill(client, settings, objects_url, 250)
    seen: list[int] = []
    url = "/history/s%2F1?limit=40"
    while True:
        page = client.get(url).json()
        assert page["variable"] == "s/1"
        seen.extend(e["seq"] for e in page["entries"])
        if page["next"] is None:
            break
        url = f"/history/s%2F1?limit=40&cursor={page['next']}"
    assert seen == list(range(1, 251))
    entry = client.get("/history/s%2F1?limit=1").json()["entries"][0]
    assert entry == {"ts": T0 * 10**6, "seq": 1, "doc": {"id": "s/1", "ts": T0, "v": 0.0}}


@pytest.mark.redis_both
def test_time_range_order_and_formats(
    client: httpx.Client, settings: Settings, objects_url: str
) -> None:
    fill(client, settings, objects_url, 100)
    window = client.get(
        "/history/s%2F1", params={"from": T0 + 40, "to": "2023-11-14T22:14:10Z", "order": "desc"}
    ).json()
    assert [e["seq"] for e in window["entries"]] == list(range(50, 40, -1))

    ndjson = client.get("/history/s%2F1?format=ndjson&from=1700000090")
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in ndjson.content.splitlines()]
    assert [line["seq"] for line in lines] == list(range(91, 101))

    text = client.get("/history/s%2F1?format=csv&fields=v,id&limit=3").text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["ts", "seq", "v", "id"]
    assert rows[1][1:] == ["1", "0.0", "s/1"]
    assert len(rows) == 4

    parquet = client.get("/history/s%2F1?format=parquet&limit=10000")
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.column("seq").to_pylist() == list(range(1, 101))


@pytest.mark.redis_both
def test_downsampled_series_keeps_peaks_and_renders_png(
    client: httpx.Client, settings: Settings, objects_url: str
) -> None:
    fill(client, settings, objects_url, 2000)
    series = client.get("/history/s%2F1?field=v&points=100").json()
    points = series["points"]
    assert len(points) == 100
    values = [v for _, v in points]
    assert max(values) == pytest.approx(1.0, abs=1e-3)  # the peaks survive downsampling
    assert min(values) == pytest.approx(-1.0, abs=1e-3)
    assert [t for t, _ in points] == sorted(t for t, _ in points)
    png = client.get("/history/s%2F1?field=v&points=200&format=png")
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("limit=10001", "limit"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("from=1700000100&to=1700000000", "empty time range"),
        ("from=tomorrow", "'from'"),
        ("cursor=%%%", "cursor"),
        ("order=sideways", "order"),
        ("format=xml", "format"),
        ("format=png", "field"),
    ],
)
def test_bad_queries_are_400_naming_the_problem(
    client: httpx.Client, query: str, fragment: str
) -> None:
    client.post("/ingest", content=b'{"id": "s/1", "ts": 1700000000}')
    response = client.get(f"/history/s%2F1?{query}")
    assert response.status_code == 400
    assert fragment in response.json()["error"]["reason"]


def test_unknown_variable_is_404(client: httpx.Client) -> None:
    response = client.get("/history/nobody")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_a_silent_s3_makes_history_reads_503_while_ingest_and_latest_go_on(
    settings: Settings, http_server: Callable[..., ServerThread], silent_s3: str
) -> None:
    """S3 takes connections and never answers: a history read (which lists the variable's
    objects) answers 503 naming the object store once LATEST_S3_ATTEMPTS tries of
    LATEST_S3_TIMEOUT are spent; writes and latest reads, which need only Redis, go on."""
    url = f"s3://{S3_BUCKET}/{unique('silent')}"
    server = http_server(settings, amqp_url=None, objects_url=url, s3_timeout=0.5, s3_attempts=2)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        written = http.post("/ingest", content=b'{"id": "s/1", "ts": 1700000000, "v": 1}')
        assert written.json()["accepted"] == 1
        assert http.get("/latest/s%2F1").json()["v"] == 1
        response = http.get("/history/s%2F1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["type"] == "store_unavailable"
    assert f"the object store {url} is unavailable" in error["reason"]
