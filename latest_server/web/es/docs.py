"""Single-document routes of the Elasticsearch-compatible API and ``_mget``:
``PUT|POST /{index}/_doc/{id}``, ``POST /{index}/_doc``, ``PUT|POST /{index}/_create/{id}``,
``POST /{index}/_update/{id}``, ``GET|HEAD|DELETE /{index}/_doc/{id}``,
``GET /{index}/_source/{id}``, ``GET|POST /_mget`` and ``/{index}/_mget``.

Reads are real time. A document written with ``_id`` = id or ``_id`` = SHA-1 of the id is found
by both (ops.candidate_keys).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.access import principal_of
from latest_server.stores.base import LatestDoc
from latest_server.web._request import mget_bound
from latest_server.web.es import filtering, wire
from latest_server.web.es import params as es_params
from latest_server.web.es.authz import denied
from latest_server.web.es.context import Context
from latest_server.web.es.errors import (
    IndexNotFound,
    ParseError,
    ResourceNotFound,
    TooLarge,
    ValidationFailed,
)
from latest_server.web.es.filtering import SourceFilter
from latest_server.web.es.indices import check_name
from latest_server.web.es.ops import ItemResult, WriteOp, candidate_keys, check_id
from latest_server.web.es.wire import respond

OP_TYPES = ("index", "create")


def _item_response(request: Request, result: ItemResult, forced_refresh: bool) -> Response:
    if result.failed:
        error = result.body["error"]
        body = {"error": {"root_cause": [error], **error}, "status": result.status}
        return respond(request, body, result.status)
    body = dict(result.body)
    if forced_refresh:
        body["forced_refresh"] = True
    response = respond(request, body, result.status)
    if result.status == 201 and body.get("result") == "created":
        # Percent-encoded, as Elasticsearch does: an id is free text, a header is Latin-1
        # without control characters, and the write is already committed.
        index, doc_id = quote(str(body["_index"]), safe=""), quote(str(body["_id"]), safe="")
        response.headers["Location"] = f"/{index}/_doc/{doc_id}"
    return response


async def write(
    ctx: Context, request: Request, index: str, doc_id: str | None, op_type: str | None
) -> Response:
    """index (``_doc``) or create (``_create``, ``op_type=create``)."""
    params = request.query_params
    kind = (params.get("op_type") or op_type or "index").lower()
    if kind not in OP_TYPES:
        raise ValidationFailed(f"op_type must be one of [index, create], got [{kind}]")
    if doc_id is None and kind == "create" and op_type == "create":
        raise ValidationFailed("an id must be provided if version type or value are set")
    forced = es_params.check_refresh(params)
    es_params.refuse_seq_no(params)
    versioning = es_params.versioning(params.get("version"), params.get("version_type"), kind)
    if doc_id is not None:
        check_id(doc_id)
    check_name(index)
    source = wire.json_body(await wire.body(request, ctx.settings.max_body_bytes))
    op = WriteOp(kind, index, doc_id, source, versioning)
    [result] = await ctx.writer.run([op], principal_of(request.scope))
    return _item_response(request, result, forced)


async def update(ctx: Context, request: Request, index: str, doc_id: str) -> Response:
    params = request.query_params
    forced = es_params.check_refresh(params)
    es_params.refuse_seq_no(params)
    body = wire.json_body(await wire.body(request, ctx.settings.max_body_bytes))
    versioning = es_params.Versioning(None, None)
    if params.get("version") is not None or params.get("version_type") is not None:
        raise ValidationFailed(
            "can't provide version in update request, use version_type=internal instead"
        )
    [result] = await ctx.writer.run(
        [WriteOp("update", index, doc_id, body, versioning)], principal_of(request.scope)
    )
    return _item_response(request, result, forced)


async def delete(ctx: Context, request: Request, index: str, doc_id: str) -> Response:
    params = request.query_params
    forced = es_params.check_refresh(params)
    es_params.refuse_seq_no(params)
    versioning = es_params.versioning(params.get("version"), params.get("version_type"), "index")
    if not await ctx.indices.exists(index):
        raise IndexNotFound(index)
    [result] = await ctx.writer.run(
        [WriteOp("delete", index, doc_id, None, versioning)], principal_of(request.scope)
    )
    return _item_response(request, result, forced)


async def _read(ctx: Context, wanted: list[tuple[str, str]]) -> list[LatestDoc | None]:
    """The latest document of each (index, id), in one round trip over every candidate key."""
    spans = []
    all_keys: list[str] = []
    for index, doc_id in wanted:
        candidates = candidate_keys(doc_id, ctx.indices.namespace(index))
        spans.append((len(all_keys), len(candidates)))
        all_keys.extend(candidates)
    found = await ctx.resources.latest.read_keys(all_keys) if all_keys else []
    docs = []
    for start, length in spans:
        docs.append(next((d for d in found[start : start + length] if d is not None), None))
    return docs


def _found(
    index: str, doc_id: str, doc: LatestDoc, source: SourceFilter, raw: bool
) -> dict[str, Any]:
    """The answer for a found document; ``raw``: its stored bytes may go out as they are."""
    body: dict[str, Any] = {
        "_index": index,
        "_id": doc_id,
        "_version": doc.shown_version,
        "_seq_no": doc.seq,
        "_primary_term": 1,
        "found": True,
    }
    if source.whole and raw:
        body["_source"] = orjson.Fragment(doc.doc)
    elif source.whole:
        body["_source"] = orjson.loads(doc.doc)
    elif source.enabled:
        body["_source"] = source.apply(orjson.loads(doc.doc))
    return body


async def _read_one(
    ctx: Context, request: Request, index: str, doc_id: str
) -> tuple[SourceFilter, LatestDoc | None]:
    """One document of an index that must exist, and the ``_source`` filter its query asks for."""
    refused = denied(principal_of(request.scope), "indices:data/read/get", index, doc_id)
    if refused is not None:
        raise refused
    if not await ctx.indices.exists(index):
        raise IndexNotFound(index)
    source = filtering.source_filter(request.query_params)
    [doc] = await _read(ctx, [(index, doc_id)])
    return source, doc


async def get(ctx: Context, request: Request, index: str, doc_id: str) -> Response:
    source, doc = await _read_one(ctx, request, index, doc_id)
    if doc is None:
        return respond(request, {"_index": index, "_id": doc_id, "found": False}, 404)
    return respond(request, _found(index, doc_id, doc, source, wire.raw(request)))


async def get_source(ctx: Context, request: Request, index: str, doc_id: str) -> Response:
    source, doc = await _read_one(ctx, request, index, doc_id)
    if doc is None:
        reason = f"Document not found [{index}]/[{doc_id}]"
        raise ResourceNotFound(reason, index=index)
    if source.whole and wire.raw(request):
        return respond(request, orjson.Fragment(doc.doc))
    return respond(request, source.apply(orjson.loads(doc.doc)))


async def mget(ctx: Context, request: Request, index: str | None) -> Response:
    params = request.query_params
    limit, setting = mget_bound(ctx.settings)
    body = wire.json_body(await wire.body(request, limit, setting), required=False)
    if body is None:
        raise ValidationFailed("no documents to get")
    if not isinstance(body, dict):
        raise ParseError("request body must be a JSON object")
    defaults = filtering.source_filter(params)
    requests: list[tuple[str, str, SourceFilter]] = []
    problems: list[str] = []
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list):
            raise ParseError("[ids] must be an array")
        for position, doc_id in enumerate(ids):
            if index is None:
                problems.append(f"index is missing for doc {position}")
            if doc_id is None or doc_id == "":
                problems.append(f"id is missing for doc {position}")
            requests.append((index or "", _simple(doc_id, "ids"), defaults))
    else:
        docs = body.get("docs")
        if docs is not None and not isinstance(docs, list):
            raise ParseError("[docs] must be an array")
        for position, item in enumerate(docs or []):
            item = item if isinstance(item, dict) else {}
            doc_index = item.get("_index") or index
            doc_id = item.get("_id")
            if not doc_index:
                problems.append(f"index is missing for doc {position}")
            if doc_id is None or doc_id == "":
                problems.append(f"id is missing for doc {position}")
            source = filtering.source_filter({}, item.get("_source"), defaults)
            requests.append((_simple(doc_index or "", "_index"), _simple(doc_id, "_id"), source))
    if not requests:
        raise ValidationFailed("no documents to get")
    if len(requests) > ctx.settings.max_mget_ids:
        raise TooLarge(
            f"at most {ctx.settings.max_mget_ids} documents per _mget (LATEST_MAX_MGET_IDS), "
            f"got {len(requests)}"
        )
    if problems:
        raise ValidationFailed(*problems)
    principal = principal_of(request.scope)
    refused = {
        (i, d): error
        for i, d, _ in requests
        if (error := denied(principal, "indices:data/read/mget[shard]", i, d)) is not None
    }
    exists = {name: await ctx.indices.exists(name) for name in {r[0] for r in requests}}
    readable = [(i, d) for i, d, _ in requests if exists[i] and (i, d) not in refused]
    found = iter(await _read(ctx, readable))
    raw = wire.raw(request)
    answers: list[dict[str, Any]] = []
    for doc_index, doc_id, source in requests:
        error = refused.get((doc_index, doc_id))
        if error is not None:
            answers.append({"_index": doc_index, "_id": doc_id, "error": error.cause()})
            continue
        if not exists[doc_index]:
            answers.append(
                {"_index": doc_index, "_id": doc_id, "error": IndexNotFound(doc_index).cause()}
            )
            continue
        doc = next(found)
        if doc is None:
            answers.append({"_index": doc_index, "_id": doc_id, "found": False})
        else:
            answers.append(_found(doc_index, doc_id, doc, source, raw))
    return respond(request, {"docs": answers})


def _simple(value: Any, name: str) -> str:
    """An id or index name of an ``_mget`` body; an object or array is a parse error (it is
    never written out: it may nest deeper than ``str`` can recurse)."""
    if isinstance(value, (dict, list)):
        raise ParseError(f"[{name}] must hold strings, found [{es_params.text(value)}]")
    return es_params.text(value)
