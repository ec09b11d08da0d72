"""GET /history/{id}: a time range of a variable's history from every tier.

Formats: json (a page and an opaque cursor), ndjson and csv (streamed, page after page), parquet
(a download), and with ``field`` + ``points`` a downsampled numeric series (MinMaxLTTB, so peaks
stay visible) as json or a png plot.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from latest_server import keys
from latest_server.errors import BadRequest, NotFound, PacketRejected
from latest_server.resources import Resources
from latest_server.stores import segments
from latest_server.stores.history import decode_cursor, encode_cursor, entries_as_dicts
from latest_server.stores.segments import Window

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000
MAX_POINTS = 100_000
MAX_SERIES_ROWS = 20_000_000
FORMATS = ("json", "ndjson", "csv", "parquet", "png")
EDGE = 2**62


async def get_history(request: Request) -> Response:
    resources: Resources = request.app.state.resources
    variable_id: str = request.path_params["variable_id"]
    query = request.query_params
    fmt = query.get("format", "json")
    if fmt not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}")
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc")
    lo = _time(resources, query.get("from"), -EDGE, "from")
    hi = _time(resources, query.get("to"), EDGE, "to")
    if lo >= hi:
        raise BadRequest("empty time range: 'from' must be before 'to'")
    after = decode_cursor(query["cursor"]) if query.get("cursor") else None
    window = Window(lo, hi, after, order == "desc")
    limit = _int(query.get("limit"), "limit", DEFAULT_LIMIT if fmt == "json" else None)
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    key = keys.key_for(variable_id)
    if not await resources.history.exists(key):
        raise NotFound(f"no history for variable {variable_id!r}")

    field = query.get("field")
    if field and (fmt == "png" or query.get("points")):
        return await _series(resources, variable_id, key, window, field, query, fmt)
    if fmt == "png":
        raise BadRequest("format=png needs field=<dotted path> (and optionally points=N)")
    if fmt == "json":
        page = await resources.history.read(key, window, limit)
        body = {
            "variable": variable_id,
            "entries": entries_as_dicts(page.entries),
            "next": encode_cursor(page.next) if page.next else None,
        }
        return Response(orjson.dumps(body), media_type="application/json")
    if fmt == "parquet":
        page = await resources.history.read(key, window, limit)
        return Response(
            segments.encode(page.entries),
            media_type="application/vnd.apache.parquet",
            headers={"Content-Disposition": f'attachment; filename="{key}.parquet"'},
        )
    pages = _pages(resources, key, window, limit)
    if fmt == "ndjson":
        return StreamingResponse(_ndjson(pages), media_type="application/x-ndjson")
    fields = [f for f in query.get("fields", "").split(",") if f]
    return StreamingResponse(_csv(pages, fields), media_type="text/csv")


async def _pages(
    resources: Resources, key: str, window: Window, limit: int | None
) -> AsyncIterator[pa.Table]:
    """Every entry of the window (or the first ``limit``), one page of MAX_LIMIT at a time."""
    left = limit
    while True:
        size = MAX_LIMIT if left is None else min(left, MAX_LIMIT)
        page = await resources.history.read(key, window, size)
        yield page.entries
        if left is not None:
            left -= page.entries.num_rows
        if page.next is None or (left is not None and left <= 0):
            return
        window = Window(window.lo, window.hi, page.next, window.desc)


async def _ndjson(pages: AsyncIterator[pa.Table]) -> AsyncIterator[bytes]:
    async for table in pages:
        yield b"".join(orjson.dumps(entry) + b"\n" for entry in entries_as_dicts(table))


async def _csv(pages: AsyncIterator[pa.Table], fields: list[str]) -> AsyncIterator[str]:
    paths = [tuple(f.split(".")) for f in fields]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["ts", "seq", *fields])
    async for table in pages:
        columns = zip(
            table.column("ts").to_pylist(),
            table.column("seq").to_pylist(),
            table.column("doc").to_pylist(),
            strict=True,
        )
        for ts, seq, doc in columns:
            document = orjson.loads(doc)
            writer.writerow([ts, seq, *(_csv_value(_lookup(document, p)) for p in paths)])
        yield out.getvalue()
        out.seek(0)
        out.truncate()


async def _series(
    resources: Resources,
    variable_id: str,
    key: str,
    window: Window,
    field: str,
    query: Any,
    fmt: str,
) -> Response:
    from tsdownsample import MinMaxLTTBDownsampler

    points = _int(query.get("points"), "points", 2_000)
    assert points is not None
    if not 3 <= points <= MAX_POINTS:
        raise BadRequest(f"points must be between 3 and {MAX_POINTS}")
    ts, values = await resources.history.series(key, Window(window.lo, window.hi), field)
    if len(ts) > MAX_SERIES_ROWS:
        raise BadRequest(f"more than {MAX_SERIES_ROWS} entries: narrow the time range")
    if len(ts) > points:
        downsampler = MinMaxLTTBDownsampler()  # type: ignore[no-untyped-call]
        chosen = downsampler.downsample(ts, values, n_out=points)
        ts, values = ts[chosen], values[chosen]
    if fmt == "png":
        return Response(_plot(variable_id, field, ts, values), media_type="image/png")
    body = {
        "variable": variable_id,
        "field": field,
        "points": [[int(t), float(v)] for t, v in zip(ts, values, strict=True)],
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _plot(variable_id: str, field: str, ts: Any, values: Any) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4), dpi=100)
    try:
        axes.plot(ts.astype("datetime64[us]"), values, linewidth=0.8)
        axes.set_title(f"{variable_id} · {field}")
        axes.grid(True, alpha=0.3)
        figure.autofmt_xdate()
        out = io.BytesIO()
        figure.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(figure)


def _time(resources: Resources, raw: str | None, default: int, name: str) -> int:
    if raw is None or raw == "":
        return default
    try:
        return resources.parser.time_to_us(raw)
    except PacketRejected as exc:
        raise BadRequest(f"'{name}': {exc.message}") from None


def _int(raw: str | None, name: str, default: int | None) -> int | None:
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer") from None


def _lookup(document: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    return document


def _csv_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value
    return orjson.dumps(value).decode()
