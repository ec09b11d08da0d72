"""The REST API says what it did not do, through real uvicorn and httpx: unknown query
parameters, ``If-None-Match: *``, a ``field`` with no numbers, CSV without ``fields``, a
history without an id, and a PNG that names its axes."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from latest_server.settings import Settings
from latest_server.web.http import history
from tests.conftest import ServerThread

T0 = 1_700_000_000


@pytest.fixture
def client(settings: Settings, http_server: Callable[..., ServerThread]) -> Iterator[httpx.Client]:
    server = http_server(settings, amqp_url=None)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def ingest(client: httpx.Client, body: object) -> None:
    answer = client.post("/ingest", content=orjson.dumps(body))
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("/history/s?form=2024-01-01", "[form] (did you mean [format], [from]?)"),
        ("/history/s?limit=5&bogus=1&zzz=2", "parameters [bogus], [zzz]"),
        ("/latest/s?pretty", "[pretty]"),
        ("/latest?id=s&ids=t", "[ids] (did you mean [id]?)"),
        ("/sessions?stat=open", "[stat] (did you mean [state]?)"),
        ("/healthz?verbose=1", "takes no parameters"),
    ],
)
def test_an_unknown_parameter_is_a_400_naming_it(
    client: httpx.Client, url: str, named: str
) -> None:
    ingest(client, {"id": "s", "ts": T0})
    answer = client.get(url)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "bad_parameter"
    assert named in error["reason"]
    posted = client.post("/ingest?dry_run=1", content=orjson.dumps({"id": "u", "ts": T0}))
    assert posted.status_code == 400 and "[dry_run]" in posted.json()["error"]["reason"]
    assert client.get("/latest/u").status_code == 404  # refused before anything was written


def test_if_none_match_star_is_304_when_the_variable_exists(client: httpx.Client) -> None:
    ingest(client, {"id": "s", "ts": T0})
    cached = client.get("/latest/s", headers={"If-None-Match": "*"})
    assert cached.status_code == 304
    assert cached.headers["etag"] == f'"{T0 * 10**6}"'
    assert client.get("/latest/s", headers={"If-None-Match": '"1", W/"2"'}).status_code == 200
    assert client.get("/latest/t", headers={"If-None-Match": "*"}).status_code == 404


def test_a_field_with_no_numbers_is_a_400_naming_it(client: httpx.Client) -> None:
    ingest(client, [{"id": "s", "ts": T0 + n, "v": n, "name": "x", "o": {}} for n in range(3)])
    assert len(client.get("/history/s?field=v&points=10").json()["points"]) == 3
    for field, held in [
        ("nope", "has no such field"),
        ("name", 'holds "x"'),
        ("o", "holds a JSON object"),
        ("v.deeper", "has no such field"),
    ]:
        for fmt in ("json", "png"):
            answer = client.get(f"/history/s?field={field}&points=10&format={fmt}")
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["type"] == "bad_field"
            assert f"field '{field}'" in error["reason"] and held in error["reason"]
    # an empty range is an empty series, not an error
    empty = client.get(f"/history/s?field=v&points=10&from={T0 + 100}")
    assert empty.json()["points"] == []


def test_csv_without_fields_has_every_top_level_field(client: httpx.Client) -> None:
    ingest(
        client,
        [
            {"id": "s", "ts": T0, "v": 1.5, "pos": {"lat": 1}},
            {"id": "s", "ts": T0 + 1, "v": 2},
            {"id": "s", "ts": T0 + 2, "v": 3, "late": "x"},
        ],
    )
    rows = list(csv.reader(io.StringIO(client.get("/history/s?format=csv").text)))
    assert rows[0] == ["ts", "seq", "id", "ts", "v", "pos", "late", "more"]
    assert rows[1] == [str(T0 * 10**6), "1", "s", str(T0), "1.5", '{"lat":1}', "", ""]
    assert rows[2][5:] == ["", "", ""]
    assert rows[3][4:] == ["3", "", "x", ""]
    # a field first seen after the first page is in the last column, as JSON
    wide = [{"id": "w", "ts": T0 + n} for n in range(10_000)] + [
        {"id": "w", "ts": T0 + 10_000, "x": 1}
    ]
    ingest(client, wide)
    text = client.get("/history/w?format=csv").text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["ts", "seq", "id", "ts", "more"]
    assert rows[-1][-1] == '{"x":1}' and len(rows) == 10_002


@pytest.mark.parametrize("url", ["/history", "/history/", "/latest/"])
def test_no_id_is_a_json_404_not_a_redirect(client: httpx.Client, url: str) -> None:
    answer = client.get(url, follow_redirects=False)
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "not_found"
    assert "name a variable" in answer.json()["error"]["reason"]
    assert client.get("/healthz/", follow_redirects=False).status_code == 404


def test_the_png_names_its_axes_and_marks_a_single_point(client: httpx.Client) -> None:
    variable = "cost $\\nope{$"  # TeX math that does not parse, were it read as math
    ingest(client, {"id": variable, "ts": T0, "price": 7})
    png = client.get(f"/history/{quote(variable, safe='')}?field=price&format=png")
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert (image.format, image.size) == ("PNG", (1000, 400))
    plot = history.figure(variable, "price", np.array([T0 * 10**6]), np.array([7.0]))
    plot.canvas.draw()
    [axes] = plot.axes
    assert axes.get_ylabel() == "price"
    assert axes.get_xlabel() == "time (UTC)"
    assert axes.get_title() == variable
    [line] = axes.lines
    assert line.get_marker() == "o" and line.get_markersize() >= 5
    assert axes.xaxis.get_major_formatter().get_offset() == "2023-11-14"  # the date is shown
    assert len(axes.get_xticklabels()) > 1
    # ten minutes: hour ticks, and the date above them
    minutes = history.figure("s", "v", (T0 + np.arange(10) * 60) * 10**6, np.arange(10.0))
    minutes.canvas.draw()
    assert minutes.axes[0].xaxis.get_major_formatter().get_offset() == "2023-11-14"
    labels = [label.get_text() for label in minutes.axes[0].get_xticklabels()]
    assert "22:14" in labels
    long = history.figure("s", "v", (T0 + np.arange(1000) * 60) * 10**6, np.arange(1000.0))
    assert long.axes[0].lines[0].get_marker() in (None, "None", "")  # many points: a line
