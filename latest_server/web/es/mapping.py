"""``GET /{index}/_mapping`` and ``GET|POST /{index}/_field_caps``: the fields of an index, as
Grafana's data source lists them (its field pickers, the time field of its settings).

Built from the data, at a bounded cost: the latest documents of at most ``SAMPLE_VARIABLES`` of
the index's variables (the first of the index of variables, or of a SCAN for another index),
the newest ``SAMPLE_ENTRIES`` history entries in Redis of each, and the ``n:`` columns
(numeric leaves) of the newest object of at most ``SAMPLE_OBJECTS`` of them.
Numbers are ``double``, strings ``keyword``, booleans ``boolean``, objects ``object`` (with
``properties``); the id is ``keyword`` and every name of the time field (LATEST_TIME_FIELD) seen,
and always its first, is ``date``.
"""

from __future__ import annotations

import asyncio
import fnmatch
from typing import Any

import orjson
import pyarrow.parquet as pq
from starlette.requests import Request
from starlette.responses import Response

from latest_server import keys
from latest_server.access import Principal, principal_of
from latest_server.redis_client import redis_bounded
from latest_server.stores import tiers
from latest_server.stores.segments import NUMBER_PREFIX
from latest_server.web.es import wire
from latest_server.web.es.context import Context
from latest_server.web.es.errors import ActionUnauthorized, IllegalArgument, IndexNotFound
from latest_server.web.es.indices import check_name
from latest_server.web.es.query import Plan
from latest_server.web.es.rows import Variable, variables

ACTION = "indices:admin/mappings/get"
SAMPLE_VARIABLES = 200
SAMPLE_ENTRIES = 20
SAMPLE_OBJECTS = 5
MAX_DEPTH = 8
NUMBER, TEXT, BOOLEAN, DATE, OBJECT = "double", "keyword", "boolean", "date", "object"


async def _index(ctx: Context, index: str) -> str:
    check_name(index)
    if not await ctx.indices.exists(index):
        raise IndexNotFound(index)
    return ctx.indices.namespace(index)


async def fields_of(ctx: Context, index: str, principal: Principal) -> dict[str, str]:
    """Dotted path → type of the fields seen in a sample of the index's data (of the variables
    the principal covers)."""
    if not principal.covers_index(index):
        raise ActionUnauthorized(ACTION, principal.name, f" on index [{index}]")
    namespace = await _index(ctx, index)
    redis = ctx.resources.redis
    if not namespace:  # the index of variables: its first ids, under the token's prefixes
        sample = await _catalogued(ctx, index, principal)
    else:
        try:
            sample = await variables(
                redis, Plan(), index, namespace, SAMPLE_VARIABLES, allowed=principal.covers
            )
        except IllegalArgument:  # more variables than the sample: the first ones listed
            sample = await _first(ctx, index, namespace, principal)
    found: dict[str, str] = {}
    for doc in await _documents(redis, sample):
        _walk(doc, "", found, 0)
    for name in await asyncio.to_thread(_object_numbers, ctx, sample[:SAMPLE_OBJECTS]):
        found.setdefault(name, NUMBER)
    settings = ctx.settings
    for name in settings.time_fields:
        if name in found or name == settings.time_fields[0]:
            found[name] = DATE
    found[settings.id_field] = TEXT
    return found


async def _catalogued(ctx: Context, index: str, principal: Principal) -> list[Variable]:
    found: list[Variable] = []
    for prefix in principal.prefixes or ("",):
        ids, _ = await ctx.resources.variables.ids(prefix, SAMPLE_VARIABLES)
        found += [Variable(index, v, keys.key_for(v)) for v in ids if principal.covers(v)]
    return found[:SAMPLE_VARIABLES]


