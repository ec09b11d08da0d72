"""GET /history/{id} and GET /history?id=…&id=… with ``agg=``, ``lastN=`` or ``at=``: aggregates of
numeric fields in time buckets, the last N entries, or the value in force at an instant, over
every tier (stores/aggregate.py). One or many variables per call; JSON only.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from latest_server import keys
from latest_server.access import principal_of
from latest_server.errors import BadRequest, Forbidden, NotFound, PacketRejected
from latest_server.resources import Resources
from latest_server.stores import buckets
from latest_server.stores.aggregate import AggQuery, Aggregator, AggResult
from latest_server.stores.segments import Window
from latest_server.web._request import covered

PARAMS = ("agg", "interval", "tz", "id", "prefix", "lastN", "at", "min_doc_count", "percents")
MAX_VARIABLES = 1_000
MAX_LAST = 10_000
EDGE = 2**62
MODES = ("agg", "lastN", "at")
US_PER_MS = 1_000


def wanted(query: QueryParams) -> bool:
    """Whether a history request asks for aggregates (or lastN, at) instead of entries."""
    return any(name in query for name in MODES)


async def get_aggregate(request: Request) -> Response:
    resources: Resources = request.app.state.resources
    engine = resources.aggregates
    assert engine is not None
    query = request.query_params
    given = [name for name in MODES if name in query]
    if len(given) > 1:
        raise BadRequest(f"give one of agg, lastN, at, not {' and '.join(given)}")
    for name in ("points", "cursor", "order", "limit", "fields"):
        if name in query:
            raise BadRequest(f"'{name}' is for entries and series, not with {given[0]}")
    if query.get("format", "json") != "json":
        raise BadRequest(f"{given[0]} answers JSON only (format=json)")
    ids = await _variables(request, resources)
    covered(request, ids)
    path = "variable_id" in request.path_params
    if path and not await resources.history.exists(keys.key_for(ids[0])):
        raise NotFound(f"no history for variable {ids[0]!r}")
    fields = tuple(query.getlist("field"))
    if not fields or not all(fields):
        raise BadRequest("name the numeric field(s): field=<dotted path>", reason="bad_field")
    variables = tuple(keys.key_for(i) for i in ids)
    lo = _time(resources, query.get("from"), -EDGE, "from")
    hi = _time(resources, query.get("to"), EDGE, "to")
    if lo >= hi:
        raise BadRequest("empty time range: 'from' must be before 'to'")
    if "at" in query:
        moment = _time(resources, query.get("at"), None, "at")
        return _json(await _at(engine, ids, variables, fields, moment))
    if "lastN" in query:
        n = _int(query.get("lastN"), "lastN")
        if not 1 <= n <= MAX_LAST:
            raise BadRequest(f"lastN must be between 1 and {MAX_LAST}")
        found = await engine.last(variables, fields, Window(lo, hi), n)
        body = {
            "fields": list(fields),
            "variables": [
                _entries(i, found[k], fields) for i, k in zip(ids, variables, strict=True)
            ],
        }
        return _json(body)
    aggs = tuple(a for part in query.getlist("agg") for a in part.split(",") if a)
    interval = buckets.parse_interval(query["interval"]) if query.get("interval") else None
    tz = query.get("tz") or "UTC"
    min_doc_count = _int(query.get("min_doc_count") or "1", "min_doc_count")
    if min_doc_count < 0:
        raise BadRequest("min_doc_count must be 0 or more")
    bounded = min_doc_count == 0 and lo > -EDGE and hi < EDGE
    request_query = AggQuery(
        variables,
        fields,
        aggs,
        lo,
        hi,
        interval,
        tz,
        percents=_percents(query.get("percents")),
        min_doc_count=min_doc_count,
        bounds=(lo, hi - 1) if bounded else None,
    )
    result = await engine.aggregate(request_query)
    _numbers_seen(result, fields)
    return _json(_buckets(ids, result, request_query))


async def _variables(request: Request, resources: Resources) -> list[str]:
    """The ids of the path, of ``id=`` or under ``prefix=`` (the variable index, at most
    MAX_VARIABLES of them)."""
    path_id = request.path_params.get("variable_id")
    ids = request.query_params.getlist("id")
    prefix = request.query_params.get("prefix")
    if sum(bool(x) for x in (path_id, ids, prefix is not None)) > 1:
        raise BadRequest("name the variables one way: in the path, with id=, or with prefix=")
    if path_id:
        return [path_id]
    if prefix is not None:
        principal = principal_of(request.scope)
        if principal.prefixes is not None and not prefix.startswith(principal.prefixes):
            raise Forbidden(f"token {principal.name!r} may not read under {prefix!r}")
        found, more = await resources.variables.ids(prefix, MAX_VARIABLES)
        if more is not None:
            raise BadRequest(
                f"more than {MAX_VARIABLES} variables under prefix {prefix!r}: narrow it"
            )
        return found
    if not ids:
        raise BadRequest(
            "name the variables: GET /history/{id}, GET /history?id=…&id=… or ?prefix=…"
        )
    if len(ids) > MAX_VARIABLES:
        raise BadRequest(f"at most {MAX_VARIABLES} variables per request")
    return list(dict.fromkeys(ids))


def _numbers_seen(result: AggResult, fields: tuple[str, ...]) -> None:
    """Entries in the range but no number at a field: the field is absent or not numeric, and
    an answer of empty buckets would say "no data". 400 naming it."""
    docs = sum(b.docs for s in result.series for b in s.buckets)
    if not docs:
        return
    for field in fields:
        seen = False
        for series in result.series:
            for bucket in series.buckets:
                values = bucket.values[field]
                count = values.get("count", 1 if any(v is not None for v in values.values()) else 0)
                seen = seen or bool(count)
        if not seen:
            raise BadRequest(
                f"field {field!r} holds no number in this range ({docs} entries)",
                reason="bad_field",
            )


def _buckets(ids: list[str], result: AggResult, query: AggQuery) -> dict[str, Any]:
    tz = buckets.zone(query.tz)
    with_interval = query.interval is not None

    def bucket(b: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"docs": b.docs, "values": b.values}
        if with_interval:
            out = {
                "start": b.start,
                "key": b.start // US_PER_MS,
                "iso": buckets.iso(b.start, tz),
                **out,
            }
        return out

    return {
        "aggs": list(query.aggs),
        "fields": list(query.fields),
        "interval": str(query.interval) if with_interval else None,
        "tz": query.tz,
        "cached": result.cached,
        "variables": [
            {"variable": variable, "buckets": [bucket(b) for b in series.buckets]}
            for variable, series in zip(ids, result.series, strict=True)
        ],
    }


def _entries(variable: str, table: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    ts = table.column("ts").to_pylist()
    seq = table.column("seq").to_pylist()
    columns = {f: table.column("v:" + f).to_pylist() for f in fields}
    rows = []
    for i in range(len(ts)):
        values = {f: (None if v[i] != v[i] else v[i]) for f, v in columns.items()}  # NaN: none
        rows.append({"ts": ts[i], "seq": seq[i], "values": values})
    return {"variable": variable, "entries": rows}


async def _at(
    engine: Aggregator,
    ids: list[str],
    variables: tuple[str, ...],
    fields: tuple[str, ...],
    moment: int,
) -> dict[str, Any]:
    found = await engine.at(variables, fields, moment)
    out = []
    for variable, key in zip(ids, variables, strict=True):
        values: dict[str, Any] = {}
        for field, held in found[key].items():
            values[field] = (
                None if held is None else dict(zip(("ts", "seq", "value"), held, strict=True))
            )
        out.append({"variable": variable, "values": values})
    return {"at": moment, "fields": list(fields), "variables": out}


def _percents(raw: str | None) -> tuple[float, ...]:
    if not raw:
        return (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
    try:
        return tuple(float(p) for p in raw.split(","))
    except ValueError:
        raise BadRequest(
            "percents must be numbers, comma-separated", reason="bad_aggregation"
        ) from None


def _time(resources: Resources, raw: str | None, default: int | None, name: str) -> int:
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"'{name}' needs a time")
        return default
    try:
        return resources.parser.time_to_us(raw)
    except PacketRejected as exc:
        raise BadRequest(f"'{name}': {exc.message}") from None


def _int(raw: str | None, name: str) -> int:
    try:
        return int(raw or "")
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer") from None


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
