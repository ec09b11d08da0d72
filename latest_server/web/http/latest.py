"""Latest values: GET /latest/{id}, GET /latest?id=…&id=…, GET /latest?prefix=…&limit=…&cursor=…
(the variables under a prefix, a page at a time), POST /latest/_mget (one round trip)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.errors import BadRequest, NotFound
from latest_server.resources import Resources
from latest_server.stores.base import LatestDoc
from latest_server.web._request import covered, json_error, mget_bound, read_decoded
from latest_server.web.cursors import encode_id_cursor
from latest_server.web.http import variables


async def get_latest(request: Request) -> Response:
    resources: Resources = request.app.state.resources
    variable_id: str = request.path_params["variable_id"]
    covered(request, [variable_id])
    if not variable_id:
        raise NotFound("name a variable: GET /latest/{id} (the id URL-encoded)")
    [found] = await resources.latest.mget([variable_id])
    if found is None:
        raise NotFound(f"no value for variable {variable_id!r}")
    version = str(found.version)
    etag = f'"{version}"'
    headers = {"ETag": etag, "X-Latest-Version": version}
    conditional = request.headers.get("if-none-match")
    if conditional is not None and _fresh(etag, conditional):
        return Response(status_code=304, headers=headers)
    return Response(found.doc, headers=headers, media_type="application/json")


# GET /latest?id=a&id=b, or GET /latest?prefix=a&limit=100&cursor=…
LIST_PARAMS = ("id", *variables.PARAMS)
PREFIX_LIMIT = 1_000  # documents per page by default (at most LATEST_MAX_MGET_IDS)


async def list_latest(request: Request) -> Response:
    query = request.query_params
    ids = query.getlist("id")
    paged = [name for name in variables.PARAMS if name in query]
    if ids and paged:
        raise BadRequest(
            f"give ids or a prefix, not both: [id] with [{'], ['.join(paged)}]",
            reason="bad_parameter",
        )
    if paged:
        return await _prefixed(request)
    if not ids:
        raise BadRequest("give at least one id: /latest?id=a&id=b, or a prefix: /latest?prefix=a")
    return await _many(request, ids)


async def _prefixed(request: Request) -> Response:
    """A page of the latest documents of the variables under ``prefix``, in id order, and the
    cursor of the next page (``next``, null on the last)."""
    resources: Resources = request.app.state.resources
    most = resources.settings.max_mget_ids
    prefix, limit, after = variables.page(request, min(PREFIX_LIMIT, most), most)
    ids, last = await resources.variables.ids(prefix, limit, after)
    docs = await resources.latest.mget(ids)
    body = {
        "docs": [_item(i, d) for i, d in zip(ids, docs, strict=True)],
        "next": None if last is None else encode_id_cursor(last),
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def mget_latest(request: Request) -> Response:
    """The body is decoded as ``/ingest``'s (gzip) and bounded by LATEST_MAX_MGET_BYTES (or
    LATEST_MAX_BODY_BYTES, the bound of every body, when that is lower)."""
    limit, setting = mget_bound(request.app.state.resources.settings)
    raw = await read_decoded(request, limit)
    if raw is None:
        return json_error(
            413, "too_large", f"request body is larger than {limit} bytes ({setting})"
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest('body must be JSON: {"ids": ["a", "b"]}') from None
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise BadRequest('body must be {"ids": [<non-empty strings>]}')
    return await _many(request, ids)


async def _many(request: Request, ids: list[str]) -> Response:
    resources: Resources = request.app.state.resources
    most = resources.settings.max_mget_ids
    if len(ids) > most:
        return json_error(
            413,
            "too_many_ids",
            f"at most {most} ids per call (LATEST_MAX_MGET_IDS), got {len(ids)}",
        )
    covered(request, ids)
    docs = await resources.latest.mget(ids)
    return Response(
        orjson.dumps({"docs": [_item(i, d) for i, d in zip(ids, docs, strict=True)]}),
        media_type="application/json",
    )


def _item(variable_id: str, found: LatestDoc | None) -> dict[str, Any]:
    if found is None:
        return {"id": variable_id, "found": False}
    return {
        "id": variable_id,
        "found": True,
        "version": found.version,
        "doc": orjson.Fragment(found.doc),
    }


def _fresh(etag: str, header: str) -> bool:
    """``If-None-Match`` (RFC 9110 §13.1.2): ``*`` matches any current value, else one of the
    listed tags must (weak comparison)."""
    tags = [part.strip().removeprefix("W/") for part in header.split(",")]
    return "*" in tags or etag in tags