async def _first(ctx: Context, index: str, namespace: str, principal: Principal) -> list[Variable]:
    redis = ctx.resources.redis
    found: list[Variable] = []
    async for name in redis.scan_iter(match=f"{keys.PREFIX}:*:latest", count=1000):
        key = keys.key_of(name.decode() if isinstance(name, bytes) else name)
        variable = await redis.hget(keys.latest(key), "id")  # type: ignore[misc]
        if variable is None:
            continue
        text = variable.decode() if isinstance(variable, bytes) else str(variable)
        if keys.key_for(text, namespace) == key and principal.covers(text):
            found.append(Variable(index, text, key))
            if len(found) >= SAMPLE_VARIABLES:
                break
    return found


@redis_bounded
async def _documents(redis: Any, sample: list[Variable]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for variable in sample:
            pipe.hget(keys.latest(variable.key), "doc")
            pipe.xrevrange(keys.history(variable.key), count=SAMPLE_ENTRIES)
        replies = await pipe.execute()
    docs = []
    for latest, entries in zip(replies[0::2], replies[1::2], strict=True):
        raw = ([latest] if latest else []) + [fields.get(b"d") for _, fields in entries or []]
        for item in raw:
            if item:
                try:
                    docs.append(orjson.loads(item))
                except orjson.JSONDecodeError:
                    continue
    return docs


def _object_numbers(ctx: Context, sample: list[Variable]) -> set[str]:
    objects = ctx.resources.objects
    names: set[str] = set()
    for variable in sample:
        stored = tiers.list_objects(objects, variable.key)
        if not stored:
            continue
        newest = max(stored, key=lambda s: s.max_seq)
        try:
            with objects.open(newest.name) as source:
                schema = pq.ParquetFile(source).schema_arrow
        except Exception:  # a sample: an object that moved, or unreadable, is skipped
            continue
        names |= {n[len(NUMBER_PREFIX) :] for n in schema.names if n.startswith(NUMBER_PREFIX)}
    return names


def _walk(value: Any, prefix: str, found: dict[str, str], depth: int) -> None:
    if not isinstance(value, dict) or depth > MAX_DEPTH:
        return
    for key, item in value.items():
        path = prefix + str(key)
        if isinstance(item, dict):
            found.setdefault(path, OBJECT)
            _walk(item, path + ".", found, depth + 1)
            continue
        if isinstance(item, list):
            item = next((x for x in item if x is not None), None)
        if isinstance(item, bool):
            kind = BOOLEAN
        elif isinstance(item, (int, float)):
            kind = NUMBER
        elif isinstance(item, str):
            kind = TEXT
        else:
            continue
        if found.get(path) in (None, OBJECT) or (found[path] == NUMBER and kind == TEXT):
            found[path] = kind  # a field that is a string somewhere is a keyword


def properties(found: dict[str, str]) -> dict[str, Any]:
    """Dotted paths → Elasticsearch's nested ``properties``."""
    root: dict[str, Any] = {}
    for path in sorted(found):
        kind = found[path]
        node = root
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {}).setdefault("properties", {})
        entry = node.setdefault(parts[-1], {})
        if kind == OBJECT:
            entry.setdefault("properties", {})
        else:
            entry.pop("properties", None)
            entry["type"] = kind
    return root


async def mapping(ctx: Context, request: Request, index: str) -> Response:
    found = await fields_of(ctx, index, principal_of(request.scope))
    return wire.respond(request, {index: {"mappings": {"properties": properties(found)}}})


async def field_caps(ctx: Context, request: Request, index: str) -> Response:
    found = await fields_of(ctx, index, principal_of(request.scope))
    wanted = request.query_params.get("fields", "*")
    patterns = [p.strip() for p in wanted.split(",") if p.strip()] or ["*"]
    answer: dict[str, Any] = {}
    for path, kind in sorted(found.items()):
        if not any(fnmatch.fnmatchcase(path, p) for p in patterns):
            continue
        leaf = kind != OBJECT
        answer[path] = {
            kind: {
                "type": kind,
                "metadata_field": False,
                "searchable": leaf,
                "aggregatable": leaf,
            }
        }
    return wire.respond(request, {"indices": [index], "fields": answer})
