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
from latest_server.packets import lookup
from latest_server.resources import Resources
from latest_server.stores import segments
from latest_server.stores.segments import Window
from latest_server.web._request import covered
from latest_server.web.cursors import decode_cursor, encode_cursor
from latest_server.web.entries import entries_as_dicts
from latest_server.web.http import aggregate

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000
MAX_POINTS = 100_000
MAX_SERIES_ROWS = 20_000_000
FORMATS = ("json", "ndjson", "csv", "parquet", "png")
MARKED_POINTS = 100  # a series this short gets a marker on every point
# The date above short ranges' hour ticks (ISO dates: ConciseDateFormatter's offset line).
OFFSET_FORMATS = ["", "%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%d", "%Y-%m-%d %H:%M"]
MORE = "more"  # the default CSV's last column: fields beyond those of the first page
PARAMS = (
    "format",
    "order",
    "from",
    "to",
    "cursor",
    "limit",
    "field",
    "fields",
    "points",
    *aggregate.PARAMS,
)
EDGE = 2**62


async def get_history(request: Request) -> Response:
    if aggregate.wanted(request.query_params):
        return await aggregate.get_aggregate(request)
    resources: Resources = request.app.state.resources
    variable_id: str = request.path_params.get("variable_id", "")
    covered(request, [variable_id])
    if not variable_id:
        raise NotFound("name a variable: GET /history/{id} (the id URL-encoded)")
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
    """``ts`` and ``seq`` of each entry, then ``fields`` (dotted paths). Without ``fields``:
    every top-level field of the first page's documents, in the order first seen, and a last
    column (``more``) holding, as a JSON object, any field an entry has beyond those, so
    nothing of a document is left out of the file."""
    paths = [tuple(f.split(".")) for f in fields]
    out = io.StringIO()
    writer = csv.writer(out)
    columns: list[str] | None = None
    async for table in pages:
        docs = [orjson.loads(doc) for doc in table.column("doc").to_pylist()]
        if columns is None:
            columns = fields or list(dict.fromkeys(key for doc in docs for key in doc))
            writer.writerow(["ts", "seq", *columns] if fields else ["ts", "seq", *columns, MORE])
        known = frozenset(columns)
        rows = zip(
            table.column("ts").to_pylist(), table.column("seq").to_pylist(), docs, strict=True
        )
        for ts, seq, document in rows:
            if fields:
                writer.writerow([ts, seq, *(_csv_value(lookup(document, p)) for p in paths)])
                continue
            more = {key: value for key, value in document.items() if key not in known}
            values = [_csv_value(document.get(column)) for column in columns]
            writer.writerow([ts, seq, *values, orjson.dumps(more).decode() if more else ""])
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
    if not len(ts):
        await _no_numbers(resources, key, window, field)
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
    out = io.BytesIO()
    figure(variable_id, field, ts, values).savefig(out, format="png")
    return out.getvalue()


def figure(variable_id: str, field: str, ts: Any, values: Any) -> Any:
    """The plot of a series (``ts`` in µs, UTC): the field on the y axis, time in UTC on the x
    axis; a marker on each point when there are few (one point is a dot, not nothing); the
    date in the corner when the ticks show only hours (ConciseDateFormatter's offset). A
    ``Figure`` of its own, not pyplot's global state, so concurrent requests never share one;
    ids and fields are drawn as plain text (a ``$`` would otherwise start TeX math, which
    fails to parse in the middle of answering)."""
    import numpy as np
    from matplotlib import dates
    from matplotlib.figure import Figure

    plot = Figure(figsize=(10, 4), dpi=100)
    axes = plot.subplots()
    few = len(ts) <= MARKED_POINTS
    axes.plot(
        ts.astype("datetime64[us]"),
        values,
        linewidth=0.8,
        marker="o" if few else None,
        markersize=5 if len(ts) == 1 else 3,
    )
    locator = dates.AutoDateLocator()  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(
        dates.ConciseDateFormatter(  # type: ignore[no-untyped-call]
            locator, offset_formats=OFFSET_FORMATS, tz=dates.UTC
        )
    )
    if len(ts) and ts.min() == ts.max():  # one instant: an hour around it, not years
        moment = ts.min().astype("datetime64[us]")
        axes.set_xlim(moment - np.timedelta64(30, "m"), moment + np.timedelta64(30, "m"))
    axes.set_title(variable_id, parse_math=False)
    axes.set_ylabel(field, parse_math=False)
    axes.set_xlabel("time (UTC)")
    axes.grid(True, alpha=0.3)
    plot.tight_layout()
    return plot


async def _no_numbers(resources: Resources, key: str, window: Window, field: str) -> None:
    """An empty series where the range has entries: the field is absent or not a number, and
    an empty answer (or plot) would say "no data" instead. 400 naming the field."""
    page = await resources.history.read(key, Window(window.lo, window.hi), 1)
    if not page.entries.num_rows:
        return  # the range is empty: so is its series
    first = lookup(orjson.loads(page.entries.column("doc")[0].as_py()), tuple(field.split(".")))
    if first is None:
        held = "has no such field"
    elif isinstance(first, (dict, list)):
        held = f"holds a JSON {'object' if isinstance(first, dict) else 'array'}"
    else:
        held = f"holds {orjson.dumps(first).decode()[:40]}"
    raise BadRequest(
        f"field {field!r} holds no number in this range (its first entry {held})",
        reason="bad_field",
    )


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


def _csv_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value
    return orjson.dumps(value).decode()
