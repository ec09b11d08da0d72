"""``POST|GET /{index}/_search``, ``POST|GET /_msearch`` and ``/{index}/_msearch``,
``POST|GET /{index}/_count``: searches over the history of an index's variables.

A document of the index is a history entry: ``_id`` ``<key>:<seq>`` (the variable's key, its
seq), ``_source`` the entry's document, its time the entry's. So a Grafana panel over the main
index shows each variable's series from every tier (Redis, transfer and merged objects), with the
duplicates a move between tiers leaves removed (stores/history.py). The request's parts are read
by web/es/request.py (body), web/es/query.py (query) and web/es/aggs.py (aggregations).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.access import Principal, principal_of
from latest_server.web.es import engine as es_engine
from latest_server.web.es import request as search_request
from latest_server.web.es import rows as es_rows
from latest_server.web.es import wire
from latest_server.web.es.aggs import Run, evaluate
from latest_server.web.es.context import Context
from latest_server.web.es.errors import (
    ActionUnauthorized,
    EsError,
    IllegalArgument,
    IndexNotFound,
    ParseError,
    Unsupported,
)
from latest_server.web.es.query import Fields
from latest_server.web.es.request import Search, Wanted

ACTION = "indices:data/read/search"
MSEARCH_CONCURRENCY = 4  # searches of one _msearch at once (Grafana sends one per query)
SHARDS = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
HEADER_KEYS = {
    "index",
    "search_type",
    "ignore_unavailable",
    "preference",
    "routing",
    "request_cache",
    "allow_no_indices",
    "expand_wildcards",
    "allow_partial_search_results",
    "ccs_minimize_roundtrips",
    "ignore_throttled",
    "max_concurrent_shard_requests",
}


async def resolve(
    ctx: Context, expression: Any, ignore_unavailable: bool, principal: Principal
) -> list[tuple[str, str]]:
    """(index, namespace) of each index an expression (``a,b`` or a list) names; a 403 for
    one the principal does not cover."""
    names = expression if isinstance(expression, list) else str(expression).split(",")
    found = []
    for name in (str(n).strip() for n in names):
        if not name or "*" in name or name == "_all":
            raise Unsupported(f"index [{name or '_all'}]", "name the index (no patterns)")
        if not principal.covers_index(name):
            raise ActionUnauthorized(ACTION, principal.name, f" on index [{name}]")
        if await ctx.indices.exists(name):
            found.append((name, ctx.indices.namespace(name)))
        elif not ignore_unavailable:
            raise IndexNotFound(name)
    return found


async def execute(
    ctx: Context, targets: list[tuple[str, str]], search: Search, principal: Principal
) -> dict[str, Any]:
    started = time.monotonic()
    settings = ctx.settings
    chosen: list[es_rows.Variable] = []
    for index, namespace in targets:
        room = settings.es_search_max_variables - len(chosen)
        chosen += await es_rows.variables(
            ctx.resources.redis,
            search.plan,
            index,
            namespace,
            room,
            listed=settings.backend != "elasticsearch",
            allowed=principal.covers,
            catalog=ctx.resources.variables,
            prefixes=principal.prefixes,
        )
    fields = Fields(settings)
    engine = ctx.resources.aggregates
    shapes = {}
    if engine is not None and chosen and not search.plan.empty:
        shapes = {n.name: s for n in search.aggs if (s := es_engine.shape_of(n, fields))}
    rest = [node for node in search.aggs if node.name not in shapes]
    needs_all = bool(rest) or (search.size == 0 and not shapes)
    limit = None if needs_all else search.offset + search.size
    if limit == 0:
        data = es_rows.Rows.none(chosen)
    else:
        if search.after is not None and (rest or len(targets) > 1):
            raise Unsupported("search_after", "with one index, and aggregations of the engine")
        history = ctx.resources.history
        data = await es_rows.read(history, chosen, search.plan, limit, search.desc, search.after)
    found: dict[str, Any] = {}
    entries = len(data) if data.complete else None
    for name, shape in shapes.items():
        assert engine is not None
        max_buckets = settings.es_search_max_buckets
        found[name], entries = await es_engine.answer(
            engine, shape, chosen, search.plan, max_buckets
        )
    if rest:
        run = Run(data, fields, settings.es_search_max_buckets)
        found |= evaluate(rest, run, np.arange(len(data)))
    counted = engine is not None and chosen and not search.plan.empty
    if entries is None and search.track_total is not None and counted:
        assert engine is not None
        entries = await es_engine.count(engine, chosen, search.plan)
    total: Any = {"value": len(data), "relation": "gte"}
    if entries is not None:
        total = {"value": entries, "relation": "eq"}
        if search.track_total is not None and entries > search.track_total:
            total = {"value": search.track_total, "relation": "gte"}
    if search.total_as_int:
        total = total["value"]
    answer: dict[str, Any] = {
        "took": 0,
        "timed_out": False,
        "_shards": SHARDS,
        "hits": {"total": total, "max_score": None, "hits": _hits(ctx, data, search)},
    }
    if search.aggs:
        answer["aggregations"] = {node.name: found[node.name] for node in search.aggs}
    answer["took"] = int((time.monotonic() - started) * 1000)
    return answer


def _hits(ctx: Context, data: es_rows.Rows, search: Search) -> list[dict[str, Any]]:
    if search.size == 0 or not len(data):
        return []
    if search.desc:
        order = np.lexsort((-data.seq, -data.var, -data.ts))
    else:
        order = np.lexsort((data.seq, data.var, data.ts))
    page = order[search.offset : search.offset + search.size]
    fields = Fields(ctx.settings)
    hits = []
    for row, doc in zip(page.tolist(), data.docs.take(page).to_pylist(), strict=True):
        variable = data.variables[int(data.var[row])]
        seq, ts = int(data.seq[row]), int(data.ts[row])
        hit: dict[str, Any] = {
            "_index": variable.index,
            "_id": f"{variable.key}:{seq}",
            "_score": None if search.sorted else 1.0,
        }
        source: Any = None
        if search.source.enabled:
            if search.source.whole and not search.wanted and search.raw:
                hit["_source"] = orjson.Fragment(doc)
            else:
                source = orjson.loads(doc)
                hit["_source"] = source if search.source.whole else search.source.apply(source)
        if search.wanted:
            source = orjson.loads(doc) if source is None else source
            found = _fields(search.wanted, fields, variable.id, ts, source)
            if found:
                hit["fields"] = found
        if search.sorted:
            marks = [
                ts // 1000 if key == "time" else f"{ts}:{seq}:{variable.id}"
                for key in search.sort_keys
            ]
            hit["sort"] = marks
        hits.append(hit)
    return hits


def _fields(
    wanted: tuple[Wanted, ...], fields: Fields, variable: str, ts: int, source: Any
) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for item in wanted:
        if fields.is_time(item.name):
            out[item.name] = [format_time(ts, item.fmt)]
        elif fields.is_id(item.name):
            out[item.name] = [variable]
        else:
            value = source
            for part in item.name.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                out[item.name] = value if isinstance(value, list) else [value]
    return out


def format_time(ts_us: int, fmt: str | None) -> Any:
    """A date in the format a ``fields`` entry asks (ISO with ms by default, as ES's date)."""
    if fmt == "epoch_millis":
        return str(ts_us // 1000)
    if fmt == "epoch_second":
        return str(ts_us // 1_000_000)
    moment = datetime.fromtimestamp(ts_us // 1_000_000, UTC)
    micros = ts_us % 1_000_000
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if fmt == "strict_date_optional_time_nanos":
        return f"{base}.{micros * 1000:09d}Z"
    if fmt not in (None, "strict_date_optional_time", "date_optional_time", "date_time"):
        raise Unsupported(
            f"fields.format: {fmt}",
            "formats are epoch_millis, epoch_second, strict_date_optional_time(_nanos)",
        )
    return f"{base}.{micros // 1000:03d}Z"


def _query_params(request: Request) -> Mapping[str, str]:
    return request.query_params


async def search(ctx: Context, request: Request, index: str) -> Response:
    body = wire.json_body(await wire.body(request, ctx.settings.max_body_bytes), required=False)
    params = _query_params(request)
    parsed = search_request.parse(body, params, Fields(ctx.settings))
    if "q" in params:
        raise Unsupported("q", "put the query in the body")
    principal = principal_of(request.scope)
    targets = await resolve(ctx, index, params.get("ignore_unavailable") == "true", principal)
    parsed.raw = wire.raw(request)
    return wire.respond(request, await execute(ctx, targets, parsed, principal))


async def count(ctx: Context, request: Request, index: str) -> Response:
    body = wire.json_body(await wire.body(request, ctx.settings.max_body_bytes), required=False)
    if body is not None and not isinstance(body, dict):
        raise ParseError("a count body must be a JSON object")
    extra = sorted(set(body or {}) - {"query"})
    if extra:
        raise ParseError(f"request does not support [{','.join(extra)}]")
    parsed = search_request.parse(body, {"size": "0"}, Fields(ctx.settings))
    parsed.track_total = 2**62  # a count is exact
    principal = principal_of(request.scope)
    ignore = request.query_params.get("ignore_unavailable") == "true"
    answer = await execute(ctx, await resolve(ctx, index, ignore, principal), parsed, principal)
    total = answer["hits"]["total"]
    return wire.respond(request, {"count": total["value"], "_shards": SHARDS})


async def msearch(ctx: Context, request: Request, index: str | None = None) -> Response:
    """NDJSON pairs of a header and a body; each answered on its own (an error is that
    search's item, with its status), as Elasticsearch does."""
    started = time.monotonic()
    data = await wire.body(request, ctx.settings.max_body_bytes)
    lines = [line for line in data.split(b"\n") if line.strip()]
    if not lines:
        raise ParseError("request body or source parameter is required")
    if len(lines) % 2:
        raise ParseError("The msearch request must be terminated by a newline [\\n]")
    pairs = []
    for header_line, body_line in zip(lines[0::2], lines[1::2], strict=True):
        header, body = wire.json_body(header_line), wire.json_body(body_line)
        if not isinstance(header, dict):
            raise ParseError("each msearch header must be a JSON object")
        for key in header:
            if key not in HEADER_KEYS:
                raise ParseError(f"key [{key}] is not supported in the metadata section")
        pairs.append((header, body))
    params = _query_params(request)
    fields = Fields(ctx.settings)
    principal = principal_of(request.scope)
    totals = {k: v for k, v in params.items() if k == "rest_total_hits_as_int"}
    gate = asyncio.Semaphore(_concurrency(params.get("max_concurrent_searches")))

    async def one(header: dict[str, Any], body: Any) -> dict[str, Any]:
        async with gate:
            try:
                parsed = search_request.parse(body, totals, fields)
                parsed.raw = wire.raw(request)
                expression = header.get("index", index)
                if expression is None:
                    raise Unsupported("a search of every index", "name the index in the header")
                default = params.get("ignore_unavailable") == "true"
                ignore = bool(header.get("ignore_unavailable", default))
                targets = await resolve(ctx, expression, ignore, principal)
                return await execute(ctx, targets, parsed, principal) | {"status": 200}
            except EsError as exc:
                return exc.body()

    responses = await asyncio.gather(*(one(header, body) for header, body in pairs))
    took = int((time.monotonic() - started) * 1000)
    return wire.respond(request, {"took": took, "responses": responses})


def _concurrency(value: str | None) -> int:
    """``max_concurrent_searches``: searches of one ``_msearch`` run side by side."""
    if value is None:
        return MSEARCH_CONCURRENCY
    if not value.isdigit() or int(value) < 1:
        raise IllegalArgument(f"[max_concurrent_searches] must be a positive integer: [{value}]")
    return int(value)


async def msearch_all(ctx: Context, request: Request) -> Response:
    return await msearch(ctx, request, None)
