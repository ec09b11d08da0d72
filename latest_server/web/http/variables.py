"""GET /variables?prefix=&limit=&cursor=: the variables under a prefix, a page at a time, from
the index the write path keeps (stores/variables.py), with each one's latest version and its
number of history entries. ``page`` reads the same three parameters for GET /latest?prefix=."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server import keys
from latest_server.access import principal_of
from latest_server.errors import BadRequest, Forbidden
from latest_server.resources import Resources
from latest_server.stores.variables import DEFAULT_LIMIT, MAX_LIMIT, Variable
from latest_server.web.cursors import decode_id_cursor, encode_id_cursor

PARAMS = ("prefix", "limit", "cursor")


def page(request: Request, default: int, most: int) -> tuple[str, int, str | None]:
    """(prefix, limit, after) of a paged listing, checked: ``limit`` from 1 to ``most``, and a
    token limited to prefixes lists only under one of them (403 otherwise: the listing is not
    filtered, so a page never comes back short)."""
    query = request.query_params
    prefix = query.get("prefix", "")
    principal = principal_of(request.scope)
    if principal.prefixes is not None and not prefix.startswith(principal.prefixes):
        allowed = ", ".join(repr(p) for p in principal.prefixes)
        raise Forbidden(
            f"token {principal.name!r} may list only under its prefixes ({allowed}), "
            f"not under {prefix!r}"
        )
    raw = query.get("limit")
    limit = default
    if raw is not None:
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= most:
            raise BadRequest(f"limit must be an integer from 1 to {most}")
        limit = int(raw)
    cursor = query.get("cursor")
    after = decode_id_cursor(cursor) if cursor else None
    if after is not None and not after.startswith(prefix):
        raise BadRequest(f"cursor {cursor!r} is not of a page under prefix {prefix!r}")
    return prefix, limit, after


async def list_variables(request: Request) -> Response:
    resources: Resources = request.app.state.resources
    prefix, limit, after = page(request, DEFAULT_LIMIT, MAX_LIMIT)
    index = resources.variables
    ids, last = await index.ids(prefix, limit, after)
    if resources.settings.backend == "elasticsearch":  # the latest documents are there
        entries = await index.entries(ids)
        docs = await resources.latest.read_keys([keys.key_for(i) for i in ids])
        found = [
            Variable(i, None if doc is None else doc.version, n, doc is None)
            for i, n, doc in zip(ids, entries, docs, strict=True)
        ]
    else:
        found = await index.describe(ids)
    body = {
        "variables": [variable.as_json() for variable in found],
        "next": None if last is None else encode_id_cursor(last),
    }
    return Response(orjson.dumps(body), media_type="application/json")
